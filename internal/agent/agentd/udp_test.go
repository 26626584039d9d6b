package agentd

import (
	"bytes"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/testutil"
)

// The datagram framing: 2 bytes of length then the bytes, both sizes'
// limits, and a stream cut short.
func TestDatagramFraming(t *testing.T) {
	var b bytes.Buffer
	big := bytes.Repeat([]byte{7}, agent.MaxDatagram)
	for _, d := range [][]byte{[]byte("hi"), {}, big} {
		if err := agent.WriteDatagram(&b, d); err != nil {
			t.Fatal(err)
		}
	}
	if got := b.Bytes()[:4]; !bytes.Equal(got, []byte{0, 2, 'h', 'i'}) {
		t.Errorf("framing %q", got)
	}
	buf := make([]byte, agent.MaxDatagram)
	for _, want := range [][]byte{[]byte("hi"), {}, big} {
		n, err := agent.ReadDatagram(&b, buf)
		if err != nil || !bytes.Equal(buf[:n], want) {
			t.Fatalf("read %d bytes, %v; want %d", n, err, len(want))
		}
	}
	if err := agent.WriteDatagram(&b, make([]byte, agent.MaxDatagram+1)); err == nil || b.Len() != 0 {
		t.Errorf("a datagram over MaxDatagram: %v, %d bytes written", err, b.Len())
	}
	agent.WriteDatagram(&b, []byte("too long"))
	if _, err := agent.ReadDatagram(&b, make([]byte, 3)); err == nil {
		t.Error("a datagram longer than the buffer was read")
	}
	if _, err := agent.ReadDatagram(bytes.NewReader([]byte{0, 5, 'a'}), buf); err == nil {
		t.Error("a cut datagram was read")
	}
}

// connect_udp relays framed datagrams to a UDP server on 127.0.0.1 and its
// answers back, datagram by datagram; a refused datagram does not end the
// relay; the host's close ends the op (root tier: in a network
// namespace).
func TestConnectUDP(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	// The port is free at first: the first datagram is refused.
	probe, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := probe.LocalAddr().(*net.UDPAddr).Port
	probe.Close()

	srv, log := newServer(t)
	s := startSession(t, srv)
	st := stream(t, s)
	if err := agent.ConnectUDP(testCtx(t), st, port); err != nil {
		t.Fatal(err)
	}
	if err := agent.WriteDatagram(st, []byte("nobody hears this")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the ICMP refusal arrives

	pc, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
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
	buf := make([]byte, agent.MaxDatagram)
	for _, msg := range []string{"hello", "x", "a longer datagram of some bytes", "b" + strings.Repeat("y", 60000)} {
		if err := agent.WriteDatagram(st, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		st.SetReadDeadline(time.Now().Add(testTimeout))
		n, err := agent.ReadDatagram(st, buf)
		want := string(msg[0]-('a'-'A')) + msg[1:]
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("answer to %.20q: %.20q (%d bytes), %v; want %.20q", msg, buf[:n], n, err, want)
		}
	}
	// The host's close (a half-close) ends the op: the agent closes its
	// side and logs it.
	st.Close()
	st.SetReadDeadline(time.Now().Add(testTimeout))
	if n, err := agent.ReadDatagram(st, buf); err == nil {
		t.Errorf("a datagram of %d bytes after the host's close", n)
	}
	waitLog(t, log, `"msg":"agent op completed","op":"connect_udp"`, 1)

	// A bad port is refused, never relayed.
	if err := agent.ConnectUDP(testCtx(t), stream(t, s), 0); err == nil || !strings.Contains(err.Error(), "connect_udp: port 0") {
		t.Fatalf("port 0: %v", err)
	}
}
