package helperapi

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/rpc"
)

func TestImageValidate(t *testing.T) {
	const mirror = "http://deb.debian.org/debian"
	const log = "/var/lib/banger/images/x/build.log"
	okBoot := ImageBootstrapParams{BuildID: "demo-op-3f9a1c", Suite: "bookworm", Mirror: mirror, Packages: []string{"systemd-sysv", "g++", "libstdc++6", "python3.11"}, LogPath: log}
	okConf := ImageConfigureParams{BuildID: "demo", Suite: "bookworm", Mirror: mirror, SecurityMirror: "https://security.debian.org/debian-security", LogPath: log}
	okPack := ImagePackParams{BuildID: "demo", OutDir: "/var/lib/banger/images/x", UID: 1000, GID: 1000, LogPath: log}
	for _, v := range []interface{ Validate() error }{okBoot, okConf, okPack, ImageDiscardParams{BuildID: "0"},
		ImagePackParams{BuildID: "a", OutDir: "/x/y", RootfsSize: 2 << 30, LogPath: log},
		ImageBootstrapParams{BuildID: "a", Suite: "stable-backports", Mirror: "https://[fd00::1]:8080/debian/", LogPath: log},
		ImageBootstrapParams{BuildID: "a", Suite: "sid", Mirror: "http://10.0.0.1:3142/deb.debian.org/debian", LogPath: log},
	} {
		if err := v.Validate(); err != nil {
			t.Errorf("%+v refused: %v", v, err)
		}
	}

	badIDs := []string{"", "..", ".", "a/b", "../x", "a/../b", "-a", "A", "a_b", "a.b", "a b", "a\n", strings.Repeat("a", 64), "/abs", "ä"}
	badSuites := []string{"", "Bookworm", "bookworm-", "-bookworm", "book worm", "bookworm/updates", "a-b-c", "bookworm\n", "--help", "bookworm1", strings.Repeat("a", 33)}
	badMirrors := []string{
		"", "deb.debian.org/debian", "ftp://deb.debian.org/debian", "file:///etc/passwd", "--option", "-http://x",
		"http://x/debian --option", "http://x/debian\n", "http://x/deb\nian", "http://x/debian\tx", " http://x/debian",
		"http://x/ debian", "http://user:pw@x/debian", "http://user@x/debian", "http://x/debian?q=1", "http://x/debian#f",
		"http://x/debian?", "http:///debian", "http://", "http:x", "http://x/\"debian", "http://x/de'bian", "http://x/deb\\ian",
		"http://x/<debian>", "http://x/debian`id`", "http://x/debian\x00", "http://x/debian\x7f", "http://x/debïan",
		"http://x:99999/debian", "http://x:0/debian", "http://x/" + strings.Repeat("a", MirrorMax),
		"http://x/debian main\ndeb http://evil/ sid",
	}
	badPackages := [][]string{
		{"--force-yes"}, {"-x"}, {"a;b"}, {"a,b"}, {"a b"}, {"A"}, {"a"}, {""}, {"a\n"}, {"pkg:amd64"}, {"pkg=1.0"},
		{"$(reboot)"}, {".hidden"}, {"+x"}, {strings.Repeat("a", 64)}, {"ok", "--download-only"},
	}
	var many []string
	for i := range MaxPackages + 1 {
		many = append(many, fmt.Sprintf("pkg%d", i))
	}
	badPackages = append(badPackages, many)

	type tc struct {
		what string
		v    interface{ Validate() error }
	}
	var cases []tc
	for _, id := range badIDs {
		b, c, p := okBoot, okConf, okPack
		b.BuildID, c.BuildID, p.BuildID = id, id, id
		cases = append(cases, tc{"bootstrap id " + id, b}, tc{"configure id " + id, c}, tc{"pack id " + id, p},
			tc{"discard id " + id, ImageDiscardParams{BuildID: id}})
	}
	for _, s := range badSuites {
		b, c := okBoot, okConf
		b.Suite, c.Suite = s, s
		cases = append(cases, tc{"bootstrap suite " + s, b}, tc{"configure suite " + s, c})
	}
	for _, m := range badMirrors {
		b, c, c2 := okBoot, okConf, okConf
		b.Mirror, c.Mirror, c2.SecurityMirror = m, m, m
		cases = append(cases, tc{"bootstrap mirror " + m, b}, tc{"configure mirror " + m, c})
		if m != "" { // an empty security mirror means none
			cases = append(cases, tc{"configure security mirror " + m, c2})
		}
	}
	for _, pk := range badPackages {
		b := okBoot
		b.Packages = pk
		cases = append(cases, tc{fmt.Sprintf("packages %q", pk), b})
	}
	for _, lp := range []string{"", "relative.log", "/var/lib/banger/../etc/shadow", "/var/lib/banger/x.log\n", "/"} {
		b, c, p := okBoot, okConf, okPack
		b.LogPath, c.LogPath, p.LogPath = lp, lp, lp
		cases = append(cases, tc{"bootstrap log " + lp, b}, tc{"configure log " + lp, c}, tc{"pack log " + lp, p})
	}
	for _, d := range []string{"", "images/x", "/var/lib/banger/images/../..", "/", "/a//b"} {
		p := okPack
		p.OutDir = d
		cases = append(cases, tc{"out_dir " + d, p})
	}
	for _, s := range []int64{-1, 1, MinRootfsSize - RootfsSizeUnit, MinRootfsSize + 1, MaxRootfsSize + RootfsSizeUnit} {
		p := okPack
		p.RootfsSize = s
		cases = append(cases, tc{fmt.Sprintf("rootfs_size %d", s), p})
	}
	p := okPack
	p.UID = 1<<32 - 1
	cases = append(cases, tc{"uid -1", p})
	p = okPack
	p.GID = 1<<32 - 1
	cases = append(cases, tc{"gid -1", p})

	for _, c := range cases {
		err := c.v.Validate()
		if !errors.Is(err, rpc.ErrBadRequest) {
			t.Errorf("%q: want bad request, got %v", c.what, err)
		}
	}
	t.Logf("%d invalid image params refused", len(cases))
}

func TestUnitBuildDir(t *testing.T) {
	u := UnitFile(DefaultUnitOptions())
	for _, want := range []string{"--build-dir /var/lib/banger-helper/builds \\\n", "StateDirectory=banger-helper\n",
		"StateDirectoryMode=0700\n", "RestrictNamespaces=mnt pid\n", "CAP_SYS_CHROOT"} {
		if !strings.Contains(u, want) {
			t.Errorf("unit lacks %q", want)
		}
	}
	if strings.Contains(u, "ReadWritePaths=/var/lib/banger-helper") {
		t.Error("the default build dir needs no ReadWritePaths (StateDirectory)")
	}
	o := DefaultUnitOptions()
	o.BuildDir = "/srv/banger builds"
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	u = UnitFile(o)
	if !strings.Contains(u, `--build-dir "/srv/banger builds"`) || !strings.Contains(u, `ReadWritePaths="/srv/banger builds"`+"\n") {
		t.Errorf("custom build dir:\n%s", u)
	}
	verifyUnit(t, u)
	o.BuildDir = "builds"
	if err := o.Validate(); !errors.Is(err, rpc.ErrBadRequest) {
		t.Errorf("relative build dir: %v", err)
	}
}
