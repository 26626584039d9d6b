package integration

// Issue 11, finding 8: the CLI trusts only its own daemon. An attacker uid
// squats the victim's runtime directory or serves a fake bangerd; the
// victim runs the real banger binary and is refused, with the reason, the
// op id and what to do, and nothing on the host changes.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/tests/harness"
	"golang.org/x/sys/unix"
)

const (
	attackerUID = 60001
	victimUID   = 60002
)

// trustWorld is one host with an attacker and a victim: a shared sticky
// TMPDIR (like /tmp), the victim's home and a directory where the hostile
// commands would leave their marker.
type trustWorld struct {
	base      string
	tmp       string
	home      string
	markerDir string
	marker    string
	env       []string
}

func newTrustWorld(t *testing.T) *trustWorld {
	t.Helper()
	base, err := os.MkdirTemp("", "bg-trust-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	w := &trustWorld{base: base, tmp: filepath.Join(base, "tmp"), home: filepath.Join(base, "home"),
		markerDir: filepath.Join(base, "marker")}
	w.marker = filepath.Join(w.markerDir, "MARKER")
	must(t, os.Chmod(base, 0o755))
	must(t, os.Mkdir(w.tmp, 0o755))
	must(t, os.Chmod(w.tmp, 0o777|fs.ModeSticky))
	for _, d := range []string{w.home, w.markerDir} {
		must(t, os.Mkdir(d, 0o700))
		must(t, os.Chown(d, victimUID, victimUID))
	}
	w.env = []string{
		"HOME=" + w.home, "TMPDIR=" + w.tmp, "PATH=/usr/bin:/bin", "USER=victim",
		"BANGERD=" + filepath.Join(harness.BinDir, "bangerd"),
		"BANGER_HELPER_SOCKET=" + filepath.Join(base, "no-helper.sock"),
	}
	t.Cleanup(func() { w.noDaemon(t) })
	return w
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// victim runs the real banger as the victim, with the world's clean
// environment (no XDG_RUNTIME_DIR) plus extra.
func (w *trustWorld) victim(t *testing.T, extra []string, args ...string) harness.Result {
	t.Helper()
	cmd := exec.Command(filepath.Join(harness.BinDir, "banger"), args...)
	cmd.Env = append(append([]string(nil), w.env...), extra...)
	cmd.Dir = w.home
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: victimUID, Gid: victimUID}}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running banger %v: %v", args, err)
	}
	r := harness.Result{Stdout: out.String(), Stderr: errb.String(), Code: code}
	t.Logf("victim$ banger %s\n%s", strings.Join(args, " "), r)
	w.noDaemon(t)
	return r
}

// noDaemon fails the test if a bangerd was started for the victim (and
// kills it): every refusal here must happen before that.
func (w *trustWorld) noDaemon(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(w.home, ".local", "state", "banger", "bangerd.lock"))
	if err != nil {
		return
	}
	var pid int
	fmt.Sscanf(strings.TrimSpace(string(b)), "%d", &pid)
	if pid > 0 && harness.Alive(pid) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		t.Errorf("a bangerd (pid %d) was started for the victim", pid)
	}
}

// noMarker fails the test if a hostile command ran.
func (w *trustWorld) noMarker(t *testing.T) {
	t.Helper()
	if entries, _ := os.ReadDir(w.markerDir); len(entries) > 0 {
		t.Errorf("a hostile command ran: %s holds %v", w.markerDir, entries)
	}
}

var opIDLine = regexp.MustCompile(`(?m)^  op id: (op-[0-9a-f]{6}) `)

// refused checks r is the CLI's own forbidden refusal: exit 8, every want
// in stderr, one op id, and a hint. It returns the op id.
func refused(t *testing.T, r harness.Result, want ...string) string {
	t.Helper()
	if r.Code != 8 {
		t.Errorf("exit %d, want 8 (forbidden)", r.Code)
	}
	for _, w := range append([]string{"code:  forbidden", "  hint:  "}, want...) {
		if !strings.Contains(r.Stderr, w) {
			t.Errorf("stderr lacks %q", w)
		}
	}
	ids := opIDLine.FindAllStringSubmatch(r.Stderr, -1)
	if len(ids) != 1 || strings.Count(r.Stderr, "banger: ") != 1 {
		t.Errorf("want one error with one op id, got %d op ids:\n%s", len(ids), r.Stderr)
		return ""
	}
	return ids[0][1]
}

