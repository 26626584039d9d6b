package paths

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-dev/banger/internal/rpc"
)

// otherUID stands for a user who is not the caller in these tests.
const otherUID = 60003

// subject returns the uid whose rule the test checks on dir. Run as a
// user, that is the user; run as root (the root tier), dir is given to
// otherUID so the user's rule (not root's) is the one checked.
func subject(t *testing.T, dir string) int {
	t.Helper()
	if os.Getuid() != 0 {
		return os.Getuid()
	}
	if err := os.Lchown(dir, otherUID, otherUID); err != nil {
		t.Fatal(err)
	}
	return otherUID
}

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode()
}

// refusal checks err is a forbidden refusal whose message names each of
// want and whose hint names hint.
func refusal(t *testing.T, err error, hint string, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatal("accepted, want a refusal")
	}
	if !errors.Is(err, rpc.ErrForbidden) || rpc.CodeOf(err) != rpc.CodeForbidden {
		t.Errorf("code %s, want forbidden: %v", rpc.CodeOf(err), err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("message lacks %q: %v", w, err)
		}
	}
	if h := rpc.HintOf(err); !strings.Contains(h, hint) {
		t.Errorf("hint %q lacks %q", h, hint)
	}
}

func TestEnsureRuntimeDirCreatesPrivateDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b", "banger-1")
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	if err := EnsureRuntimeDir(dir); err != nil {
		t.Fatal(err)
	}
	if m := mode(t, dir); !m.IsDir() || m.Perm() != 0o700 {
		t.Fatalf("created %v, want a 0700 directory", m)
	}
	st, _ := os.Lstat(dir)
	if uid := st.Sys().(*syscall.Stat_t).Uid; int(uid) != os.Getuid() {
		t.Fatalf("owned by %d", uid)
	}
	// Again: it is there and right.
	if err := EnsureRuntimeDir(dir); err != nil {
		t.Fatal(err)
	}
}

func TestRuntimeDirWrongMode(t *testing.T) {
	for _, perm := range []os.FileMode{0o777, 0o755, 0o750, 0o701, 0o710, 0o770} {
		dir := filepath.Join(t.TempDir(), "rt")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, perm); err != nil {
			t.Fatal(err)
		}
		uid := subject(t, dir)
		err := CheckRuntimeDir(dir, uid)
		refusal(t, err, "chmod 700 "+dir, dir, "mode 0"+strconv.FormatUint(uint64(perm), 8))
		if m := mode(t, dir); m.Perm() != perm {
			t.Errorf("mode changed to %v", m)
		}
	}
}

func TestRuntimeDirEnsureRefusesWithoutChanging(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "rt")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o757); err != nil { // others may write: refused for root too
		t.Fatal(err)
	}
	bait := filepath.Join(dir, "bangerd.sock")
	if err := os.WriteFile(bait, []byte("bait"), 0o666); err != nil {
		t.Fatal(err)
	}
	err := EnsureRuntimeDir(dir)
	refusal(t, err, dir, dir, "mode 0757")
	if m := mode(t, dir); m.Perm() != 0o757 {
		t.Errorf("mode changed to %v", m)
	}
	if b, err := os.ReadFile(bait); err != nil || string(b) != "bait" {
		t.Errorf("content changed: %q %v", b, err)
	}
	// Layout.Ensure goes through the same check.
	l := Layout{StateDir: filepath.Join(t.TempDir(), "state"), RuntimeDir: dir}
	refusal(t, l.Ensure(), dir, dir)
	if _, err := os.Stat(l.StateDir); !os.IsNotExist(err) {
		t.Errorf("Ensure made the state dir despite the refusal: %v", err)
	}
}

func TestRuntimeDirOtherOwner(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "rt")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	owner := subject(t, dir)
	err := CheckRuntimeDir(dir, owner+1)
	refusal(t, err, "XDG_RUNTIME_DIR", dir, "uid "+strconv.Itoa(owner), "not to you (uid "+strconv.Itoa(owner+1)+")", "mode 0700")
}

func TestRuntimeDirSymlink(t *testing.T) {
	base := t.TempDir()
	target := filepath.Join(base, "real")
	if err := os.Mkdir(target, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "banger-1")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	refusal(t, EnsureRuntimeDir(link), "rm "+link, link, "symbolic link", target)
	if m := mode(t, link); m&os.ModeSymlink == 0 {
		t.Errorf("link replaced: %v", m)
	}
	if entries, _ := os.ReadDir(target); len(entries) != 0 {
		t.Errorf("something was made behind the link: %v", entries)
	}
}

func TestRuntimeDirFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "banger-1")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	refusal(t, EnsureRuntimeDir(p), "rm "+p, p, "not a directory but a regular file")
	if b, _ := os.ReadFile(p); string(b) != "x" {
		t.Errorf("file changed: %q", b)
	}
}

// Root's rule: a root-owned directory only root may write, like the
// helper's /run/banger (0755). Checked on system directories every Linux
// has, so it runs without root.
func TestRuntimeDirRootRule(t *testing.T) {
	for _, d := range []string{"/", "/usr"} {
		if err := CheckRuntimeDir(d, 0); err != nil {
			t.Errorf("%s as root: %v", d, err)
		}
	}
	fi, err := os.Stat("/tmp")
	if err != nil || fi.Mode().Perm()&0o002 == 0 {
		t.Skip("/tmp is not world-writable here")
	}
	refusal(t, CheckRuntimeDir("/tmp", 0), "chmod go-w /tmp", "/tmp", "others may write")
	// A user never accepts a root-owned directory.
	if os.Getuid() != 0 {
		refusal(t, CheckRuntimeDir("/usr", os.Getuid()), "XDG_RUNTIME_DIR", "/usr", "uid 0")
	}
}

func TestDefaultRuntimeDirWithoutXDG(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	t.Setenv("XDG_RUNTIME_DIR", "")
	t.Setenv("BANGER_RUNTIME_DIR", "")
	t.Setenv("HOME", t.TempDir())
	l, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(tmp, "banger-"+strconv.Itoa(os.Getuid()))
	if os.Getuid() == 0 {
		want = RootRuntimeDir
	}
	if l.RuntimeDir != want {
		t.Fatalf("runtime dir %s, want %s", l.RuntimeDir, want)
	}
	if os.Getuid() != 0 {
		xdg := t.TempDir()
		t.Setenv("XDG_RUNTIME_DIR", xdg)
		if l, _ := Default(); l.RuntimeDir != filepath.Join(xdg, "banger") {
			t.Fatalf("with XDG_RUNTIME_DIR: %s", l.RuntimeDir)
		}
	}
}
