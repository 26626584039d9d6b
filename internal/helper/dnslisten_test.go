package helper

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/testutil"
)

// TestDNSListenNetNS: dns.listen hands over UDP and TCP sockets bound to
// port 53 of a banger bridge's address, and nothing for any other address.
func TestDNSListenNetNS(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	hs := startHelper(t)
	ctx := context.Background()
	if _, err := hs.client.EnsureBridge(ctx, helperapi.BridgeEnsureParams{Name: "bangerdns0", CIDR: "10.231.30.1/24"}); err != nil {
		t.Fatal(err)
	}
	udp, tcp, err := hs.client.DNSListen(ctx, "10.231.30.1")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	defer tcp.Close()
	pc, err := net.FilePacketConn(udp)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ln, err := net.FileListener(tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if pc.LocalAddr().String() != "10.231.30.1:53" || ln.Addr().String() != "10.231.30.1:53" {
		t.Fatalf("bound to %s and %s", pc.LocalAddr(), ln.Addr())
	}
	// The sockets work: a datagram sent to the address arrives.
	c, err := net.Dial("udp", "10.231.30.1:53")
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("ping"))
	buf := make([]byte, 8)
	n, _, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("read %q %v", buf[:n], err)
	}
	c.Close()

	// Not a banger bridge's address (nor loopback, nor any): refused.
	for _, addr := range []string{"10.231.31.1", "127.0.0.1", "0.0.0.0", "10.231.30.1:53", "::1"} {
		_, _, err := hs.client.DNSListen(ctx, addr)
		if !errors.Is(err, rpc.ErrBadRequest) {
			t.Errorf("%s: want bad_request, got %v", addr, err)
		}
	}
	if _, err := hs.client.DeleteBridge(ctx, "bangerdns0"); err != nil {
		t.Fatal(err)
	}
}
