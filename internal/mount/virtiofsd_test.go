package mount

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/testutil"
)

// envFake turns the test binary into a stand-in for virtiofsd (run by the
// wrapper in its place): it tries to write each file named in it (one per
// line), prints "probe PATH: ok" or "probe PATH: ERROR" and exits.
const envFake = "BANGER_MOUNT_FAKE_VIRTIOFSD"

// The test binary is the wrapper as bangerd is (cmd/bangerd calls
// RunWrapper the same way).
func TestMain(m *testing.M) {
	if IsWrapper() {
		os.Exit(RunWrapper())
	}
	if probes := os.Getenv(envFake); probes != "" {
		for _, p := range strings.Split(probes, "\n") {
			if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
				fmt.Printf("probe %s: %v\n", p, errors.Unwrap(err))
			} else {
				fmt.Printf("probe %s: ok\n", p)
			}
		}
		os.Exit(0)
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

// probe runs the fake virtiofsd through Start (and so the wrapper) on
// share and returns its output: one line per file of files.
func probe(t *testing.T, share string, ro bool, files ...string) string {
	t.Helper()
	t.Setenv(envFake, strings.Join(files, "\n"))
	dir := t.TempDir()
	log := filepath.Join(dir, "log")
	_, err := Start(context.Background(), Options{Binary: self(t), Self: self(t), Spec: Spec{HostDir: share, GuestPath: "/x", ReadOnly: ro}, Socket: filepath.Join(dir, "s"), LogPath: log})
	if err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("the fake virtiofsd should exit without a socket: %v", err)
	}
	out, _ := os.ReadFile(log)
	return string(out)
}

// A real virtiofsd, as root: its socket appears 0600, Alive follows it,
// Stop ends it and its sandboxed child, and its pid file stays in the
// wrapper's private /run.
func TestVirtiofsdStartStopRoot(t *testing.T) {
	testutil.RequireRoot(t)
	bin := virtiofsd(t)
	_, pidDirBefore := os.Stat("/run/virtiofsd")
	dir, share := t.TempDir(), t.TempDir()
	sock := filepath.Join(dir, "fs.sock")
	pid, err := Start(context.Background(), Options{Binary: bin, Self: self(t), Spec: Spec{HostDir: share, GuestPath: "/x"}, Socket: sock, LogPath: filepath.Join(dir, "log"), ThreadPoolSize: 2})
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
	if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); !strings.Contains(string(b), "--thread-pool-size=2\x00") {
		t.Errorf("virtiofsd's command line %q", b)
	}
	if _, err := os.Stat("/run/virtiofsd"); err == nil && os.IsNotExist(pidDirBefore) {
		t.Error("virtiofsd's pid file directory appeared on the host")
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
	if err := Stop(pid, sock); err != nil {
		t.Errorf("a second Stop: %v", err)
	}
}

// A virtiofsd that cannot start says why, with its log.
func TestVirtiofsdStartFails(t *testing.T) {
	testutil.RequireRoot(t)
	bin := virtiofsd(t)
	dir := t.TempDir()
	_, err := Start(context.Background(), Options{Binary: bin, Self: self(t), Spec: Spec{HostDir: filepath.Join(dir, "missing"), GuestPath: "/x"}, Socket: filepath.Join(dir, "s"), LogPath: filepath.Join(dir, "log")})
	if err == nil || !strings.Contains(err.Error(), "exited") || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("a virtiofsd on a missing folder: %v", err)
	}
	if _, err := Start(context.Background(), Options{Binary: bin, Self: self(t), Spec: Spec{HostDir: dir}, Socket: filepath.Join(dir, "s"), LogPath: filepath.Join(dir, "log"), Cache: "sometimes"}); err == nil {
		t.Fatal("a bad cache mode was accepted")
	}
}

// :ro is the host's: in the wrapper's namespace the folder is read-only
// for whatever runs in virtiofsd's place (EROFS), while the same folder
// is writable outside it and with :rw.
func TestWrapperReadOnly(t *testing.T) {
	testutil.RequireRoot(t)
	share := t.TempDir()
	ro, rw := filepath.Join(share, "ro"), filepath.Join(share, "rw")
	if out := probe(t, share, true, ro); !strings.Contains(out, "probe "+ro+": "+unix.EROFS.Error()) {
		t.Fatalf("a write in the read-only wrapper: %q", out)
	}
	if _, err := os.Stat(ro); err == nil {
		t.Fatal("the read-only wrapper's write reached the folder")
	}
	if err := os.WriteFile(ro, nil, 0o600); err != nil {
		t.Fatalf("the same write outside the wrapper: %v", err)
	}
	if out := probe(t, share, false, rw); !strings.Contains(out, "probe "+rw+": ok") {
		t.Fatalf("a write in the read-write wrapper: %q", out)
	}
	if _, err := os.Stat(rw); err != nil {
		t.Fatal("the read-write wrapper's write is not in the folder")
	}
	// And the host's own mount table is untouched.
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), share) {
		t.Fatal("the wrapper's bind mount is in the host's namespace")
	}
}

