package agentd

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/testutil"
)

// connect to a TCP server on 127.0.0.1, bytes both ways and half-closes
// passed on in both directions (root tier: in a network namespace).
func TestConnect(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	// The server reads everything until the client's half-close, then
	// answers with what it got, reversed, and closes.
	served := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		got, err := io.ReadAll(c)
		if err != nil {
			served <- err
			return
		}
		for i, j := 0, len(got)-1; i < j; i, j = i+1, j-1 {
			got[i], got[j] = got[j], got[i]
		}
		_, err = c.Write(got)
		served <- err
	}()

	srv, _ := newServer(t)
	s := startSession(t, srv)
	st := stream(t, s)
	if err := agent.Connect(testCtx(t), st, port); err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("0123456789"), 100_000)
	if _, err := st.Write(msg); err != nil {
		t.Fatal(err)
	}
	st.Close() // yamux: a half-close; the server sees EOF
	st.SetReadDeadline(time.Now().Add(testTimeout))
	back, err := io.ReadAll(st)
	if err != nil {
		t.Fatal(err)
	}
	if len(back) != len(msg) || back[0] != '9' || back[len(back)-1] != '0' {
		t.Errorf("got %d bytes back", len(back))
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}

	// The other way round: the server speaks first and half-closes; the
	// host still sends afterwards.
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	got := make(chan string, 1)
	go func() {
		c, err := l2.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer c.Close()
		c.Write([]byte("banner\n"))
		c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(c)
		got <- string(b)
	}()
	st2 := stream(t, s)
	if err := agent.Connect(testCtx(t), st2, l2.Addr().(*net.TCPAddr).Port); err != nil {
		t.Fatal(err)
	}
	st2.SetReadDeadline(time.Now().Add(testTimeout))
	banner, err := io.ReadAll(st2) // EOF: the server's half-close
	if err != nil || string(banner) != "banner\n" {
		t.Fatalf("banner %q %v", banner, err)
	}
	st2.Write([]byte("after the server's half-close"))
	st2.Close()
	select {
	case s := <-got:
		if s != "after the server's half-close" {
			t.Errorf("server got %q", s)
		}
	case <-time.After(testTimeout):
		t.Fatal("the server did not get the host's bytes")
	}

	// Nothing listens: not_found.
	l3, _ := net.Listen("tcp", "127.0.0.1:0")
	free := l3.Addr().(*net.TCPAddr).Port
	l3.Close()
	err = agent.Connect(testCtx(t), stream(t, s), free)
	if !errors.Is(err, rpc.ErrNotFound) {
		t.Errorf("connect to a free port %s: %v", strconv.Itoa(free), err)
	}
}
