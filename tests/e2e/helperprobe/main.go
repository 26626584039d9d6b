// Command helperprobe exercises a banger-helper that systemd runs from the
// shipped unit, inside a guest (tests/e2e TestHelperUnitUnderSystemd):
// with every hardening option of the unit in force, each method must still
// work for root, and for a granted user (run it again through setpriv as
// that user, with -user). It prints one line per step, "ok STEP" or
// "FAIL STEP: error", and exits 1 on any failure.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/helperapi"
)

func main() {
	sock := flag.String("socket", helperapi.DefaultSocket, "the helper's socket")
	user := flag.Bool("user", false, "act as a granted user (its grant from helper.version)")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := helperapi.NewClient(*sock)
	failed := false
	step := func(name string, err error) {
		if err != nil {
			failed = true
			fmt.Printf("FAIL %s: %v\n", name, err)
			return
		}
		fmt.Printf("ok %s\n", name)
	}
	v, err := c.Version(ctx)
	step("helper.version", err)
	if err != nil {
		os.Exit(1)
	}
	bridge, gw, subnet, tap := "banger0", "10.231.99.1/24", "10.231.99.0/24", "tap-probe"
	if *user {
		if v.Grant == nil {
			step("grant", fmt.Errorf("no grant for uid %d", v.UID))
			os.Exit(1)
		}
		g := *v.Grant
		bridge, gw, subnet, tap = g.Bridge(), g.Gateway(), g.Subnet, g.TapPrefix()+"probe"
	}
	_, err = c.EnsureBridge(ctx, helperapi.BridgeEnsureParams{Name: bridge, CIDR: gw})
	step("bridge.ensure", err)
	step("ipv6 off on the bridge", sysctl("/proc/sys/net/ipv6/conf/"+bridge+"/disable_ipv6", "1"))
	_, err = c.EnsureNAT(ctx, helperapi.NATEnsureParams{Bridge: bridge, Subnet: subnet})
	step("nat.ensure", err)
	step("forwarding on the bridge", sysctl("/proc/sys/net/ipv4/conf/"+bridge+"/forwarding", "1"))
	_, err = c.CreateTap(ctx, helperapi.TapCreateParams{Name: tap, Bridge: bridge})
	step("tap.create", err)
	f, _, err := c.OpenTap(ctx, tap)
	step("tap.open", err)
	if err == nil {
		f.Close()
	}
	udp, tcp, err := c.DNSListen(ctx, strings.Split(gw, "/")[0])
	step("dns.listen", err)
	if err == nil {
		pc, err := net.FilePacketConn(udp)
		if err == nil {
			err = checkAddr(pc.LocalAddr().String(), strings.Split(gw, "/")[0]+":53")
			pc.Close()
		}
		step("dns socket bound", err)
		udp.Close()
		tcp.Close()
	}
	_, err = c.DeleteTap(ctx, tap)
	step("tap.delete", err)
	_, err = c.DeleteNAT(ctx, bridge)
	step("nat.delete", err)
	_, err = c.DeleteBridge(ctx, bridge)
	step("bridge.delete", err)
	if failed {
		os.Exit(1)
	}
}

func sysctl(path, want string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if got := strings.TrimSpace(string(raw)); got != want {
		return fmt.Errorf("%s = %s, want %s", path, got, want)
	}
	return nil
}

func checkAddr(got, want string) error {
	if got != want {
		return fmt.Errorf("bound to %s, want %s", got, want)
	}
	return nil
}
