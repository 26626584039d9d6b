package imagebuild

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/rpc"
)

func TestSpecValidate(t *testing.T) {
	const mirror = "http://deb.debian.org/debian"
	ok := []Spec{
		{Suite: "bookworm", Mirror: mirror},
		{Suite: "bookworm", Mirror: mirror, SecurityMirror: "https://security.debian.org/debian-security", Packages: []string{"g++", "libstdc++6", "python3.11", "vim"}, Variant: "stock", RootfsSize: 2 << 30},
		{Suite: "stable-backports", Mirror: "https://mirror.example:8443/debian/", Variant: "lean"},
		{Suite: "sid", Mirror: "http://10.0.0.1:3142/deb.debian.org/debian", RootfsSize: MinRootfsSize},
		{Suite: "trixie", Mirror: "http://127.0.0.1:8080"},
	}
	for _, s := range ok {
		if err := s.Validate(); err != nil {
			t.Errorf("%+v refused: %v", s, err)
		}
	}

	badSuites := []string{"", "Bookworm", "bookworm-", "-bookworm", "book worm", "bookworm/updates", "a-b-c", "bookworm\n", "--help",
		"bookworm1", "../bookworm", strings.Repeat("a", 33)}
	badMirrors := []string{
		"", "deb.debian.org/debian", "ftp://deb.debian.org/debian", "file:///etc/passwd", "file:/srv/mirror", "copy:///srv/mirror",
		"mirror+file:/etc/apt/mirrors.txt", "--option", "-http://x", "--keyring=/tmp/evil.gpg",
		"http://x/debian --option", "http://x/debian\n", "http://x/deb\nian", "http://x/debian\tx", " http://x/debian",
		"http://x/ debian", "http://user:pw@x/debian", "http://user@x/debian", "http://@x/debian", "http://x/debian?q=1", "http://x/debian#f",
		"http://x/debian?", "http:///debian", "http://", "http:x", "HTTP://x/debian", "http://x/\"debian", "http://x/de'bian", "http://x/deb\\ian",
		"http://x/<debian>", "http://x/debian`id`", "http://x/debian$(id)x", "http://x/debian\x00", "http://x/debian\x7f", "http://x/debïan",
		"http://x:99999/debian", "http://x:0/debian", "http://x:/debian", "http://x/" + strings.Repeat("a", MirrorMax),
		"http://x/debian main\ndeb http://evil/ sid",
		// A whole sources.list line, or apt options, instead of a URL.
		"deb [trusted=yes] http://evil/debian bookworm main", "[trusted=yes] http://evil/debian", "http://evil/debian[trusted=yes]",
		"http://[::1]:8080/debian", "http://evil/%5Btrusted=yes%5D", "http://evil/deb%20ian", "http://x/{a,b}", "http://x/a|b", "http://x/a^b",
	}
	badPackages := [][]string{
		{"--force-yes"}, {"--allow-unauthenticated"}, {"-x"}, {"a;b"}, {"a,b"}, {"a b"}, {"a\tb"}, {"A"}, {"a"}, {""}, {"a\n"},
		{"pkg:amd64"}, {"pkg=1.0"}, {"pkg/bookworm-backports"}, {"?priority(required)"}, {"~ramd64"}, {"!x"}, {"(x)"},
		{"/tmp/evil.deb"}, {"./evil.deb"}, {"../evil.deb"}, {"evil.deb"}, {"systemd-"}, {"$(reboot)"}, {".hidden"}, {"+x"},
		{strings.Repeat("a", 64)}, {"ok", "--download-only"},
	}
	var many []string
	for i := range MaxPackages + 1 {
		many = append(many, fmt.Sprintf("pkg%d", i))
	}
	badPackages = append(badPackages, many)
	// With the base packages the total is over the limit.
	var some []string
	for i := range MaxPackages - len(guest.BasePackages) + 1 {
		some = append(some, fmt.Sprintf("pkg%d", i))
	}
	badPackages = append(badPackages, some)

	type tc struct {
		what string
		s    Spec
	}
	base := ok[0]
	var cases []tc
	for _, v := range badSuites {
		s := base
		s.Suite = v
		cases = append(cases, tc{"suite " + v, s})
	}
	for _, m := range badMirrors {
		s, s2 := base, base
		s.Mirror, s2.SecurityMirror = m, m
		cases = append(cases, tc{"mirror " + m, s})
		if m != "" { // an empty security mirror means none
			cases = append(cases, tc{"security mirror " + m, s2})
		}
	}
	for _, p := range badPackages {
		s := base
		s.Packages = p
		cases = append(cases, tc{fmt.Sprintf("packages %q", p), s})
	}
	for _, v := range []string{"Lean", "fat", " lean", "lean\n"} {
		s := base
		s.Variant = v
		cases = append(cases, tc{"variant " + v, s})
	}
	for _, r := range []int64{-1, 1, MinRootfsSize - RootfsSizeUnit, MinRootfsSize + 1, MaxRootfsSize + RootfsSizeUnit} {
		s := base
		s.RootfsSize = r
		cases = append(cases, tc{fmt.Sprintf("rootfs_size %d", r), s})
	}
	for _, c := range cases {
		err := c.s.Validate()
		if !errors.Is(err, rpc.ErrBadRequest) {
			t.Errorf("%q: want bad request, got %v", c.what, err)
		}
	}
	t.Logf("%d invalid specs refused", len(cases))
	// The message names the argument and quotes the value: a newline in
	// it cannot forge a line of a log.
	err := Spec{Suite: "bookworm", Mirror: "http://x/\nE: forged"}.Validate()
	if err == nil || !strings.Contains(err.Error(), `argument mirror "http://x/\nE: forged"`) {
		t.Errorf("message %v", err)
	}
}

