package agentd

import (
	"net"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/testutil"
)

// connect_udp relays framed datagrams to a UDP server on 127.0.0.1 and its
// answers back, datagram by datagram (root tier: in a network namespace).
func TestConnectUDP(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() { // echo, upper-cased first byte
		buf := make([]byte, 70000)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n > 0 {
				buf[0] -= 'a' - 'A'
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	srv, _ := newServer(t)
	s := startSession(t, srv)
	st := stream(t, s)
	if err := agent.ConnectUDP(testCtx(t), st, pc.LocalAddr().(*net.UDPAddr).Port); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, agent.MaxDatagram)
	for _, msg := range []string{"hello", "x", "a longer datagram of some bytes"} {
		if err := agent.WriteDatagram(st, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		st.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := agent.ReadDatagram(st, buf)
		want := string(msg[0]-('a'-'A')) + msg[1:]
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("answer to %q: %q, %v; want %q", msg, buf[:n], err, want)
		}
	}
	// An old agent (or a bad port) refuses, it never falls back to TCP.
	st2 := stream(t, s)
	if err := agent.ConnectUDP(testCtx(t), st2, 0); err == nil {
		t.Fatal("port 0 accepted")
	}
}
