package agentd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/testutil"
)

// sshKeygen makes an ed25519 host key pair with ssh-keygen, as bangerd
// does, and returns both files' contents.
func sshKeygen(t *testing.T) (priv, pub []byte) {
	t.Helper()
	bin := testutil.RequireTool(t, "ssh-keygen")
	key := filepath.Join(t.TempDir(), "key")
	if out, err := exec.Command(bin, "-q", "-t", "ed25519", "-N", "", "-C", "banger-test", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	priv, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	if pub, err = os.ReadFile(key + ".pub"); err != nil {
		t.Fatal(err)
	}
	return priv, pub
}

// guestRoot makes a temporary root with the files identity changes as an
// image has them: /etc/resolv.conf a symlink (to a resolver's file),
// machine-id 0444, an /etc/hosts with the image's 127.0.1.1 line.
func guestRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"etc/ssh", "run", "run/resolver"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]struct {
		data string
		mode os.FileMode
	}{
		"etc/hostname":        {"snapshot\n", 0o644},
		"etc/hosts":           {"127.0.0.1\tlocalhost\n127.0.1.1\tsnapshot\n\n# The following lines are desirable for IPv6 capable hosts\n::1     localhost ip6-localhost ip6-loopback\n", 0o644},
		"etc/machine-id":      {"00112233445566778899aabbccddeeff\n", 0o444},
		"run/resolver/stub":   {"nameserver 127.0.0.53\n", 0o644},
		"etc/ssh/sshd_config": {"Include /etc/ssh/sshd_config.d/*.conf\n", 0o644},
	}
	for name, f := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(f.data), f.mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(filepath.Join(root, name), f.mode)
	}
	if err := os.Symlink("../run/resolver/stub", filepath.Join(root, "etc/resolv.conf")); err != nil {
		t.Fatal(err)
	}
	return root
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// checkMode checks that path is a regular file (not a symlink) of mode perm.
func checkMode(t *testing.T, path string, perm os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != perm {
		t.Errorf("%s: mode %v, want a regular file %v", path, fi.Mode(), perm)
	}
}

// noTemps checks that no temporary file of writeAtomic is left in dir.
func noTemps(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".banger-") {
			t.Errorf("temporary file %s left in %s", e.Name(), dir)
		}
	}
}

// identityServer is a server on root whose clock, hostname and RNG are
// recording fakes.
type identityFakes struct {
	mu       sync.Mutex
	clock    []time.Time
	hostname []string
	entropy  [][]byte
}

func identityServer(t *testing.T, root string) (*Server, *identityFakes, *testLog) {
	srv, log := newServer(t)
	f := &identityFakes{}
	srv.Root = root
	srv.SetClock = func(tm time.Time) error { f.mu.Lock(); defer f.mu.Unlock(); f.clock = append(f.clock, tm); return nil }
	srv.SetHostname = func(n string) error { f.mu.Lock(); defer f.mu.Unlock(); f.hostname = append(f.hostname, n); return nil }
	srv.AddEntropy = func(b []byte) error {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.entropy = append(f.entropy, bytes.Clone(b))
		return nil
	}
	return srv, f, log
}

func TestRewriteHosts(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"127.0.0.1\tlocalhost\n127.0.1.1\told\n::1 localhost\n", "127.0.0.1\tlocalhost\n127.0.1.1\tnew\n::1 localhost\n"},
		{"127.0.1.1   old old.example  \n# 127.0.1.1 comment\n", "127.0.1.1\tnew\n# 127.0.1.1 comment\n"},
		{"  127.0.1.1\told\n127.0.1.1 other\n", "127.0.1.1\tnew\n127.0.1.1\tnew\n"},
		{"127.0.0.1 localhost\n", "127.0.0.1 localhost\n127.0.1.1\tnew\n"},
		{"127.0.0.1 localhost", "127.0.0.1 localhost\n127.0.1.1\tnew\n"},
		{"127.0.1.1\told", "127.0.1.1\tnew"},
		{"127.0.1.10\tother\n", "127.0.1.10\tother\n127.0.1.1\tnew\n"},
		{"", "127.0.1.1\tnew\n"},
	} {
		if got := string(rewriteHosts([]byte(c.in), "new")); got != c.want {
			t.Errorf("%q: got %q, want %q", c.in, got, c.want)
		}
	}
}

