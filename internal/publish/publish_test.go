package publish

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/testutil"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Port
	}{
		{"8080:80", Port{"127.0.0.1", 8080, 80, "tcp"}},
		{"127.0.0.1:8080:80/tcp", Port{"127.0.0.1", 8080, 80, "tcp"}},
		{"0.0.0.0:53:53/udp", Port{"0.0.0.0", 53, 53, "udp"}},
		{"[::1]:8080:80", Port{"::1", 8080, 80, "tcp"}},
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
	for _, bad := range []string{"", "80", "0:80", "8080:0", "8080:65536", "x:80", "host:8080:80", "8080:80/sctp", "[::1:8080:80", "1:2:3:4", "fe80::1%eth0:1:2"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

func TestCheck(t *testing.T) {
	p := func(s string) Port { q, _ := Parse(s); return q }
	if err := Check([]Port{p("8080:80"), p("8081:80"), p("8080:80/udp"), p("10.0.0.1:8080:80")}); err != nil {
		t.Errorf("distinct ports refused: %v", err)
	}
	for _, bad := range [][]Port{{p("8080:80"), p("8080:81")}, {p("0.0.0.0:8080:80"), p("8080:81")}} {
		if err := Check(bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

// direct dials the stand-in guest server itself (the agent's part is
// tested in package agentd).
func direct(addr string) Dialer {
	return func(ctx context.Context, p Port) (io.ReadWriteCloser, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

// TCP: bytes both ways, half-close passed on, many connections at once,
// Close frees the port (root tier: in a network namespace).
func TestForwardTCP(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	srv, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() { // reads to EOF, answers the bytes reversed
		for {
			c, err := srv.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
					b[i], b[j] = b[j], b[i]
				}
				c.Write(b)
			}()
		}
	}()
	l, err := Listen(Port{"127.0.0.1", 18500, 80, "tcp"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go l.Serve(ctx, direct(srv.Addr().String()))
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := net.Dial("tcp", "127.0.0.1:18500")
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			msg := bytes.Repeat([]byte("ab"+strconv.Itoa(i)), 50_000)
			go func() { c.Write(msg); c.(*net.TCPConn).CloseWrite() }()
			got, err := io.ReadAll(c)
			if err != nil || len(got) != len(msg) || got[0] != msg[len(msg)-1] {
				t.Errorf("connection %d: %d bytes, %v", i, len(got), err)
			}
		}(i)
	}
	wg.Wait()
	if n := l.Connections(); n != 20 {
		t.Errorf("%d connections counted, want 20", n)
	}
	// A failed dial closes the client's connection.
	l2, err := Listen(Port{"127.0.0.1", 18501, 81, "tcp"})
	if err != nil {
		t.Fatal(err)
	}
	go l2.Serve(ctx, func(context.Context, Port) (io.ReadWriteCloser, error) { return nil, errors.New("no guest") })
	c, _ := net.Dial("tcp", "127.0.0.1:18501")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("a failed dial: %d, %v; want EOF", n, err)
	}
	c.Close()
	l2.Close()
	l.Close()
	if c, err := net.Dial("tcp", "127.0.0.1:18500"); err == nil {
		c.Close()
		t.Error("the port answers after Close")
	}
	if l3, err := Listen(Port{"127.0.0.1", 18500, 80, "tcp"}); err != nil {
		t.Errorf("the port is not free after Close: %v", err)
	} else {
		l3.Close()
	}
}

// Listen's errors say what is wrong: in use, not on this host, privileged.
func TestListenErrors(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	busy, err := net.Listen("tcp", "127.0.0.1:18600")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if _, err := Listen(Port{"127.0.0.1", 18600, 80, "tcp"}); !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "in use") {
		t.Errorf("a port in use: %v", err)
	}
	if _, err := Listen(Port{"10.99.99.99", 18601, 80, "tcp"}); !errors.Is(err, ErrNoAddress) {
		t.Errorf("an address not on this host: %v", err)
	}
	if os.Getenv("BANGER_PUBLISH_CHILD") == "" {
		// Port 80 as uid 65534 in this namespace, with unprivileged ports
		// starting at 1024.
		os.WriteFile("/proc/sys/net/ipv4/ip_unprivileged_port_start", []byte("1024"), 0)
		// A copy of this binary uid 65534 can run (go test's is root's).
		dir, err := os.MkdirTemp("", "banger-publish-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		os.Chmod(dir, 0o755)
		self, _ := os.Executable()
		data, _ := os.ReadFile(self)
		exe := dir + "/publish.test"
		os.WriteFile(exe, data, 0o755)
		cmd := exec.Command(exe, "-test.run", "^TestListenPrivileged$", "-test.v")
		cmd.Env = append(os.Environ(), "BANGER_PUBLISH_CHILD=1")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "PASS") {
			t.Errorf("a privileged port as uid 65534: %v\n%s", err, out)
		}
	}
}

// The child of TestListenErrors, as uid 65534 in its namespace.
func TestListenPrivileged(t *testing.T) {
	if os.Getenv("BANGER_PUBLISH_CHILD") == "" {
		t.Skip("run by TestListenErrors")
	}
	if _, err := Listen(Port{"127.0.0.1", 80, 80, "tcp"}); !errors.Is(err, ErrPrivileged) || !strings.Contains(err.Error(), "below 1024") {
		t.Fatalf("port 80 unprivileged: %v", err)
	}
}

// UDP: each client its own flow, datagrams framed on its stream, answers
// back to the right client (root tier: in a network namespace).
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
	// The far end of each stream speaks the framing to the echo server,
	// as the agent does.
	dial := func(ctx context.Context, p Port) (io.ReadWriteCloser, error) {
		a, b := net.Pipe()
		u, err := net.Dial("udp", echo.LocalAddr().String())
		if err != nil {
			return nil, err
		}
		go func() {
			buf := make([]byte, agent.MaxDatagram)
			for {
				n, err := agent.ReadDatagram(b, buf)
				if err != nil {
					u.Close()
					return
				}
				u.Write(buf[:n])
			}
		}()
		go func() {
			buf := make([]byte, agent.MaxDatagram)
			for {
				n, err := u.Read(buf)
				if err != nil || agent.WriteDatagram(b, buf[:n]) != nil {
					b.Close()
					return
				}
			}
		}()
		return a, nil
	}
	l, err := Listen(Port{"127.0.0.1", 18700, 53, "udp"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go l.Serve(ctx, dial)
	for c := 0; c < 3; c++ {
		conn, err := net.Dial("udp", "127.0.0.1:18700")
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 3; i++ {
			msg := "client" + strconv.Itoa(c) + "-" + strconv.Itoa(i)
			conn.Write([]byte(msg))
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 100)
			n, err := conn.Read(buf)
			if err != nil || string(buf[:n]) != "echo:"+msg {
				t.Fatalf("%s: %q, %v", msg, buf[:n], err)
			}
		}
		conn.Close()
	}
	if n := l.Connections(); n != 3 {
		t.Errorf("%d flows, want 3", n)
	}
}