// A folder under /run (/run/media/USER/stick) and a socket there survive
// the wrapper's private /run, and :ro covers the mounts below the folder
// too. The test makes its mounts in a namespace of its own (InNetNS gives
// it a new mount namespace; it uses no network).
func TestWrapperUnderRun(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	bin := virtiofsd(t)
	if err := unix.Mount("tmpfs", "/run", "tmpfs", 0, "mode=0755"); err != nil {
		t.Fatal(err)
	}
	share, vmdir := "/run/media/u/stick", "/run/banger/vm"
	sub := filepath.Join(share, "sub")
	for _, d := range []string{sub, vmdir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("tmpfs", sub, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	top, below := filepath.Join(share, "f"), filepath.Join(sub, "f")
	out := probe(t, share, true, top, below)
	for _, f := range []string{top, below} {
		if !strings.Contains(out, "probe "+f+": "+unix.EROFS.Error()) {
			t.Errorf("a write to %s in the read-only wrapper: %q", f, out)
		}
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Errorf("the same write outside the wrapper: %v", err)
		}
	}
	sock := filepath.Join(vmdir, "fs.sock")
	pid, err := Start(context.Background(), Options{Binary: bin, Self: self(t), Spec: Spec{HostDir: share, GuestPath: "/x", ReadOnly: true}, Socket: sock, LogPath: filepath.Join(t.TempDir(), "log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Stop(pid, sock) })
	if !Alive(pid, sock) {
		t.Fatal("virtiofsd on a folder under /run is not alive")
	}
	if err := Stop(pid, sock); err != nil {
		t.Fatal(err)
	}
}

// As an unprivileged daemon's user: virtiofsd runs in a user namespace
// that maps the user to root, its socket is the user's (0600), and :ro
// holds there too.
func TestVirtiofsdUnprivileged(t *testing.T) {
	if dir := os.Getenv("BANGER_MOUNT_CHILD"); dir != "" {
		unprivilegedChild(t, dir)
		return
	}
	testutil.RequireRoot(t)
	bin := virtiofsd(t)
	dir := t.TempDir()
	share := filepath.Join(dir, "share")
	if err := os.Mkdir(share, 0o755); err != nil {
		t.Fatal(err)
	}
	// uid 65534 must reach the directory and run a copy of the test binary.
	for _, p := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	exe := filepath.Join(dir, "mount.test")
	data, err := os.ReadFile(self(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, share} {
		if err := os.Chown(p, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(exe, "-test.run", "^TestVirtiofsdUnprivileged$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "BANGER_MOUNT_CHILD="+dir, "BANGER_VIRTIOFSD="+bin, "HOME="+dir)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	t.Logf("as uid 65534:\n%s", out)
	if strings.Contains(string(out), "starting virtiofsd: fork/exec") && strings.Contains(string(out), "operation not permitted") {
		t.Skip("this kernel refuses a user namespace to uid 65534 (output above)")
	}
	if err != nil || !strings.Contains(string(out), "--- PASS: TestVirtiofsdUnprivileged") {
		t.Fatalf("as uid 65534: %v", err)
	}
}

func unprivilegedChild(t *testing.T, dir string) {
	if os.Getuid() != 65534 {
		t.Fatalf("the child runs as uid %d", os.Getuid())
	}
	share, sock := filepath.Join(dir, "share"), filepath.Join(dir, "fs.sock")
	pid, err := Start(context.Background(), Options{Binary: os.Getenv("BANGER_VIRTIOFSD"), Self: self(t), Spec: Spec{HostDir: share, GuestPath: "/x"}, Socket: sock, LogPath: filepath.Join(dir, "log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Stop(pid, sock) })
	var st unix.Stat_t
	if err := unix.Stat(sock, &st); err != nil || st.Uid != 65534 || st.Mode&0o777 != 0o600 {
		t.Errorf("socket: uid %d mode %o, %v; want uid 65534, 0600", st.Uid, st.Mode&0o777, err)
	}
	if !Alive(pid, sock) {
		t.Fatal("not alive")
	}
	if err := Stop(pid, sock); err != nil || Alive(pid, sock) {
		t.Fatalf("Stop: %v", err)
	}
	f := filepath.Join(share, "f")
	if out := probe(t, share, true, f); !strings.Contains(out, "probe "+f+": "+unix.EROFS.Error()) {
		t.Errorf("a write in the read-only wrapper, unprivileged: %q", out)
	}
	if out := probe(t, share, false, f); !strings.Contains(out, "probe "+f+": ok") {
		t.Errorf("a write in the read-write wrapper, unprivileged: %q", out)
	}
	var fst unix.Stat_t
	if err := unix.Stat(f, &fst); err != nil || fst.Uid != 65534 {
		t.Errorf("the namespace root's file is uid %d on the host (%v), want 65534", fst.Uid, err)
	}
}