// writeAtomic replaces a file, or a symlink (its target untouched), with
// the given mode; a reader never sees a part of the new content; a failure
// leaves nothing.
func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	os.WriteFile(target, []byte("target\n"), 0o644)
	link := filepath.Join(dir, "link")
	os.Symlink("target", link)
	if err := writeAtomic(link, []byte("new\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if readFile(t, link) != "new\n" || readFile(t, target) != "target\n" {
		t.Errorf("link %q, target %q", readFile(t, link), readFile(t, target))
	}
	checkMode(t, link, 0o640)

	// A reader racing the writes sees one whole version or the other.
	path := filepath.Join(dir, "big")
	versions := [][]byte{bytes.Repeat([]byte("a"), 4<<20), bytes.Repeat([]byte("b"), 4<<20)}
	os.WriteFile(path, versions[0], 0o644)
	stop := make(chan struct{})
	bad := make(chan string, 1)
	go func() {
		for {
			select {
			case <-stop:
				close(bad)
				return
			default:
			}
			b, err := os.ReadFile(path)
			if err != nil || (!bytes.Equal(b, versions[0]) && !bytes.Equal(b, versions[1])) {
				bad <- "a reader saw " + strconv.Itoa(len(b)) + " bytes of a part (" + strings.TrimSpace(string(b[:min(len(b), 1)])) + ")"
				return
			}
		}
	}()
	for i := range 20 {
		if err := writeAtomic(path, versions[i%2], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	if msg, ok := <-bad; ok {
		t.Error(msg)
	}
	noTemps(t, dir)

	// A failure (the directory is a file) leaves nothing.
	if err := writeAtomic(filepath.Join(target, "x"), []byte("x"), 0o644); err == nil {
		t.Error("writing under a file succeeded")
	}
	ro := filepath.Join(dir, "ro")
	os.Mkdir(ro, 0o755)
	if err := writeAtomic(filepath.Join(ro, "sub", "x"), []byte("x"), 0o644); err == nil {
		t.Error("writing into a missing directory succeeded")
	}
	noTemps(t, ro)
}

// The file steps, over a real session, under a temporary root; the clock,
// host name and RNG are fakes here (the root test uses the real ones).
func TestIdentityFiles(t *testing.T) {
	root := guestRoot(t)
	srv, fakes, log := identityServer(t, root)
	s := startSession(t, srv)
	priv, pub := sshKeygen(t)
	entropy := bytes.Repeat([]byte{0x5a}, 48)
	when := time.Unix(1800000000, 123)
	req := agent.IdentityRequest{Hostname: "clone-7", MachineID: "abcdefabcdefabcdefabcdefabcdef01", DNS: netip.MustParseAddr("10.9.0.1"),
		HostKey: priv, HostKeyPub: pub, Entropy: entropy, Time: when}
	res, err := agent.Identity(testCtx(t), stream(t, s), req)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{agent.StepClock, agent.StepEntropy, agent.StepMachineID, agent.StepHostname, agent.StepHostKey, agent.StepDNS}
	if strings.Join(res.Steps(), ",") != strings.Join(want, ",") || res.SSHDReloaded || res.Interface != "" || res.DurationUS <= 0 {
		t.Errorf("result %+v, want steps %v", res, want)
	}
	fakes.mu.Lock()
	if len(fakes.clock) != 1 || !fakes.clock[0].Equal(when) || len(fakes.hostname) != 1 || fakes.hostname[0] != "clone-7" ||
		len(fakes.entropy) != 1 || !bytes.Equal(fakes.entropy[0], entropy) {
		t.Errorf("clock %v, hostname %v, entropy %d calls", fakes.clock, fakes.hostname, len(fakes.entropy))
	}
	fakes.mu.Unlock()
	etc := filepath.Join(root, "etc")
	for name, want := range map[string]string{
		"hostname":                     "clone-7\n",
		"hosts":                        "127.0.0.1\tlocalhost\n127.0.1.1\tclone-7\n\n# The following lines are desirable for IPv6 capable hosts\n::1     localhost ip6-localhost ip6-loopback\n",
		"machine-id":                   "abcdefabcdefabcdefabcdefabcdef01\n",
		"resolv.conf":                  "nameserver 10.9.0.1\n",
		"ssh/ssh_host_ed25519_key":     string(priv),
		"ssh/ssh_host_ed25519_key.pub": string(pub),
	} {
		if got := readFile(t, filepath.Join(etc, name)); got != want {
			t.Errorf("/etc/%s: %q, want %q", name, got, want)
		}
	}
	checkMode(t, filepath.Join(etc, "machine-id"), 0o444)
	checkMode(t, filepath.Join(etc, "hostname"), 0o644)
	checkMode(t, filepath.Join(etc, "resolv.conf"), 0o644) // no longer a symlink
	checkMode(t, filepath.Join(etc, "ssh/ssh_host_ed25519_key"), 0o600)
	checkMode(t, filepath.Join(etc, "ssh/ssh_host_ed25519_key.pub"), 0o644)
	if got := readFile(t, filepath.Join(root, "run/resolver/stub")); got != "nameserver 127.0.0.53\n" {
		t.Errorf("the symlink's target changed: %q", got)
	}
	noTemps(t, etc)
	noTemps(t, filepath.Join(etc, "ssh"))
	// The server logs the op after its answer went out: wait for the line.
	waitLog(t, log, `"msg":"agent op completed","applied":"clock,entropy,machine_id,hostname,host_key,dns","op":"identity"`, 1)

	// Only the hostname: the rest stays as it is.
	res, err = agent.Identity(testCtx(t), stream(t, s), agent.IdentityRequest{Hostname: "clone-8"})
	if err != nil || strings.Join(res.Steps(), ",") != agent.StepHostname {
		t.Fatalf("%+v %v", res, err)
	}
	if readFile(t, filepath.Join(etc, "machine-id")) != "abcdefabcdefabcdefabcdefabcdef01\n" || len(fakes.clock) != 1 ||
		!strings.Contains(readFile(t, filepath.Join(etc, "hosts")), "127.0.1.1\tclone-8\n") {
		t.Error("a hostname-only identity changed more, or not the hosts line")
	}
}

// A failing step is named, with the steps before it, which stay applied;
// the steps after it are not run.
func TestIdentityFailureNamesStep(t *testing.T) {
	root := guestRoot(t)
	os.RemoveAll(filepath.Join(root, "etc/ssh")) // an image without openssh-server
	srv, fakes, log := identityServer(t, root)
	s := startSession(t, srv)
	priv, pub := sshKeygen(t)
	_, err := agent.Identity(testCtx(t), stream(t, s), agent.IdentityRequest{Hostname: "clone-1", Time: time.Unix(1800000000, 0),
		HostKey: priv, HostKeyPub: pub, DNS: netip.MustParseAddr("10.9.0.1")})
	if !errors.Is(err, rpc.ErrNotFound) || !strings.Contains(err.Error(), "identity step host_key failed") ||
		!strings.Contains(err.Error(), "stay applied: clock, hostname") {
		t.Fatalf("%v", err)
	}
	if readFile(t, filepath.Join(root, "etc/hostname")) != "clone-1\n" || len(fakes.clock) != 1 {
		t.Error("the steps before the failure were not applied")
	}
	if fi, err := os.Lstat(filepath.Join(root, "etc/resolv.conf")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Error("the step after the failure (dns) ran")
	}
	waitLog(t, log, `"msg":"agent op failed","applied":"clock,hostname","step":"host_key","op":"identity"`, 1)

	// The host name's EPERM is forbidden.
	srv.SetHostname = func(string) error { return unix.EPERM }
	_, err = agent.Identity(testCtx(t), stream(t, s), agent.IdentityRequest{Hostname: "clone-2"})
	if !errors.Is(err, rpc.ErrForbidden) || !strings.Contains(err.Error(), "(the steps before it stay applied: none)") {
		t.Errorf("%v", err)
	}
	// The agent checks the request too (a host that skips agent.Identity's
	// checks).
	st := stream(t, s)
	agent.WriteMsg(st, map[string]any{"op": "identity", "hostname": "UPPER"})
	if k, p, err := agent.ReadFrame(st, nil); err != nil || k != agent.KindMsg || !strings.Contains(string(p), `"bad_request"`) {
		t.Errorf("%q %s %v", k, p, err)
	}
}

// fakeSSHD starts a shell script named sshd that keeps its pid file as
// sshd does: written at start (after its SIGHUP handler is set) and, on
// SIGHUP, re-executed (reexec), which writes it again; without reexec a
// SIGHUP kills it. Every start appends a line to the returned log.
func fakeSSHD(t *testing.T, root string, reexec bool) (pid int, log string) {
	t.Helper()
	dir := t.TempDir()
	log = filepath.Join(dir, "starts")
	script := "#!/bin/sh\necho start >> \"$2\"\n"
	if reexec {
		script += "trap 'exec \"$0\" \"$@\"' HUP\n"
	}
	script += "echo $$ > \"$1\"\nwhile :; do sleep 0.02; done\n"
	bin := filepath.Join(dir, "sshd")
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(root, sshdPidFile)
	cmd := exec.Command(bin, pidFile, log)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pgid := cmd.Process.Pid
	t.Cleanup(func() {
		syscall.Kill(-pgid, syscall.SIGKILL)
		cmd.Wait()
	})
	for deadline := time.Now().Add(testTimeout); ; {
		if p, _, err := readPidFile(pidFile); err == nil && p == cmd.Process.Pid {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the fake sshd did not write its pid file")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return cmd.Process.Pid, log
}

func starts(t *testing.T, log string) int {
	return strings.Count(readFile(t, log), "start\n")
}

// The host key step has a running sshd re-execute (SIGHUP) and waits until
// it wrote its pid file again; an sshd that dies of it is an error; a pid
// file that names no sshd is left alone.
func TestIdentityReloadsSSHD(t *testing.T) {
	root := guestRoot(t)
	if err := os.Symlink("/proc", filepath.Join(root, "proc")); err != nil { // the real processes
		t.Fatal(err)
	}
	srv, _, _ := identityServer(t, root)
	srv.WaitSSHDReload = true
	s := startSession(t, srv)
	priv, pub := sshKeygen(t)
	key := agent.IdentityRequest{HostKey: priv, HostKeyPub: pub}

	pid, log := fakeSSHD(t, root, true)
	res, err := agent.Identity(testCtx(t), stream(t, s), key)
	if err != nil || !res.SSHDReloaded {
		t.Fatalf("%+v %v", res, err)
	}
	if n := starts(t, log); n != 2 {
		t.Errorf("sshd started %d times, want 2 (a re-exec)", n)
	}
	if unix.Kill(pid, 0) != nil {
		t.Error("sshd is gone")
	}
	t.Logf("host key step with an sshd re-exec: %d µs", res.Applied[0].DurationUS)

	// A pid file naming another process: not signalled.
	sleep := exec.Command("sleep", "60")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleep.Process.Kill(); sleep.Wait() }()
	os.WriteFile(filepath.Join(root, sshdPidFile), []byte(strconv.Itoa(sleep.Process.Pid)+"\n"), 0o644)
	res, err = agent.Identity(testCtx(t), stream(t, s), key)
	if err != nil || res.SSHDReloaded {
		t.Errorf("%+v %v", res, err)
	}
	time.Sleep(50 * time.Millisecond)
	if !alive("/proc", sleep.Process.Pid) { // a SIGHUP would have made it a zombie
		t.Error("a process that is not sshd was signalled")
	}
	// No pid file: no sshd, nothing to do.
	os.Remove(filepath.Join(root, sshdPidFile))
	if res, err := agent.Identity(testCtx(t), stream(t, s), key); err != nil || res.SSHDReloaded {
		t.Errorf("%+v %v", res, err)
	}

	// An sshd that SIGHUP kills (its new configuration is broken, say).
	pid, _ = fakeSSHD(t, root, false)
	_, err = agent.Identity(testCtx(t), stream(t, s), key)
	if err == nil || !strings.Contains(err.Error(), "identity step host_key failed") ||
		!strings.Contains(err.Error(), "sshd (pid "+strconv.Itoa(pid)+") exited after SIGHUP") {
		t.Errorf("%v", err)
	}
}

// By default the host key step answers after the SIGHUP and waits for the
// re-exec in the background: the answer does not wait, the re-exec
// happens, a second identity waits for it, and an sshd that dies of its
// SIGHUP is logged.
func TestIdentityReloadsSSHDInBackground(t *testing.T) {
	root := guestRoot(t)
	if err := os.Symlink("/proc", filepath.Join(root, "proc")); err != nil {
		t.Fatal(err)
	}
	srv, _, tlog := identityServer(t, root)
	s := startSession(t, srv)
	priv, pub := sshKeygen(t)
	key := agent.IdentityRequest{HostKey: priv, HostKeyPub: pub}

	pid, log := fakeSSHD(t, root, true)
	res, err := agent.Identity(testCtx(t), stream(t, s), key)
	if err != nil || !res.SSHDReloaded {
		t.Fatalf("%+v %v", res, err)
	}
	waitLog(t, tlog, "agent identity: sshd reloaded", 1)
	if n := starts(t, log); n != 2 {
		t.Errorf("sshd started %d times, want 2 (a re-exec)", n)
	}
	// Twice in a row: the second SIGHUP waits for the first re-exec.
	if _, err := agent.Identity(testCtx(t), stream(t, s), key); err != nil {
		t.Fatal(err)
	}
	if _, err := agent.Identity(testCtx(t), stream(t, s), key); err != nil {
		t.Fatal(err)
	}
	waitLog(t, tlog, "agent identity: sshd reloaded", 3)
	if unix.Kill(pid, 0) != nil || starts(t, log) != 4 {
		t.Errorf("sshd alive: %v, started %d times, want 4", unix.Kill(pid, 0) == nil, starts(t, log))
	}

	pid, _ = fakeSSHD(t, root, false)
	if _, err := agent.Identity(testCtx(t), stream(t, s), key); err != nil {
		t.Fatal(err)
	}
	waitLog(t, tlog, "sshd (pid "+strconv.Itoa(pid)+") exited after SIGHUP", 1)
}

func TestRandPoolInfo(t *testing.T) {
	b := []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33}
	w := randPoolInfo(b)
	if w[0] != 33*8 || w[1] != 33 || len(w) != 2+9 {
		t.Fatalf("header %d %d, %d words", w[0], w[1], len(w))
	}
	raw := make([]byte, 0, 36)
	for _, x := range w[2:] {
		raw = binary.NativeEndian.AppendUint32(raw, x)
	}
	if !bytes.Equal(raw[:33], b) || !bytes.Equal(raw[33:], []byte{0, 0, 0}) {
		t.Errorf("buffer % x", raw)
	}
}

// The real RNDADDENTROPY reaches the kernel: without CAP_SYS_ADMIN (a
// thread that dropped root, when the test runs as root) it is refused, as
// forbidden. The root test adds entropy for real.
func TestAddEntropyNeedsCapability(t *testing.T) {
	errc := make(chan error, 1)
	go func() {
		// This goroutine never unlocks its thread: the thread, whose
		// credentials change, ends with it.
		runtime.LockOSThread()
		if os.Geteuid() == 0 {
			if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 65534, 65534, 65534); e != 0 {
				errc <- e
				return
			}
		}
		errc <- addEntropy(make([]byte, 32))
	}()
	if err := <-errc; !errors.Is(err, rpc.ErrForbidden) || !strings.Contains(err.Error(), "RNDADDENTROPY") {
		t.Errorf("unprivileged RNDADDENTROPY: %v, want forbidden", err)
	}
}

func TestPickLink(t *testing.T) {
	lo := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 1, Name: "lo", EncapType: "loopback", Flags: net.FlagLoopback}}
	eth0 := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 2, Name: "eth0", EncapType: "ether"}}
	eth1 := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 3, Name: "eth1", EncapType: "ether"}}
	sit := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 4, Name: "sit0", EncapType: "sit"}}
	any4 := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	sub := &net.IPNet{IP: net.IPv4(10, 0, 0, 0).To4(), Mask: net.CIDRMask(24, 32)}
	links := []netlink.Link{lo, eth0, eth1, sit}
	for _, c := range []struct {
		links  []netlink.Link
		routes []netlink.Route
		want   string
	}{
		{links, []netlink.Route{{LinkIndex: 3, Dst: any4}}, "eth1"},
		{links, []netlink.Route{{LinkIndex: 2, Dst: sub}, {LinkIndex: 3, Dst: nil}}, "eth1"},
		{links, []netlink.Route{{LinkIndex: 2, Dst: any4, Priority: 100}, {LinkIndex: 3, Dst: any4, Priority: 50}}, "eth1"},
		{links, []netlink.Route{{LinkIndex: 1, Dst: any4}, {LinkIndex: 2, Dst: sub}}, ""}, // a default route via lo does not count
		{[]netlink.Link{lo, eth0, sit}, nil, "eth0"},
		{[]netlink.Link{lo, eth0, sit}, []netlink.Route{{LinkIndex: 9, Dst: any4}}, "eth0"},
		{links, nil, ""},
		{[]netlink.Link{lo, sit}, nil, ""},
	} {
		l, err := pickLink(c.links, c.routes)
		switch {
		case c.want == "" && !errors.Is(err, rpc.ErrNotFound):
			t.Errorf("%v: %v %v, want not_found", c.routes, l, err)
		case c.want != "" && (err != nil || l.Attrs().Name != c.want):
			t.Errorf("%v: %v %v, want %s", c.routes, l, err, c.want)
		}
	}
}

func TestGARPPacket(t *testing.T) {
	hw := net.HardwareAddr{2, 0, 0xa, 1, 0, 5}
	p := garp(hw, netip.MustParseAddr("10.1.0.5"))
	want := []byte{0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0xa, 1, 0, 5, 10, 1, 0, 5, 0, 0, 0, 0, 0, 0, 10, 1, 0, 5}
	if !bytes.Equal(p, want) {
		t.Errorf("% x, want % x", p, want)
	}
	if htons(0x0806) != binary.NativeEndian.Uint16([]byte{0x08, 0x06}) {
		t.Error("htons")
	}
}