// snapshot records everything under p (not following links): type, mode,
// owner, size, content and the modification time of each entry.
func snapshot(t *testing.T, p string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		line := fmt.Sprintf("%s %v %d:%d %d %d", path, fi.Mode(), st.Uid, st.Gid, fi.Size(), fi.ModTime().UnixNano())
		if fi.Mode().IsRegular() {
			b, _ := os.ReadFile(path)
			line += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			target, _ := os.Readlink(path)
			line += " -> " + target
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// Finding 8, runtime directory squatting: the attacker made
// $TMPDIR/banger-<victim uid> (0777, 0700, or a link to a directory of
// theirs) before the victim's first banger. The victim's `banger vm ssh`
// refuses it, says whose it is and how to get out, starts no daemon, and
// the directory and everything in it are as the attacker left them.
func TestRootRuntimeDirSquatRefused(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct {
		name string
		make func(w *trustWorld, squat string)
		want []string
	}{
		{"dir 0777", func(w *trustWorld, squat string) { attackerDir(t, squat, 0o777) },
			[]string{"belongs to uid 60001 (mode 0777), not to you (uid 60002)", "rm -r "}},
		{"dir 0700", func(w *trustWorld, squat string) { attackerDir(t, squat, 0o700) },
			[]string{"belongs to uid 60001 (mode 0700), not to you (uid 60002)", "XDG_RUNTIME_DIR"}},
		{"link", func(w *trustWorld, squat string) {
			target := filepath.Join(w.tmp, "attacker-owned")
			attackerDir(t, target, 0o777)
			must(t, os.Symlink(target, squat))
			must(t, os.Lchown(squat, attackerUID, attackerUID))
		}, []string{"is a symbolic link", "rm "}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newTrustWorld(t)
			squat := filepath.Join(w.tmp, fmt.Sprintf("banger-%d", victimUID))
			tc.make(w, squat)
			before, homeBefore := snapshot(t, w.tmp), snapshot(t, w.home)

			r := w.victim(t, nil, "vm", "ssh", "x")
			refused(t, r, append([]string{"banger: runtime directory " + squat}, tc.want...)...)
			if after := snapshot(t, w.tmp); after != before {
				t.Errorf("TMPDIR changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			if after := snapshot(t, w.home); after != homeBefore {
				t.Errorf("the victim's home changed:\nbefore:\n%s\nafter:\n%s", homeBefore, after)
			}
		})
	}
}

// namedVictim gives the victim's uid a passwd entry (ssh refuses to run
// for a uid without one) by bind-mounting a copy of /etc/passwd with it
// over /etc/passwd, in the test's own mount namespace (InNetNS made one):
// the host's file is untouched.
func namedVictim(t *testing.T, w *trustWorld) {
	t.Helper()
	data, err := os.ReadFile("/etc/passwd")
	must(t, err)
	data = append(data, fmt.Sprintf("victim:x:%d:%d::%s:/bin/sh\n", victimUID, victimUID, w.home)...)
	p := filepath.Join(w.base, "passwd")
	must(t, os.WriteFile(p, data, 0o644))
	must(t, unix.Mount(p, "/etc/passwd", "", unix.MS_BIND, ""))
	t.Cleanup(func() { _ = unix.Unmount("/etc/passwd", 0) })
}

// attackerDir makes dir as the attacker's, with a bait socket file and a
// file in it.
func attackerDir(t *testing.T, dir string, perm fs.FileMode) {
	t.Helper()
	must(t, os.Mkdir(dir, 0o700))
	for name, content := range map[string]string{"bangerd.sock": "bait", "notes": "attacker's"} {
		p := filepath.Join(dir, name)
		must(t, os.WriteFile(p, []byte(content), 0o666))
		must(t, os.Chown(p, attackerUID, attackerUID))
	}
	must(t, os.Chown(dir, attackerUID, attackerUID))
	must(t, os.Chmod(dir, perm))
}

// envListenChild makes the test binary, re-run as another uid, listen on
// the unix socket PATH and hand the listener back on fd 3 (SO_PEERCRED of
// its connections then names the child's uid, the listen() caller's).
const envListenChild = "BANGER_TEST_LISTEN_CHILD"

func listenChild(path string) {
	ln, err := net.Listen("unix", path)
	var f *os.File
	if err == nil {
		ul := ln.(*net.UnixListener)
		ul.SetUnlinkOnClose(false)
		if err = os.Chmod(path, 0o666); err == nil {
			f, err = ul.File()
		}
	}
	if err == nil {
		err = syscall.Sendmsg(3, []byte{0}, syscall.UnixRights(int(f.Fd())), nil, 0)
	}
	fmt.Printf("CHILD uid=%d err=%v\n", os.Getuid(), err)
}

// listenAs returns a listener on path created by a process of uid.
func (w *trustWorld) listenAs(t *testing.T, uid int, path string) net.Listener {
	t.Helper()
	exe, err := os.Executable()
	must(t, err)
	cp := filepath.Join(w.base, "integration.test")
	if _, err := os.Stat(cp); err != nil {
		data, err := os.ReadFile(exe)
		must(t, err)
		must(t, os.WriteFile(cp, data, 0o755))
	}
	pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	must(t, err)
	mine, theirs := os.NewFile(uintptr(pair[0]), "handoff"), os.NewFile(uintptr(pair[1]), "handoff-child")
	defer mine.Close()
	top, _, _ := strings.Cut(t.Name(), "/")
	cmd := exec.Command(cp, "-test.run", "^"+regexp.QuoteMeta(top)+"$", "-test.count=1", "-test.v")
	cmd.Env = []string{envListenChild + "=" + path, harness.EnvBinDir + "=" + harness.BinDir, "PATH=/usr/bin:/bin"}
	cmd.Dir = w.base
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	out, err := cmd.CombinedOutput()
	theirs.Close()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("CHILD uid=%d err=<nil>", uid)) {
		t.Fatalf("listening as uid %d: %v\n%s", uid, err, out)
	}
	buf, oob := make([]byte, 1), make([]byte, syscall.CmsgSpace(4))
	_, oobn, _, _, err := syscall.Recvmsg(pair[0], buf, oob, 0)
	must(t, err)
	msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control message: %v %v", msgs, err)
	}
	fds, err := syscall.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("rights: %v %v", fds, err)
	}
	f := os.NewFile(uintptr(fds[0]), path)
	defer f.Close()
	ln, err := net.FileListener(f)
	must(t, err)
	return ln
}

