package mount

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-dev/banger/internal/testutil"
)

// The test binary is the wrapper as bangerd is (cmd/bangerd calls
// RunWrapper the same way).
func TestMain(m *testing.M) {
	if IsWrapper() {
		os.Exit(RunWrapper())
	}
	os.Exit(m.Run())
}

func self(t *testing.T) string {
	t.Helper()
	p, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func virtiofsd(t *testing.T) string {
	t.Helper()
	bin, err := Find()
	if err != nil {
		t.Skip(err)
	}
	return bin
}

// A real virtiofsd, as root: its socket appears 0600, Alive follows it,
// Stop ends it and its sandboxed child.
func TestVirtiofsdStartStopRoot(t *testing.T) {
	testutil.RequireRoot(t)
	bin := virtiofsd(t)
	dir, share := t.TempDir(), t.TempDir()
	sock := filepath.Join(dir, "fs.sock")
	pid, err := Start(context.Background(), Options{Binary: bin, Self: self(t), Spec: Spec{HostDir: share, GuestPath: "/x"}, Socket: sock, LogPath: filepath.Join(dir, "log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Stop(pid, sock) })
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket: %v, %v", fi, err)
	}
	if !Alive(pid, sock) || Alive(pid, sock+"x") || Alive(os.Getpid(), sock) {
		t.Fatal("Alive does not tell this virtiofsd from others")
	}
	kids := children(pid)
	if err := Stop(pid, sock); err != nil {
		t.Fatal(err)
	}
	if Alive(pid, sock) {
		t.Fatal("alive after Stop")
	}
	for _, k := range kids {
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(k) + "/cmdline"); err == nil && strings.Contains(string(b), sock) {
			t.Errorf("virtiofsd's child %d outlived Stop", k)
		}
	}
}

// A virtiofsd that cannot start says why, with its log.
func TestVirtiofsdStartFails(t *testing.T) {
	testutil.RequireRoot(t)
	bin := virtiofsd(t)
	dir := t.TempDir()
	_, err := Start(context.Background(), Options{Binary: bin, Self: self(t), Spec: Spec{HostDir: filepath.Join(dir, "missing"), GuestPath: "/x"}, Socket: filepath.Join(dir, "s"), LogPath: filepath.Join(dir, "log")})
	if err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("a virtiofsd on a missing folder: %v", err)
	}
}

// :ro is the host's: inside the wrapper's namespace the folder is
// read-only for any program (here touch, in virtiofsd's place), while the
// same folder stays writable outside.
func TestWrapperReadOnly(t *testing.T) {
	testutil.RequireRoot(t)
	share := t.TempDir()
	o := Options{Binary: "/bin/true", Self: self(t), Spec: Spec{HostDir: share, ReadOnly: true}}
	run := func(ro bool) error {
		o.Spec.ReadOnly = ro
		cmd := o.command()
		mode := "rw"
		if ro {
			mode = "ro"
		}
		touch, _ := exec.LookPath("touch")
		cmd.Args = []string{o.Self, mode, share, touch, filepath.Join(share, "x-"+mode)}
		cmd.Stderr = io.Discard
		return cmd.Run()
	}
	if err := run(true); err == nil {
		t.Fatal("a write in the read-only wrapper succeeded")
	}
	if _, err := os.Stat(filepath.Join(share, "x-ro")); err == nil {
		t.Fatal("the read-only wrapper's write reached the folder")
	}
	if err := run(false); err != nil {
		t.Fatalf("a write in the read-write wrapper: %v", err)
	}
	if _, err := os.Stat(filepath.Join(share, "x-rw")); err != nil {
		t.Fatal("the read-write wrapper's write is not in the folder")
	}
	// And the host's own mount table is untouched.
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), share) {
		t.Fatal("the wrapper's bind mount is in the host's namespace")
	}
}

// As an unprivileged daemon's user: virtiofsd runs in a user namespace
// that maps the user to root, and its socket is the user's.
func TestVirtiofsdUnprivileged(t *testing.T) {
	if os.Getenv("BANGER_MOUNT_CHILD") != "" {
		dir := os.Getenv("BANGER_MOUNT_CHILD")
		sock := filepath.Join(dir, "fs.sock")
		pid, err := Start(context.Background(), Options{Binary: os.Getenv("BANGER_VIRTIOFSD"), Self: self(t), Spec: Spec{HostDir: filepath.Join(dir, "share"), GuestPath: "/x"}, Socket: sock, LogPath: filepath.Join(dir, "log")})
		if err != nil {
			t.Fatal(err)
		}
		if !Alive(pid, sock) {
			t.Fatal("not alive")
		}
		if err := Stop(pid, sock); err != nil {
			t.Fatal(err)
		}
		return
	}
	testutil.RequireRoot(t)
	bin := virtiofsd(t)
	dir, err := os.MkdirTemp("", "banger-mount-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	os.Mkdir(filepath.Join(dir, "share"), 0o755)
	exe := filepath.Join(dir, "mount.test")
	data, _ := os.ReadFile(self(t))
	os.WriteFile(exe, data, 0o755)
	for _, p := range []string{dir, filepath.Join(dir, "share")} {
		os.Chown(p, 65534, 65534)
	}
	cmd := exec.Command(exe, "-test.run", "^TestVirtiofsdUnprivileged$", "-test.v")
	cmd.Env = append(os.Environ(), "BANGER_MOUNT_CHILD="+dir, "BANGER_VIRTIOFSD="+bin, "HOME="+dir)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "operation not permitted") && strings.Contains(string(out), "user") {
			t.Skipf("this kernel refuses user namespaces to uid 65534: %s", out)
		}
		t.Fatalf("as uid 65534: %v\n%s\nvirtiofsd log: %s", err, out, tail(filepath.Join(dir, "log")))
	}
}
