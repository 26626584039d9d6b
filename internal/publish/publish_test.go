package publish

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/agent/agentd"
	"github.com/banger-dev/banger/internal/testutil"
)

const testTimeout = 30 * time.Second

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Port
	}{
		{"8080:80", Port{"127.0.0.1", 8080, 80, "tcp"}},
		{"127.0.0.1:8080:80/tcp", Port{"127.0.0.1", 8080, 80, "tcp"}},
		{"0.0.0.0:53:53/udp", Port{"0.0.0.0", 53, 53, "udp"}},
		{"[::1]:8080:80", Port{"::1", 8080, 80, "tcp"}},
		{"[::]:1:65535/udp", Port{"::", 1, 65535, "udp"}},
		{"5353:53/udp", Port{"127.0.0.1", 5353, 53, "udp"}},
	} {
		got, err := Parse(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			continue
		}
		if back, err := Parse(got.String()); err != nil || back != got {
			t.Errorf("%q does not round-trip: %+v, %v", got.String(), back, err)
		}
	}
	if s := (Port{"::1", 8080, 80, "tcp"}).String(); s != "[::1]:8080:80/tcp" {
		t.Errorf("String of [::1]: %q", s)
	}
	// Each refusal names the bad part and shows the accepted form.
	for _, tc := range []struct{ in, names string }{
		{"", `""`},
		{"80", `"80"`},
		{"0:80", `host port "0"`},
		{"8080:0", `guest port "0"`},
		{"8080:65536", `guest port "65536"`},
		{"+80:80", `host port "+80"`},
		{" 80:80", `host port " 80"`},
		{"x:80", `host port "x"`},
		{"host:8080:80", `host address "host"`},
		{"300.1.1.1:8080:80", `host address "300.1.1.1"`},
		{"8080:80/sctp", `protocol "sctp"`},
		{"8080:80/TCP", `protocol "TCP"`},
		{"[::1:8080:80", `brackets`},
		{"1:2:3:4", `"1:2:3:4"`},
		{"::1:8080:80", `"::1:8080:80"`},
		{"fe80::1%eth0:1:2", `"fe80::1%eth0:1:2"`},
		{"[fe80::1%eth0]:1:2", `host address "fe80::1%eth0"`},
	} {
		_, err := Parse(tc.in)
		if err == nil {
			t.Errorf("Parse(%q) accepted", tc.in)
			continue
		}
		if !strings.Contains(err.Error(), tc.names) || !strings.Contains(err.Error(), ":GUESTPORT") {
			t.Errorf("Parse(%q): %q does not name %s and show the form", tc.in, err, tc.names)
		}
	}
}

func TestCheck(t *testing.T) {
	p := func(s string) Port {
		q, err := Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return q
	}
	if err := Check([]Port{p("8080:80"), p("8081:80"), p("8080:80/udp"), p("10.0.0.1:8080:80"), p("[::1]:8081:81/udp")}); err != nil {
		t.Errorf("distinct ports refused: %v", err)
	}
	for _, bad := range [][]Port{
		{p("8080:80"), p("8080:81")},
		{p("8081:80"), p("0.0.0.0:8080:80"), p("8080:81")},
		{p("10.0.0.1:53:53/udp"), p("[::]:53:5353/udp")},
	} {
		err := Check(bad)
		if err == nil {
			t.Errorf("%v accepted", bad)
			continue
		}
		if !strings.Contains(err.Error(), bad[len(bad)-1].String()) {
			t.Errorf("%v: %q does not name the second publish", bad, err)
		}
	}
}

// direct dials the stand-in guest server itself: a TCP connection, with
// CloseWrite.
func direct(ctx context.Context, p Port) (io.ReadWriteCloser, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p.GuestPort)))
}

