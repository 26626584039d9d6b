package agentd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/rpc"
)

// testTimeout bounds every wait of these tests: generous, for a busy
// 2-core machine under -race.
const testTimeout = 60 * time.Second

// socketpair returns the two ends of a unix stream socketpair.
func socketpair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		t.Cleanup(func() { c.Close() })
	}
	return conns[0], conns[1]
}

// testLog collects the server's log lines.
type testLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *testLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// newServer returns a server whose clock and power are fakes.
func newServer(t testing.TB) (*Server, *testLog) {
	log := &testLog{}
	return &Server{
		Release:  "test-release",
		Log:      slog.New(slog.NewJSONHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		SetClock: func(time.Time) error { t.Error("SetClock called"); return nil },
		PowerOff: func(bool) error { t.Error("PowerOff called"); return nil },
	}, log
}

// startSession serves srv on one end of a socketpair and dials the other.
func startSession(t testing.TB, srv *Server) *agent.Session {
	t.Helper()
	host, guest := socketpair(t)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.ServeConn(ctx, guest) }()
	host.SetDeadline(time.Now().Add(testTimeout))
	s, err := agent.Dial(host)
	if err != nil {
		t.Fatal(err)
	}
	host.SetDeadline(time.Time{})
	t.Cleanup(func() {
		s.Close()
		cancel()
		select {
		case <-served:
		case <-time.After(testTimeout):
			t.Error("ServeConn did not return after the session closed")
		}
	})
	return s
}

// stream opens a stream that the test's end closes.
func stream(t testing.TB, s *agent.Session) net.Conn {
	t.Helper()
	st, err := s.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func TestHello(t *testing.T) {
	srv, log := newServer(t)
	s := startSession(t, srv)
	if s.Info() != (agent.Info{Version: agent.ProtocolVersion, Release: "test-release"}) {
		t.Errorf("info %+v", s.Info())
	}
	h, err := agent.Hello(testCtx(t), stream(t, s))
	if err != nil {
		t.Fatal(err)
	}
	bootID, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if h.Version != 1 || h.Release != "test-release" || h.BootID != strings.TrimSpace(string(bootID)) || h.BootID == "" || h.UptimeMS <= 0 {
		t.Errorf("hello %+v", h)
	}
	// The line is written once the answer went out.
	waitLog(t, log, `"msg":"agent op completed","op":"hello"`, 1)
}

func TestBadRequests(t *testing.T) {
	srv, _ := newServer(t)
	s := startSession(t, srv)
	for _, raw := range [][]byte{
		frameBytes(agent.KindMsg, `{"op":"frobnicate"}`),
		frameBytes(agent.KindMsg, `{"op":"hello","extra":1}`),
		frameBytes(agent.KindMsg, `not json`),
		frameBytes(agent.KindStdin, "data first"),
	} {
		st := stream(t, s)
		st.Write(raw)
		st.SetReadDeadline(time.Now().Add(testTimeout))
		_, p, err := agent.ReadFrame(st, nil)
		if err != nil || !strings.Contains(string(p), `"code":"bad_request"`) {
			t.Errorf("%q: answer %s, %v", raw, p, err)
		}
	}
	// A stream closed without a request is simply dropped; the session
	// stays.
	st := stream(t, s)
	st.Close()
	if _, err := agent.Hello(testCtx(t), stream(t, s)); err != nil {
		t.Fatal(err)
	}
}

func frameBytes(kind byte, payload string) []byte {
	var b bytes.Buffer
	agent.WriteFrame(&b, kind, []byte(payload))
	return b.Bytes()
}

func TestSetTimeAndShutdown(t *testing.T) {
	srv, _ := newServer(t)
	var got time.Time
	srv.SetClock = func(tm time.Time) error { got = tm; return nil }
	powered := make(chan bool, 1)
	srv.PowerOff = func(reboot bool) error { powered <- reboot; return nil }
	s := startSession(t, srv)
	want := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	if err := agent.SetTime(testCtx(t), stream(t, s), want); err != nil {
		t.Fatal(err)
	}
	if !got.Equal(want) {
		t.Errorf("clock set to %v, want %v", got, want)
	}
	srv.SetClock = func(time.Time) error { return os.ErrPermission }
	if err := agent.SetTime(testCtx(t), stream(t, s), want); !errors.Is(err, rpc.ErrForbidden) {
		t.Errorf("a refused clock: %v", err)
	}
	for _, reboot := range []bool{false, true} {
		if err := agent.Shutdown(testCtx(t), stream(t, s), reboot); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-powered:
			if r != reboot {
				t.Errorf("PowerOff(%v), want %v", r, reboot)
			}
		case <-time.After(testTimeout):
			t.Fatal("PowerOff not called")
		}
	}
}