// fakeDaemon answers like bangerd on ln, with ssh_info as its vm.ssh_info
// reply, and records the calls that reach it.
type fakeDaemon struct {
	mu    sync.Mutex
	info  api.SSHInfo
	calls []string // "method op-id"
}

func (w *trustWorld) serveFake(t *testing.T, ln net.Listener) *fakeDaemon {
	fd := &fakeDaemon{}
	srv := rpc.NewServer("fake", slog.New(slog.NewTextHandler(io.Discard, nil)))
	record := func(ctx context.Context, method string) {
		fd.mu.Lock()
		defer fd.mu.Unlock()
		fd.calls = append(fd.calls, method+" "+op.From(ctx))
	}
	rpc.Register(srv, api.MethodDaemonPing, func(ctx context.Context, _ struct{}) (api.Ping, error) {
		record(ctx, api.MethodDaemonPing)
		return api.Ping{PID: os.Getpid(), Version: "fake"}, nil
	})
	rpc.Register(srv, api.MethodVMSSHInfo, func(ctx context.Context, p api.VMRef) (api.SSHInfo, error) {
		record(ctx, api.MethodVMSSHInfo)
		fd.mu.Lock()
		defer fd.mu.Unlock()
		info := fd.info
		info.Name = p.Name
		return info, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return fd
}

func (fd *fakeDaemon) set(info api.SSHInfo) {
	fd.mu.Lock()
	defer fd.mu.Unlock()
	fd.info, fd.calls = info, nil
}

func (fd *fakeDaemon) seen() []string {
	fd.mu.Lock()
	defer fd.mu.Unlock()
	return append([]string(nil), fd.calls...)
}

// Finding 8, a fake daemon: a socket the attacker's uid serves sits where
// the victim's CLI looks, answering like bangerd with an ssh user of
// `-oProxyCommand=touch MARKER`. The victim's CLI refuses it by its peer
// uid before sending anything. Served by the victim's own uid (the peer
// check satisfied), the same answer, and a hostile host, key path or
// known_hosts path, are refused by the ssh argv check; and a hostile
// remote command after the destination stays a command. MARKER never
// appears. Inside a network namespace: the one ssh that runs tries an
// address no route leads to.
func TestRootFakeDaemonRefused(t *testing.T) {
	if p := os.Getenv(envListenChild); p != "" {
		listenChild(p)
		return
	}
	if !testutil.InNetNS(t) {
		return
	}
	testutil.RequireTool(t, "ssh")
	w := newTrustWorld(t)
	namedVictim(t, w)
	run := filepath.Join(w.base, "victim-run")
	sock := filepath.Join(run, "bangerd.sock")
	must(t, os.Mkdir(run, 0o700))
	must(t, os.Chown(run, victimUID, victimUID))
	extra := []string{"BANGER_RUNTIME_DIR=" + run}
	hostile := api.SSHInfo{User: "-oProxyCommand=touch " + w.marker, Host: "10.0.0.2",
		KeyPath: filepath.Join(w.home, "id_ed25519"), KnownHosts: filepath.Join(w.home, "known_hosts")}

	t.Run("attacker serves the socket", func(t *testing.T) {
		theirs := filepath.Join(w.base, "attacker")
		must(t, os.Mkdir(theirs, 0o700))
		must(t, os.Chown(theirs, attackerUID, attackerUID))
		ln := w.listenAs(t, attackerUID, filepath.Join(theirs, "s.sock"))
		fake := w.serveFake(t, ln)
		fake.set(hostile)
		// The attacker's socket where the victim's CLI looks.
		must(t, os.Rename(filepath.Join(theirs, "s.sock"), sock))
		defer os.Remove(sock)
		before := snapshot(t, run)

		r := w.victim(t, extra, "vm", "ssh", "x")
		refused(t, r, "refusing the server on "+sock, "served by uid 60001", "not by you (uid 60002) or root", "not your bangerd", "rm "+sock)
		if calls := fake.seen(); len(calls) != 0 {
			t.Errorf("the attacker's daemon was sent %v", calls)
		}
		if after := snapshot(t, run); after != before {
			t.Errorf("the runtime dir changed:\n%s\n%s", before, after)
		}
		w.noMarker(t)
	})

	t.Run("victim serves the socket", func(t *testing.T) {
		ln := w.listenAs(t, victimUID, sock)
		fake := w.serveFake(t, ln)
		for _, tc := range []struct {
			name string
			mut  func(*api.SSHInfo)
			want string
		}{
			{"user", func(*api.SSHInfo) {}, `ssh user "-oProxyCommand=touch ` + w.marker + `"`},
			{"host", func(i *api.SSHInfo) { i.User, i.Host = "root", "-oProxyCommand=touch "+w.marker }, "ssh host"},
			{"key path", func(i *api.SSHInfo) { i.User, i.KeyPath = "root", "-oProxyCommand=touch "+w.marker }, "key path"},
			{"known_hosts", func(i *api.SSHInfo) { i.User, i.KnownHosts = "root", w.home+"/kh -oProxyCommand=touch "+w.marker }, "known_hosts path"},
		} {
			// With a command too: before "--" went before the
			// destination, the command became ssh's destination and a
			// hostile user ssh's option.
			for _, args := range [][]string{{"vm", "ssh", "x"}, {"vm", "ssh", "x", "--", "true"}} {
				info := hostile
				tc.mut(&info)
				fake.set(info)
				r := w.victim(t, extra, args...)
				id := refused(t, r, `refusing to run ssh for vm "x"`, tc.want, "banger daemon stop")
				want := []string{api.MethodDaemonPing + " " + id, api.MethodVMSSHInfo + " " + id}
				if got := fake.seen(); strings.Join(got, ",") != strings.Join(want, ",") {
					t.Errorf("%s: the daemon saw %v, want %v (one op id, the CLI's)", tc.name, got, want)
				}
				w.noMarker(t)
			}
		}

		// Control: a valid answer reaches the real ssh, which fails to
		// connect (no route here); the hostile command after "--" and
		// the destination is not an option.
		info := hostile
		info.User = "root"
		fake.set(info)
		start := time.Now()
		r := w.victim(t, extra, "vm", "ssh", "x", "--", "-oProxyCommand=touch "+w.marker)
		if r.Code != 255 || !strings.Contains(r.Stderr, "connect to host 10.0.0.2") {
			t.Errorf("valid answer: want ssh's failure to connect (255), got %d after %s", r.Code, time.Since(start))
		}
		w.noMarker(t)
	})
}