// viaAgent serves a guest agent (agentd) on one end of a socketpair and
// returns the session and a Dialer that opens its streams as bangerd
// does: connect or connect_udp to 127.0.0.1:GUESTPORT, in this namespace.
func viaAgent(t *testing.T) (*agent.Session, Dialer) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		(&agentd.Server{}).ServeConn(ctx, conns[1])
	}()
	s, err := agent.Dial(conns[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		cancel()
		<-served
	})
	return s, func(ctx context.Context, p Port) (io.ReadWriteCloser, error) {
		st, err := s.Open(ctx)
		if err != nil {
			return nil, err
		}
		connect := agent.Connect
		if p.Proto == "udp" {
			connect = agent.ConnectUDP
		}
		if err := connect(ctx, st, p.GuestPort); err != nil {
			st.Close()
			return nil, err
		}
		return st, nil
	}
}

// serveTCP runs handle on each connection to a new listener on 127.0.0.1
// and returns its port.
func serveTCP(t *testing.T, handle func(*net.TCPConn)) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TCP through a direct dialer and through the guest agent (yamux
// streams, whose Close is the half-close): bytes both ways, half-closes
// passed on either way, many connections at once, a failed dial, the end
// of Serve's ctx ending the forwards, Close freeing the port (root tier:
// in a network namespace).
func TestForwardTCP(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	// reverse reads to EOF (the client's half-close), answers the bytes
	// reversed and closes.
	reverse := serveTCP(t, func(c *net.TCPConn) {
		b, _ := io.ReadAll(c)
		for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
			b[i], b[j] = b[j], b[i]
		}
		c.Write(b)
	})
	// banner speaks first and half-closes, then reports what it read.
	heard := make(chan string, 1)
	banner := serveTCP(t, func(c *net.TCPConn) {
		c.Write([]byte("banner\n"))
		c.CloseWrite()
		b, _ := io.ReadAll(c)
		heard <- string(b)
	})
	_, agentDial := viaAgent(t)
	for i, dial := range []Dialer{direct, agentDial} {
		name := []string{"direct", "agent"}[i]
		hostPort := 18500 + 10*i
		l, err := Listen(Port{"127.0.0.1", hostPort, reverse, "tcp"})
		if err != nil {
			t.Fatal(err)
		}
		lb, err := Listen(Port{"127.0.0.1", hostPort + 1, banner, "tcp"})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		served := make(chan struct{}, 2)
		go func() { l.Serve(ctx, dial); served <- struct{}{} }()
		go func() { lb.Serve(ctx, dial); served <- struct{}{} }()
		addr := l.Addr().String()

		var wg sync.WaitGroup
		for i := 0; i < 20; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Error(err)
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(testTimeout))
				msg := bytes.Repeat([]byte("ab"+strconv.Itoa(i)), 50_000)
				go func() { c.Write(msg); c.(*net.TCPConn).CloseWrite() }()
				got, err := io.ReadAll(c)
				if err != nil || len(got) != len(msg) || got[0] != msg[len(msg)-1] || got[len(got)-1] != 'a' {
					t.Errorf("%s: connection %d: %d bytes back of %d, %v", name, i, len(got), len(msg), err)
				}
			}(i)
		}
		wg.Wait()
		if n := l.Connections(); n != 20 {
			t.Errorf("%s: %d connections counted, want 20", name, n)
		}
		waitFor(t, "the forwards to end", func() bool { return l.Active() == 0 })

		// The guest's half-close reaches the client, which still sends.
		c, err := net.Dial("tcp", lb.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(testTimeout))
		if b, err := io.ReadAll(c); err != nil || string(b) != "banner\n" {
			t.Errorf("%s: banner %q, %v", name, b, err)
		}
		c.Write([]byte("after the guest's half-close"))
		c.(*net.TCPConn).CloseWrite()
		select {
		case s := <-heard:
			if s != "after the guest's half-close" {
				t.Errorf("%s: the guest heard %q", name, s)
			}
		case <-time.After(testTimeout):
			t.Fatalf("%s: the guest did not hear the client after its half-close", name)
		}
		c.Close()

		// A forward under way (the guest waits for an EOF that does not
		// come) ends with Serve's ctx, and so does the listener.
		c, err = net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("no EOF"))
		waitFor(t, "the forward to start", func() bool { return l.Active() == 1 })
		cancel()
		c.SetReadDeadline(time.Now().Add(testTimeout))
		if n, err := c.Read(make([]byte, 10)); n != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("%s: a forward after ctx ended: %d bytes, %v", name, n, err)
		}
		c.Close()
		waitFor(t, "the forward to end", func() bool { return l.Active() == 0 })
		<-served
		<-served
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			t.Errorf("%s: the port answers after Serve's ctx ended", name)
		}
	}

	// A failed dial closes the client's connection and is logged.
	l, err := Listen(Port{"127.0.0.1", 18600, 81, "tcp"})
	if err != nil {
		t.Fatal(err)
	}
	logged := make(chan string, 1)
	l.Logf = func(format string, args ...any) { logged <- format }
	go l.Serve(context.Background(), func(context.Context, Port) (io.ReadWriteCloser, error) { return nil, errors.New("no guest") })
	c, err := net.Dial("tcp", "127.0.0.1:18600")
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(testTimeout))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("a failed dial: %d, %v; want EOF", n, err)
	}
	c.Close()
	select {
	case <-logged:
	case <-time.After(testTimeout):
		t.Error("the failed dial was not logged")
	}
	// Close stops accepting and frees the port.
	l.Close()
	if c, err := net.Dial("tcp", "127.0.0.1:18600"); err == nil {
		c.Close()
		t.Error("the port answers after Close")
	}
	if l2, err := Listen(Port{"127.0.0.1", 18600, 81, "tcp"}); err != nil {
		t.Errorf("the port is not free after Close: %v", err)
	} else {
		l2.Close()
	}
}