// A context that ends aborts the operation and the stream.
func TestContextAborts(t *testing.T) {
	srv, _ := newServer(t)
	s := startSession(t, srv)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := agent.Hello(ctx, stream(t, s)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled hello: %v", err)
	}
	// A stream nobody answers: a raw stream to a fake op would be answered,
	// so use a host end that never gets an answer instead.
	host, _ := socketpair(t)
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := agent.Hello(ctx, host); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("unanswered hello: %v", err)
	}
}

// fakePort behaves as a virtio-serial port: reads return EOF once when
// the connected host goes away, and block while none is connected; writes
// block while none is connected. The test connects hosts with connect.
type fakePort struct {
	mu       sync.Mutex
	cond     *sync.Cond
	cur      net.Conn
	deadline time.Time
}

func newFakePort() *fakePort {
	p := &fakePort{}
	p.cond = sync.NewCond(&p.mu)
	return p
}

func (p *fakePort) connect(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cur = c
	c.SetDeadline(p.deadline)
	p.cond.Broadcast()
}

func (p *fakePort) wait() (net.Conn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.cur == nil {
		if !p.deadline.IsZero() && time.Now().After(p.deadline) {
			return nil, os.ErrDeadlineExceeded
		}
		p.cond.Wait()
	}
	return p.cur, nil
}

func (p *fakePort) Read(b []byte) (int, error) {
	c, err := p.wait()
	if err != nil {
		return 0, err
	}
	n, err := c.Read(b)
	if err == io.EOF {
		p.mu.Lock()
		if p.cur == c {
			p.cur = nil
		}
		p.mu.Unlock()
		c.Close()
	}
	return n, err
}

func (p *fakePort) Write(b []byte) (int, error) {
	c, err := p.wait()
	if err != nil {
		return 0, err
	}
	return c.Write(b)
}

func (p *fakePort) SetDeadline(t time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deadline = t
	if p.cur != nil {
		p.cur.SetDeadline(t)
	}
	p.cond.Broadcast()
	return nil
}

