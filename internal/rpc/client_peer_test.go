package rpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/testutil"
)

// peerServer serves "whoami" (the caller's uid per SO_PEERCRED) on ln and
// counts the calls that reached a handler.
type peerServer struct {
	calls atomic.Int32
	log   *syncBuffer
}

func servePeer(t *testing.T, ln net.Listener) *peerServer {
	t.Helper()
	ps := &peerServer{log: &syncBuffer{}}
	srv := NewServer("", logging.New(ps.log, slog.LevelDebug, "test"))
	Register(srv, "whoami", func(ctx context.Context, _ struct{}) (uint32, error) {
		ps.calls.Add(1)
		c, ok := PeerFrom(ctx)
		if !ok {
			return 0, errors.New("no peer credentials")
		}
		return c.UID, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return ps
}

func listenTemp(t *testing.T) (string, net.Listener) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	return sock, ln
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(op.With(context.Background(), op.New()), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// VerifyPeer sees the real SO_PEERCRED of the server (this process made the
// listener), an accepted server is called as usual, and a refused one gets
// nothing: the call fails as forbidden, naming the socket, the uid serving
// it and the uids expected, and no handler runs.
func TestVerifyPeer(t *testing.T) {
	sock, ln := listenTemp(t)
	ps := servePeer(t, ln)
	me := uint32(os.Getuid())

	var seen PeerCred
	c := &Client{SocketPath: sock, VerifyPeer: func(p PeerCred) error { seen = p; return nil }}
	var uid uint32
	if err := c.Call(callCtx(t), "whoami", nil, &uid); err != nil {
		t.Fatal(err)
	}
	if seen.UID != me || seen.PID != int32(os.Getpid()) || uid != me {
		t.Fatalf("peer %+v, whoami %d; want uid %d pid %d", seen, uid, me, os.Getpid())
	}
	if err := (&Client{SocketPath: sock, VerifyPeer: PeerUIDs(me+7, me)}).Call(callCtx(t), "whoami", nil, nil); err != nil {
		t.Fatalf("PeerUIDs including %d: %v", me, err)
	}

	before := ps.calls.Load()
	err := (&Client{SocketPath: sock, VerifyPeer: PeerUIDs(me+1, me+2)}).Call(callCtx(t), "whoami", nil, nil)
	var pe *PeerError
	if !errors.As(err, &pe) || !errors.Is(err, ErrForbidden) || CodeOf(err) != CodeForbidden {
		t.Fatalf("refusal: %T %v (code %s)", err, err, CodeOf(err))
	}
	if pe.Cred.UID != me || pe.Socket != sock {
		t.Errorf("PeerError %+v", pe)
	}
	for _, want := range []string{sock, fmt.Sprintf("served by uid %d (pid %d)", me, os.Getpid()), fmt.Sprintf("expected uid %d or %d", me+1, me+2)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message lacks %q: %v", want, err)
		}
	}
	if IsUnreachable(err) {
		t.Error("a refused server is reported unreachable")
	}
	// Nothing was sent: no handler ran, no line names the method.
	time.Sleep(50 * time.Millisecond)
	if n := ps.calls.Load(); n != before {
		t.Errorf("a handler ran for the refused client (%d calls)", n-before)
	}
	for _, l := range ps.log.lines(t) {
		if l["method"] == "whoami" && l["msg"] == "rpc failed" {
			t.Errorf("the server saw the refused call: %v", l)
		}
	}

	// A missing socket stays unreachable (the CLI starts bangerd on that).
	err = (&Client{SocketPath: sock + ".gone", VerifyPeer: PeerUIDs(me)}).Call(callCtx(t), "whoami", nil, nil)
	if !IsUnreachable(err) {
		t.Errorf("missing socket: %v", err)
	}
}

// Dial supplies a connection made elsewhere; its errors come back as they
// are; a connection VerifyPeer cannot check is refused.
func TestClientDial(t *testing.T) {
	sock, ln := listenTemp(t)
	servePeer(t, ln)
	me := uint32(os.Getuid())

	var dials int
	c := &Client{SocketPath: "elsewhere", VerifyPeer: PeerUIDs(me), Dial: func(ctx context.Context) (net.Conn, error) {
		dials++
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	var uid uint32
	if err := c.Call(callCtx(t), "whoami", nil, &uid); err != nil || uid != me || dials != 1 {
		t.Fatalf("through Dial: uid %d, %d dials, %v", uid, dials, err)
	}

	boom := errors.New("boom")
	err := (&Client{SocketPath: "x", Dial: func(context.Context) (net.Conn, error) { return nil, boom }}).Call(callCtx(t), "whoami", nil, nil)
	if !errors.Is(err, boom) || IsUnreachable(err) {
		t.Fatalf("Dial's error: %v", err)
	}

	// An in-memory pipe to a server: served without VerifyPeer, refused with.
	pipeTo := func() (net.Conn, error) {
		cli, srvEnd := net.Pipe()
		s := NewServer("", slog.New(slog.NewTextHandler(io.Discard, nil)))
		Register(s, "whoami", func(context.Context, struct{}) (uint32, error) { return 42, nil })
		ln := &oneConnListener{conn: srvEnd}
		go s.Serve(context.Background(), ln)
		return cli, nil
	}
	if err := (&Client{SocketPath: "pipe", Dial: func(context.Context) (net.Conn, error) { return pipeTo() }}).Call(callCtx(t), "whoami", nil, &uid); err != nil || uid != 42 {
		t.Fatalf("over a pipe: %d %v", uid, err)
	}
	err = (&Client{SocketPath: "pipe", VerifyPeer: PeerUIDs(me), Dial: func(context.Context) (net.Conn, error) { return pipeTo() }}).Call(callCtx(t), "whoami", nil, nil)
	if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "not a unix socket") {
		t.Fatalf("unverifiable connection: %v", err)
	}
}

// envPeerChild makes the test binary, re-run as another uid, make a socket
// ("listen:PATH" or "connect:PATH") and hand its descriptor back on fd 3.
const envPeerChild = "BANGER_TEST_RPC_PEER_CHILD"

// peerChild is the child's side of handOff.
func peerChild(spec string) {
	mode, path, _ := strings.Cut(spec, ":")
	var f *os.File
	var err error
	switch mode {
	case "listen":
		var ln net.Listener
		if ln, err = net.Listen("unix", path); err == nil {
			ul := ln.(*net.UnixListener)
			ul.SetUnlinkOnClose(false)
			if err = os.Chmod(path, 0o666); err == nil {
				f, err = ul.File()
			}
		}
	case "connect":
		var conn net.Conn
		if conn, err = net.Dial("unix", path); err == nil {
			f, err = conn.(*net.UnixConn).File()
		}
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err == nil {
		err = syscall.Sendmsg(3, []byte{0}, syscall.UnixRights(int(f.Fd())), nil, 0)
	}
	fmt.Printf("CHILD uid=%d err=%v\n", os.Getuid(), err)
}

// handOff runs this test again as uid (from a copy of the test binary in
// dir, which uid can reach) to make a socket per spec, and returns the
// descriptor the child sent back.
func handOff(t *testing.T, dir string, uid int, spec string) *os.File {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cp := filepath.Join(dir, "rpc.test")
	if _, err := os.Stat(cp); err != nil {
		data, err := os.ReadFile(exe)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cp, data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine, theirs := os.NewFile(uintptr(pair[0]), "handoff"), os.NewFile(uintptr(pair[1]), "handoff-child")
	defer mine.Close()
	cmd := exec.Command(cp, "-test.run", "^"+regexp.QuoteMeta(t.Name())+"$", "-test.count=1", "-test.v")
	cmd.Env = []string{envPeerChild + "=" + spec, "PATH=/usr/bin:/bin"}
	cmd.Dir = dir
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	out, err := cmd.CombinedOutput()
	theirs.Close()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("CHILD uid=%d err=<nil>", uid)) {
		t.Fatalf("child as uid %d (%s): %v\n%s", uid, spec, err, out)
	}
	buf, oob := make([]byte, 1), make([]byte, syscall.CmsgSpace(4))
	_, oobn, _, _, err := syscall.Recvmsg(pair[0], buf, oob, 0)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := syscall.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control message: %v %v", msgs, err)
	}
	fds, err := syscall.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		t.Fatalf("rights: %v %v", fds, err)
	}
	return os.NewFile(uintptr(fds[0]), spec)
}

// With real uids: a server whose listener another uid made is refused by
// PeerUIDs(0) and accepted by PeerUIDs(that uid); and Dial carries a
// connection another uid made, so the server sees that uid as its caller.
func TestRootPeerOfAnotherUID(t *testing.T) {
	if spec := os.Getenv(envPeerChild); spec != "" {
		peerChild(spec)
		return
	}
	testutil.RequireRoot(t)
	const uid = 65534
	dir, err := os.MkdirTemp("", "banger-rpc-peer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	theirs := filepath.Join(dir, "theirs")
	if err := os.Mkdir(theirs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(theirs, uid, uid); err != nil {
		t.Fatal(err)
	}

	// A listener made by uid, served here.
	sock := filepath.Join(theirs, "s.sock")
	lf := handOff(t, dir, uid, "listen:"+sock)
	ln, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		t.Fatal(err)
	}
	ps := servePeer(t, ln)
	err = (&Client{SocketPath: sock, VerifyPeer: PeerUIDs(0)}).Call(callCtx(t), "whoami", nil, nil)
	var pe *PeerError
	if !errors.As(err, &pe) || pe.Cred.UID != uid || !strings.Contains(err.Error(), "served by uid 65534") || !strings.Contains(err.Error(), "expected uid 0") {
		t.Fatalf("listener of uid %d: %v", uid, err)
	}
	if n := ps.calls.Load(); n != 0 {
		t.Fatalf("%d calls reached the refused server", n)
	}
	var got uint32
	if err := (&Client{SocketPath: sock, VerifyPeer: PeerUIDs(uid)}).Call(callCtx(t), "whoami", nil, &got); err != nil || got != 0 {
		t.Fatalf("accepted server: whoami %d, %v", got, err)
	}

	// A connection made by uid to a server of ours, used through Dial.
	mySock := filepath.Join(dir, "mine.sock")
	myLn, err := net.Listen("unix", mySock)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(mySock, 0o666); err != nil {
		t.Fatal(err)
	}
	servePeer(t, myLn)
	cf := handOff(t, dir, uid, "connect:"+mySock)
	defer cf.Close()
	c := &Client{SocketPath: mySock, VerifyPeer: PeerUIDs(0), Dial: func(context.Context) (net.Conn, error) { return net.FileConn(cf) }}
	if err := c.Call(callCtx(t), "whoami", nil, &got); err != nil || got != uid {
		t.Fatalf("through a connection of uid %d: whoami %d, %v", uid, got, err)
	}
}

// oneConnListener hands Serve conn, then reports itself closed: Serve
// returns once it has served conn.
type oneConnListener struct {
	conn net.Conn
	used bool
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if l.used {
		return nil, net.ErrClosed
	}
	l.used = true
	return l.conn, nil
}

func (l *oneConnListener) Close() error   { return nil }
func (l *oneConnListener) Addr() net.Addr { return &net.UnixAddr{Name: "pipe", Net: "unix"} }