// UDP through the guest agent's connect_udp: each client its own flow,
// big and small datagrams, answers to the right client, idle flows ended
// on both sides, the bound on flows (root tier: in a network namespace).
func TestForwardUDP(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	echo, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			echo.WriteTo(append([]byte("echo:"), buf[:n]...), from)
		}
	}()
	guestPort := echo.LocalAddr().(*net.UDPAddr).Port
	session, dial := viaAgent(t)

	l, err := Listen(Port{"127.0.0.1", 18700, guestPort, "udp"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.IdleTimeout = 300 * time.Millisecond
	go l.Serve(context.Background(), dial)
	// ask sends msg from c and checks the answer (timeout: no answer
	// expected).
	ask := func(c net.Conn, msg string, timeout time.Duration) bool {
		t.Helper()
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(timeout))
		buf := make([]byte, 65536)
		n, err := c.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return false
		}
		if err != nil || string(buf[:n]) != "echo:"+msg {
			t.Fatalf("%.20s...: answer %.20q..., %v", msg, buf[:n], err)
		}
		return true
	}
	var clients []net.Conn
	for c := 0; c < 3; c++ {
		conn, err := net.Dial("udp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		clients = append(clients, conn)
	}
	for i := 0; i < 3; i++ { // interleaved: each answer to its own client
		for c, conn := range clients {
			if !ask(conn, "client"+strconv.Itoa(c)+"-"+strconv.Itoa(i), testTimeout) {
				t.Fatalf("client %d: no answer", c)
			}
		}
	}
	if !ask(clients[0], strings.Repeat("x", 60000), testTimeout) {
		t.Fatal("no answer to a 60000-byte datagram")
	}
	if n := l.Connections(); n != 3 {
		t.Errorf("%d flows, want 3", n)
	}
	// Idle flows end, the agent's streams with them; a client's next
	// datagram starts a new flow.
	waitFor(t, "idle flows to end", func() bool { return l.Active() == 0 && session.NumStreams() == 0 })
	if !ask(clients[1], "again", testTimeout) {
		t.Fatal("no answer after the idle end")
	}
	if n := l.Connections(); n != 4 {
		t.Errorf("%d flows, want 4", n)
	}

	// At most MaxFlows clients at once: the next one's datagrams are
	// dropped until a flow ends.
	l2, err := Listen(Port{"127.0.0.1", 18701, guestPort, "udp"})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	l2.MaxFlows, l2.IdleTimeout = 2, time.Second
	go l2.Serve(context.Background(), dial)
	for i := range clients {
		conn, err := net.Dial("udp", l2.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		clients[i] = conn
	}
	if !ask(clients[0], "a", testTimeout) || !ask(clients[1], "b", testTimeout) {
		t.Fatal("no answer within MaxFlows")
	}
	if ask(clients[2], "c", 200*time.Millisecond) {
		t.Error("a third flow was served with MaxFlows 2")
	}
	waitFor(t, "the flows to end", func() bool { return l2.Active() == 0 })
	if !ask(clients[2], "c", testTimeout) {
		t.Error("no answer once the flows ended")
	}

	// Close ends the flows and frees the port.
	l2.Close()
	waitFor(t, "the flows to end after Close", func() bool { return l2.Active() == 0 })
	if l3, err := Listen(l2.Port); err != nil {
		t.Errorf("the port is not free after Close: %v", err)
	} else {
		l3.Close()
	}
}

// Listen's errors say what is wrong and what to do: in use, not on this
// host, privileged (root tier: in a network namespace).
func TestListenErrors(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	for _, proto := range []string{"tcp", "udp"} {
		l, err := Listen(Port{"127.0.0.1", 18800, 80, proto})
		if err != nil {
			t.Fatal(err)
		}
		_, err = Listen(Port{"127.0.0.1", 18800, 80, proto})
		l.Close()
		want := "host port 127.0.0.1:18800/" + proto + " is in use (by another process or VM); choose another HOSTPORT"
		if !errors.Is(err, ErrInUse) || !errors.Is(err, syscall.EADDRINUSE) || err.Error() != want {
			t.Errorf("a port in use: %v", err)
		}
		_, err = Listen(Port{"10.99.99.99", 18801, 80, proto})
		want = "host address 10.99.99.99 is not on this host; use 127.0.0.1 or one of this host's addresses"
		if !errors.Is(err, ErrNoAddress) || err.Error() != want {
			t.Errorf("an address not on this host: %v", err)
		}
	}

	// Port 80 as uid 65534 in this namespace, with unprivileged ports
	// starting at 1024 (a new namespace may start them at 0).
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_unprivileged_port_start", []byte("1024"), 0); err != nil {
		t.Fatal(err)
	}
	// A copy of this binary that uid 65534 can run (go test's is in a
	// directory of root's).
	dir := t.TempDir() // TMP/TestName123/001: both made 0700
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "publish.test")
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run", "^TestListenPrivileged$", "-test.v")
	cmd.Env = append(os.Environ(), "BANGER_PUBLISH_CHILD=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestListenPrivileged") {
		t.Errorf("a privileged port as uid 65534: %v\n%s", err, out)
	}
}

// The child of TestListenErrors, as uid 65534 in its namespace.
func TestListenPrivileged(t *testing.T) {
	if os.Getenv("BANGER_PUBLISH_CHILD") == "" {
		t.Skip("run by TestListenErrors")
	}
	if os.Getuid() == 0 {
		t.Fatal("the child runs as root")
	}
	for _, proto := range []string{"tcp", "udp"} {
		_, err := Listen(Port{"127.0.0.1", 80, 80, proto})
		if !errors.Is(err, ErrPrivileged) || !errors.Is(err, syscall.EACCES) || !strings.Contains(err.Error(), "below 1024 need root or CAP_NET_BIND_SERVICE") {
			t.Errorf("port 80/%s unprivileged: %v", proto, err)
		}
	}
	l, err := Listen(Port{"127.0.0.1", 18900, 80, "tcp"})
	if err != nil {
		t.Fatalf("port 18900 unprivileged: %v", err)
	}
	l.Close()
}