// The serial loop: the boot line, a session, the host going away (EOF on
// the port), a host of another protocol version, and new sessions each
// time.
func TestServePortReconnects(t *testing.T) {
	srv, log := newServer(t)
	port := newFakePort()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.ServePort(ctx, port) }()

	dial := func() (*agent.Session, net.Conn) {
		t.Helper()
		host, guest := socketpair(t)
		port.connect(guest)
		host.SetDeadline(time.Now().Add(testTimeout))
		s, err := agent.Dial(host) // skips the boot line if it is there
		if err != nil {
			t.Fatal(err)
		}
		host.SetDeadline(time.Time{})
		return s, host
	}
	hello := func(s *agent.Session) agent.HelloResult {
		t.Helper()
		st, err := s.Open(testCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		h, err := agent.Hello(testCtx(t), st)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}

	// The first host reads the boot line before the handshake's answer.
	host, guest := socketpair(t)
	port.connect(guest)
	host.SetDeadline(time.Now().Add(testTimeout))
	boot := make([]byte, len(agent.BootLine))
	if _, err := io.ReadFull(host, boot); err != nil || string(boot) != agent.BootLine {
		t.Fatalf("first bytes on the port %q, %v", boot, err)
	}
	host.SetDeadline(time.Time{})
	s1, err := agent.Dial(host)
	if err != nil {
		t.Fatal(err)
	}
	first := hello(s1)

	// The host goes away: the agent drops the session and waits. (A host
	// that connected before the agent read the EOF would have its hello
	// read by the old session, as on a real port: the host's handshake
	// timeout and reconnection cover that.)
	s1.Close()
	host.Close()
	waitLog(t, log, `"msg":"agent session ended"`, 1)

	// A host of another protocol version gets the agent's version, and
	// the agent goes on waiting.
	bad, guest := socketpair(t)
	port.connect(guest)
	bad.SetDeadline(time.Now().Add(testTimeout))
	io.WriteString(bad, "BANGER-AGENT 99\n")
	answer := make([]byte, 64)
	n, _ := bad.Read(answer)
	if !strings.HasPrefix(string(answer[:n]), "BANGER-AGENT 1 test-release") {
		t.Errorf("answer to version 99: %q", answer[:n])
	}
	bad.Close()

	// A new host gets a new session on the same port.
	s2, host2 := dial()
	if second := hello(s2); second.BootID != first.BootID {
		t.Errorf("hello %+v then %+v", first, second)
	}
	// It is a working session: an exec.
	st, _ := s2.Open(testCtx(t))
	var out bytes.Buffer
	if status, err := agent.Exec(testCtx(t), st, agent.ExecRequest{Argv: []string{"echo", "again"}}, agent.ExecIO{Stdout: &out}); err != nil || status.Code != 0 || out.String() != "again\n" {
		t.Errorf("exec on the new session: %+v %q %v", status, out.String(), err)
	}
	st.Close()
	// The host closing its end ends the agent's session.
	host2.Close()
	select {
	case <-s2.Done():
	case <-time.After(testTimeout):
		t.Error("the session outlived its connection")
	}
	waitLog(t, log, `"msg":"agent session ended"`, 2)
	s3, _ := dial()
	hello(s3)
	s3.Close()

	cancel()
	select {
	case err := <-served:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("ServePort returned %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatal("ServePort did not return after its context ended")
	}
	if got := strings.Count(log.String(), `"msg":"agent session started"`); got != 3 {
		t.Errorf("%d sessions logged, want 3:\n%s", got, log)
	}
	if !strings.Contains(log.String(), "agent handshake refused") {
		t.Errorf("the version-99 host is not in the log:\n%s", log)
	}
}

// waitLog waits for n lines holding s in the log.
func waitLog(t testing.TB, log *testLog, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for strings.Count(log.String(), s) < n {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d lines with %s in the log:\n%s", n, s, log)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestFindPort(t *testing.T) {
	sys := t.TempDir()
	for dir, name := range map[string]string{"vport0p0": "org.qemu.guest_agent.0\n", "vport0p1": "banger.agent\n", "vport0p2": ""} {
		os.Mkdir(sys+"/"+dir, 0o755)
		if name != "" {
			os.WriteFile(sys+"/"+dir+"/name", []byte(name), 0o644)
		}
	}
	if p, err := FindPort(sys, "/dev"); err != nil || p != "/dev/vport0p1" {
		t.Errorf("FindPort: %q %v", p, err)
	}
	os.Remove(sys + "/vport0p1/name")
	if _, err := FindPort(sys, "/dev"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("without the port: %v", err)
	}
	if _, err := FindPort(sys+"/missing", "/dev"); err == nil {
		t.Error("a missing sysfs directory")
	}
}

func TestHasVsockDevice(t *testing.T) {
	sys := t.TempDir()
	os.MkdirAll(sys+"/virtio0", 0o755)
	os.WriteFile(sys+"/virtio0/device", []byte("0x0003\n"), 0o644) // a console
	if HasVsockDevice(sys) {
		t.Error("a console taken for vsock")
	}
	os.MkdirAll(sys+"/virtio1", 0o755)
	os.WriteFile(sys+"/virtio1/device", []byte("0x0013\n"), 0o644)
	if !HasVsockDevice(sys) {
		t.Error("the vsock device not found")
	}
	if HasVsockDevice(sys + "/none") {
		t.Error("vsock in a missing directory")
	}
}

// portPair is a Port on one end of a socketpair (pollable, as the
// virtio-serial device is) and the other end.
func portPair(t *testing.T) (*Port, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC|syscall.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "port")
	pf := os.NewFile(uintptr(fds[1]), "peer")
	peer, err := net.FileConn(pf)
	pf.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(); peer.Close() })
	// A cap long enough that only readiness can end a wait in time.
	return &Port{f: f, wakeCap: time.Hour}, peer
}

func TestPortWaitReadable(t *testing.T) {
	waited := func(p *Port) chan struct{} {
		done := make(chan struct{})
		go func() { p.WaitReadable(context.Background()); close(done) }()
		return done
	}
	// Data already there: no wait, even once the poller has noted the
	// readiness (the wait's reset drops that note; poll(2) sees the data).
	p, peer := portPair(t)
	peer.Write([]byte("BANGER-AGENT 1\n"))
	time.Sleep(50 * time.Millisecond)
	select {
	case <-waited(p):
	case <-time.After(testTimeout):
		t.Fatal("WaitReadable waits although data is there")
	}
	// Data that arrives later wakes it.
	p, peer = portPair(t)
	done := waited(p)
	time.Sleep(50 * time.Millisecond) // most likely waiting by now; if not, the poll sees the data
	peer.Write([]byte("x"))
	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("WaitReadable missed the data's arrival")
	}
	buf := make([]byte, 1)
	if n, err := p.Read(buf); n != 1 || err != nil {
		t.Errorf("read after the wait: %d %v", n, err)
	}
}