func TestAllPackages(t *testing.T) {
	s := Spec{Packages: []string{"openssh-server", "vim", "vim"}}
	want := append(slices.Clone(guest.BasePackages), "vim")
	if got := s.AllPackages(); !slices.Equal(got, want) {
		t.Errorf("%q, want %q", got, want)
	}
}

// A suite outside the table, or whose keyring file is missing, is a bad
// request whose hint is the way out; a present keyring is returned.
func TestKeyrings(t *testing.T) {
	dir := t.TempDir()
	present := filepath.Join(dir, "present.gpg")
	os.WriteFile(present, []byte("keys"), 0o644)
	k := Keyrings{"bookworm": present, "noble": filepath.Join(dir, "missing.gpg"), "trixie": UbuntuKeyring + ".absent", "dir": dir}

	if got, err := k.For("bookworm"); err != nil || got != present {
		t.Errorf("bookworm: %q %v", got, err)
	}
	_, err := k.For("buster")
	if !errors.Is(err, rpc.ErrBadRequest) || !strings.Contains(err.Error(), `suite "buster" has no pinned archive keyring`) || !strings.Contains(rpc.HintOf(err), "bookworm") {
		t.Errorf("a suite outside the table: %v (hint %q)", err, rpc.HintOf(err))
	}
	for _, s := range []string{"noble", "trixie", "dir"} {
		_, err := k.For(s)
		if !errors.Is(err, rpc.ErrBadRequest) || !strings.Contains(err.Error(), "refusing to build without verifying") || rpc.HintOf(err) == "" {
			t.Errorf("%s: %v (hint %q)", s, err, rpc.HintOf(err))
		}
	}
	_, err = Keyrings{"noble": "/nonexistent/" + filepath.Base(UbuntuKeyring)}.For("noble")
	if !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing keyring: %v", err)
	}
	_, err = Keyrings{"noble": UbuntuKeyring}.For("noble")
	if _, statErr := os.Stat(UbuntuKeyring); statErr != nil && rpc.HintOf(err) != "install it: sudo apt-get install ubuntu-archive-keyring" {
		t.Errorf("ubuntu keyring hint %q", rpc.HintOf(err))
	}

	d := DefaultKeyrings()
	for s, want := range map[string]string{"bookworm": DebianKeyring, "stable": DebianKeyring, "sid": DebianKeyring, "unstable": DebianKeyring, "noble": UbuntuKeyring, "jammy": UbuntuKeyring} {
		if d[s] != want {
			t.Errorf("default keyring of %s: %q", s, d[s])
		}
	}
	if _, ok := d["experimental"]; ok {
		t.Error("experimental (not a whole archive) is in the table")
	}
}

// Preflight refuses before anything runs: an invalid spec, a suite
// without a keyring, a keyring path apt's configuration could not quote.
func TestPreflightRefuses(t *testing.T) {
	dir := t.TempDir()
	odd := filepath.Join(dir, `we"ird.gpg`)
	os.WriteFile(odd, []byte("keys"), 0o644)
	for _, c := range []struct {
		spec Spec
		k    Keyrings
	}{
		{Spec{Suite: "bookworm", Mirror: "deb [trusted=yes] http://x/ bookworm main"}, nil},
		{Spec{Suite: "nosuchsuite", Mirror: "http://x/debian"}, nil},
		{Spec{Suite: "bookworm", Mirror: "http://x/debian"}, Keyrings{"bookworm": odd}},
	} {
		if _, err := Preflight(c.spec, c.k); !errors.Is(err, rpc.ErrBadRequest) {
			t.Errorf("%+v: %v", c.spec, err)
		}
	}
}
