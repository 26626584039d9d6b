package mount

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/rpc"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Spec
	}{
		{"/src:/root/src", Spec{HostDir: "/src", GuestPath: "/root/src"}},
		{"/src:/data:ro", Spec{HostDir: "/src", GuestPath: "/data", ReadOnly: true}},
		{"/src:/data:rw", Spec{HostDir: "/src", GuestPath: "/data"}},
		{"rel/dir:/data", Spec{HostDir: "/cwd/rel/dir", GuestPath: "/data"}},
		{".:/data", Spec{HostDir: "/cwd", GuestPath: "/data"}},
		{"/a/../b/:/x", Spec{HostDir: "/b", GuestPath: "/x"}},
	} {
		got, err := Parse(tc.in, "/cwd")
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if err == nil {
			back, err := Parse(got.String(), "/")
			if err != nil || back != got {
				t.Errorf("%q does not round-trip: %+v, %v", got.String(), back, err)
			}
		}
	}
	for _, bad := range []string{"/src", "/src:", ":/x", "/a:/b:rx", "/a:/b:ro:x"} {
		if _, err := Parse(bad, "/"); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
	// Without a cwd (the daemon's side) HOSTDIR must be absolute.
	for _, rel := range []string{"rel:/x", ".:/x", "~/src:/x"} {
		if s, err := Parse(rel, ""); err == nil {
			t.Errorf("Parse(%q, \"\") = %+v, want an error", rel, s)
		}
	}
	if s, err := Parse("/src:/x:ro", ""); err != nil || s != (Spec{HostDir: "/src", GuestPath: "/x", ReadOnly: true}) {
		t.Errorf("Parse of an absolute spec without a cwd: %+v, %v", s, err)
	}
}

func TestResolve(t *testing.T) {
	for in, want := range map[string]string{
		"src:/x:ro":    "/home/u/src:/x:ro",
		"../t:/x:rw":   "/home/t:/x",
		"/abs/:/x":     "/abs:/x",
		"./a/b:/root/": "/home/u/a/b:/root/",
	} {
		if got, err := Resolve(in, "/home/u"); err != nil || got != want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := Resolve("nocolon", "/home/u"); err == nil {
		t.Error("Resolve accepted a spec without a guest path")
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o755)
	file := filepath.Join(dir, "f")
	os.WriteFile(file, nil, 0o644)
	link := filepath.Join(dir, "link")
	os.Symlink(sub, link)
	uid := os.Getuid()
	if err := Validate([]Spec{{HostDir: sub, GuestPath: "/root/src"}, {HostDir: sub, GuestPath: "/srv/x", ReadOnly: true}}, uid); err != nil {
		t.Fatalf("good mounts refused: %v", err)
	}
	for _, tc := range []struct {
		specs []Spec
		want  string
	}{
		{[]Spec{{HostDir: filepath.Join(dir, "none"), GuestPath: "/x"}}, "does not exist"},
		{[]Spec{{HostDir: file, GuestPath: "/x"}}, "not a directory"},
		{[]Spec{{HostDir: link, GuestPath: "/x"}}, "symlink"},
		{[]Spec{{HostDir: "rel", GuestPath: "/x"}}, "absolute"},
		{[]Spec{{HostDir: sub, GuestPath: "x"}}, "not an absolute"},
		{[]Spec{{HostDir: sub, GuestPath: "/a/../b"}}, "not an absolute"},
		{[]Spec{{HostDir: sub, GuestPath: "/a b"}}, "plain characters"},
		{[]Spec{{HostDir: sub, GuestPath: "/"}}, "system directory"},
		{[]Spec{{HostDir: sub, GuestPath: "/root"}}, "system directory"},
		{[]Spec{{HostDir: sub, GuestPath: "/proc/x"}}, "system directory"},
		{[]Spec{{HostDir: sub, GuestPath: "/run"}}, "system directory"},
		{[]Spec{{HostDir: sub, GuestPath: "/a"}, {HostDir: dir, GuestPath: "/a"}}, "two host folders"},
		{make([]Spec, MaxMounts+1), "at most"},
	} {
		err := Validate(tc.specs, uid)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, rpc.ErrBadRequest) || rpc.HintOf(err) == "" {
			t.Errorf("%+v: %v (hint %q); want a bad_request with %q and a hint", tc.specs, err, rpc.HintOf(err), tc.want)
		}
	}
	// The symlink's refusal gives the real path to use instead.
	err := Validate([]Spec{{HostDir: link, GuestPath: "/x", ReadOnly: true}}, uid)
	if real, _ := filepath.EvalSymlinks(sub); !strings.Contains(rpc.HintOf(err), real+":/x:ro") {
		t.Errorf("symlink hint %q does not give the real path %s", rpc.HintOf(err), real)
	}
	// Subdirectories of /root are fine, and up to MaxMounts folders.
	var many []Spec
	for i := 0; i < MaxMounts; i++ {
		many = append(many, Spec{HostDir: sub, GuestPath: "/root/d" + Tag(i)})
	}
	if err := Validate(many, uid); err != nil {
		t.Errorf("%d folders under /root refused: %v", MaxMounts, err)
	}
	// Another user's directory is refused (root shares anything).
	if uid == 0 {
		os.Chown(sub, 65534, 65534)
		if err := Validate([]Spec{{HostDir: sub, GuestPath: "/x"}}, 1000); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
			t.Errorf("another user's folder: %v", err)
		}
		if err := Validate([]Spec{{HostDir: sub, GuestPath: "/x"}}, 0); err != nil {
			t.Errorf("root refused: %v", err)
		}
	}
}

func TestTag(t *testing.T) {
	if Tag(0) == Tag(1) || Tag(3) != "banger3" {
		t.Errorf("tags %q %q %q", Tag(0), Tag(1), Tag(3))
	}
}
