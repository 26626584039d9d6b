package helper

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

	// Port 53 taken (here by this very test, on every address): conflict,
	// naming the port, the address and what holds it.
	for _, c := range []interface{ Close() error }{pc, ln, udp, tcp} {
		c.Close()
	}
	squat, err := net.ListenPacket("udp4", "0.0.0.0:53")
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = hs.client.DNSListen(ctx, "10.231.30.1")
	squat.Close()
	wantCode(t, "port 53 taken", err, rpc.CodeConflict)
	exe, _ := os.Executable()
	comm := filepath.Base(exe)[:min(15, len(filepath.Base(exe)))] // the kernel's comm is 15 bytes
	if err == nil || !strings.Contains(err.Error(), "udp port 53 on 10.231.30.1 is taken by "+comm+" (pid "+strconv.Itoa(os.Getpid())+") on 0.0.0.0:53") || rpc.HintOf(err) == "" {
		t.Errorf("port 53 taken: %v (hint %q)", err, rpc.HintOf(err))
	}

	if _, err := hs.client.DeleteBridge(ctx, "bangerdns0"); err != nil {
		t.Fatal(err)
	}
}

func TestParseProcAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:0035":                         "127.0.0.1:53",
		"00000000:0035":                         "0.0.0.0:53",
		"011EE70A:0035":                         "10.231.30.1:53",
		"00000000000000000000000000000000:0035": "[::]:53",
		"00000000000000000000000001000000:1F90": "[::1]:8080",
	} {
		if got, ok := parseProcAddr(in); !ok || got.String() != want {
			t.Errorf("parseProcAddr(%s) = %v, %v; want %s", in, got, ok, want)
		}
	}
	if _, ok := parseProcAddr("zz:0035"); ok {
		t.Error("garbage accepted")
	}
}
