package helper

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/testutil"
)

// Root tier: real netlink and nftables. Everything that makes a link, an
// address or a rule runs in a network namespace of its own.

func TestBridgeAndTapNetNS(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	hs := startHelper(t)
	ctx := context.Background()

	// bridge.ensure: create, then again (nothing to do), then a new subnet.
	br, err := hs.client.EnsureBridge(ctx, helperapi.BridgeEnsureParams{Name: "banger0", CIDR: "10.77.0.1/24"})
	if err != nil || !br.Created {
		t.Fatalf("ensure bridge: %+v, %v", br, err)
	}
	if again, err := hs.client.EnsureBridge(ctx, helperapi.BridgeEnsureParams{Name: "banger0", CIDR: "10.77.0.1/24"}); err != nil || again.Created || again.Index != br.Index {
		t.Errorf("ensure bridge again: %+v, %v", again, err)
	}
	checkBridge(t, "banger0", "10.77.0.1/24")
	checkIPv6Off(t, "banger0")
	if _, err := hs.client.EnsureBridge(ctx, helperapi.BridgeEnsureParams{Name: "banger0", CIDR: "10.78.0.1/24"}); err != nil {
		t.Fatal(err)
	}
	checkBridge(t, "banger0", "10.78.0.1/24")

	// A user's bridge and TAP: made through the helper as the victim, owned
	// by the victim (the kernel's TAP owner and group, and the records).
	victimC := hs.as(t, victimUID)
	vbr, err := victimC.EnsureBridge(ctx, helperapi.BridgeEnsureParams{Name: victim.Bridge(), CIDR: victim.Gateway()})
	if err != nil || !vbr.Created {
		t.Fatalf("victim's bridge: %+v, %v", vbr, err)
	}
	tp := helperapi.TapCreateParams{Name: victim.TapPrefix() + "pool-0", Bridge: victim.Bridge()}
	tap, err := victimC.CreateTap(ctx, tp)
	if err != nil || !tap.Created {
		t.Fatalf("create tap: %+v, %v", tap, err)
	}
	if again, err := victimC.CreateTap(ctx, tp); err != nil || again.Created || again.Index != tap.Index {
		t.Errorf("create tap again: %+v, %v", again, err)
	}
	l, err := netlink.LinkByName(tp.Name)
	if err != nil {
		t.Fatal(err)
	}
	tt, ok := l.(*netlink.Tuntap)
	switch {
	case !ok:
		t.Errorf("%s is a %s", tp.Name, l.Type())
	case tt.Mode != netlink.TUNTAP_MODE_TAP, tt.Owner != victimUID, tt.Group != victimUID, tt.NonPersist:
		t.Errorf("tap attrs: mode %v owner %d group %d nonpersist %v", tt.Mode, tt.Owner, tt.Group, tt.NonPersist)
	case tt.Flags&netlink.TUNTAP_VNET_HDR == 0, tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0:
		t.Errorf("tap flags %v", tt.Flags)
	}
	if l.Attrs().MasterIndex != vbr.Index || l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("tap master index %d (bridge %d), flags %v", l.Attrs().MasterIndex, vbr.Index, l.Attrs().Flags)
	}
	checkIPv6Off(t, tp.Name)
	state, err := os.ReadFile(hs.stateFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"bridge/banger0": 0`, fmt.Sprintf(`"bridge/banger1": %d`, victimUID), fmt.Sprintf(`"tap/tap1-pool-0": %d`, victimUID)} {
		if !strings.Contains(string(state), want) {
			t.Errorf("state file lacks %s:\n%s", want, state)
		}
	}
	// A tap detached from its bridge is re-attached by the next create.
	if err := netlink.LinkSetNoMaster(l); err != nil {
		t.Fatal(err)
	}
	if _, err := victimC.CreateTap(ctx, tp); err != nil {
		t.Fatal(err)
	}
	if l, _ = netlink.LinkByName(tp.Name); l.Attrs().MasterIndex != vbr.Index {
		t.Errorf("tap not re-attached")
	}

	// Conflicts: a non-tap or non-bridge of the name, no bridge.
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tap-dummy"}, PeerName: "banger9"}); err != nil {
		t.Fatal(err)
	}
	_, err = hs.client.CreateTap(ctx, helperapi.TapCreateParams{Name: "tap-dummy", Bridge: "banger0"})
	wantCode(t, "tap over a veth", err, rpc.CodeConflict)
	_, err = hs.client.DeleteTap(ctx, "tap-dummy")
	wantCode(t, "tap.delete of a veth", err, rpc.CodeConflict)
	_, err = hs.client.EnsureBridge(ctx, helperapi.BridgeEnsureParams{Name: "banger9", CIDR: "10.79.0.1/24"})
	wantCode(t, "bridge over a veth", err, rpc.CodeConflict)
	_, err = hs.client.CreateTap(ctx, helperapi.TapCreateParams{Name: "tap-x", Bridge: "banger5"})
	wantCode(t, "tap on a missing bridge", err, rpc.CodeNotFound)
	// A subnet that overlaps one the host uses (here: the other bridge's).
	_, err = hs.client.EnsureBridge(ctx, helperapi.BridgeEnsureParams{Name: "banger5", CIDR: "10.78.0.129/25"})
	wantCode(t, "overlapping subnet", err, rpc.CodeConflict)
	if err != nil && !strings.Contains(err.Error(), "10.78.0.0/24 on banger0") {
		t.Errorf("the overlap is not named: %v", err)
	}
	// ... or a user's grant.
	_, err = hs.client.EnsureBridge(ctx, helperapi.BridgeEnsureParams{Name: "banger5", CIDR: "10.231.2.1/24"})
	wantCode(t, "root's bridge over the attacker's grant", err, rpc.CodeConflict)

	// Deletes, twice each.
	for _, del := range []func() (helperapi.DeleteResult, error){
		func() (helperapi.DeleteResult, error) { return victimC.DeleteTap(ctx, tp.Name) },
		func() (helperapi.DeleteResult, error) { return victimC.DeleteBridge(ctx, victim.Bridge()) },
		func() (helperapi.DeleteResult, error) { return hs.client.DeleteBridge(ctx, "banger0") },
	} {
		if r, err := del(); err != nil || !r.Deleted {
			t.Errorf("delete: %+v, %v", r, err)
		}
		if r, err := del(); err != nil || r.Deleted {
			t.Errorf("delete again: %+v, %v", r, err)
		}
	}
	for _, n := range []string{tp.Name, "banger0", "banger1"} {
		if _, err := netlink.LinkByName(n); err == nil {
			t.Errorf("%s still exists", n)
		}
	}
	if state, _ := os.ReadFile(hs.stateFile); strings.Contains(string(state), "banger") || strings.Contains(string(state), "tap1") {
		t.Errorf("records of deleted objects remain:\n%s", state)
	}
	// The delete lines name the owner (and who asked).
	deleted := map[string]string{}
	for _, l := range hs.log.lines(t) {
		if strings.HasSuffix(fmt.Sprint(l["msg"]), " deleted") && l["link"] != nil {
			deleted[fmt.Sprint(l["link"])] = fmt.Sprint(l["owner"], " by ", l["caller"])
		}
	}
	for link, want := range map[string]string{tp.Name: fmt.Sprint(victimUID, " by ", victimUID), "banger1": fmt.Sprint(victimUID, " by ", victimUID), "banger0": "0 by 0"} {
		if deleted[link] != want {
			t.Errorf("delete line of %s: owner %q, want %q", link, deleted[link], want)
		}
	}
}

func checkBridge(t *testing.T, name, cidr string) {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if l.Type() != "bridge" || l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("%s: type %s flags %v", name, l.Type(), l.Attrs().Flags)
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != cidr {
		t.Errorf("%s addresses %v, want only %s", name, addrs, cidr)
	}
}

// checkIPv6Off: the link takes no router advertisement, no SLAAC, no
// redirect, and has IPv6 disabled; it has no IPv6 address at all.
func checkIPv6Off(t *testing.T, name string) {
	t.Helper()
	for _, kv := range helperapi.IPv6Off {
		p := filepath.Join("/proc/sys/net/ipv6/conf", name, kv.Key)
		raw, err := os.ReadFile(p)
		if err != nil || strings.TrimSpace(string(raw)) != kv.Value {
			t.Errorf("%s = %q, %v; want %s", p, raw, err, kv.Value)
		}
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if a6, _ := netlink.AddrList(l, netlink.FAMILY_V6); len(a6) != 0 {
		t.Errorf("%s has IPv6 addresses %v", name, a6)
	}
}

func sysctl(t *testing.T, p string) string {
	t.Helper()
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(raw))
}

// addUplink gives the namespace an uplink: up0 (one end of a veth pair;
// this kernel has no dummy links) with 192.168.90.2/24 and the default
// route through 192.168.90.1.
func addUplink(t *testing.T) {
	t.Helper()
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "up0peer"}); err != nil {
		t.Fatal(err)
	}
	if p, err := netlink.LinkByName("up0peer"); err == nil {
		netlink.LinkSetUp(p)
	}
	l, _ := netlink.LinkByName("up0")
	a, _ := netlink.ParseAddr("192.168.90.2/24")
	if err := netlink.AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP("192.168.90.1")}); err != nil {
		t.Fatal(err)
	}
}

func TestNATNetNS(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	addUplink(t)
	hs := startHelper(t)
	ctx := context.Background()
	if _, err := hs.client.EnsureBridge(ctx, helperapi.BridgeEnsureParams{Name: "banger0", CIDR: "10.77.0.1/24"}); err != nil {
		t.Fatal(err)
	}
	// The bridge alone has its table with the filter chains.
	if got := tableChains(t, "banger0"); !slices.Equal(got, []string{"forward", "input"}) {
		t.Errorf("chains after bridge.ensure: %v, want forward and input", got)
	}
	p := helperapi.NATEnsureParams{Subnet: "10.77.0.0/24", Bridge: "banger0"}
	r, err := hs.client.EnsureNAT(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if r.Table != "ip banger0" || !r.Created || !slices.Equal(r.Forwarding, []string{"banger0", "up0"}) {
		t.Errorf("first ensure: %+v (a fresh namespace starts with forwarding off)", r)
	}
	if r, err = hs.client.EnsureNAT(ctx, p); err != nil || r.Created || len(r.Forwarding) != 0 {
		t.Errorf("second ensure: %+v, %v", r, err)
	}
	// Forwarding is the bridge's and the uplink's, never the host's.
	for path, want := range map[string]string{
		"/proc/sys/net/ipv4/ip_forward":              "0",
		"/proc/sys/net/ipv4/conf/all/forwarding":     "0",
		"/proc/sys/net/ipv4/conf/default/forwarding": "0",
		"/proc/sys/net/ipv4/conf/lo/forwarding":      "0",
		"/proc/sys/net/ipv4/conf/banger0/forwarding": "1",
		"/proc/sys/net/ipv4/conf/up0/forwarding":     "1",
	} {
		if got := sysctl(t, path); got != want {
			t.Errorf("%s = %s, want %s", path, got, want)
		}
	}
	p.Egress = "up0"
	if _, err = hs.client.EnsureNAT(ctx, p); err != nil {
		t.Fatal(err)
	}

	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tb := range tables {
		names = append(names, tb.Name)
	}
	slices.Sort(names)
	// The bridge's, and the guard of the uplink whose forwarding the
	// helper switched on (uplink.go).
	if !slices.Equal(names, []string{"banger0", "banger_uplink"}) {
		t.Fatalf("tables %v", names)
	}
	tables = slices.DeleteFunc(tables, func(tb *nftables.Table) bool { return tb.Name != "banger0" })
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	hooks := map[string]string{}
	for _, ch := range chains {
		if ch.Table.Name != "banger0" {
			continue
		}
		hooks[ch.Name] = string(ch.Type)
		if ch.Hooknum == nil {
			t.Errorf("chain %s is not a base chain", ch.Name)
		}
	}
	if hooks["postrouting"] != "nat" || hooks["forward"] != "filter" || hooks["input"] != "filter" || len(hooks) != 3 {
		t.Errorf("chains %v", hooks)
	}
	post, err := c.GetRules(tables[0], &nftables.Chain{Name: "postrouting", Table: tables[0]})
	if err != nil || len(post) != 1 {
		t.Fatalf("postrouting rules %v, %v", post, err)
	}
	var masq bool
	for _, e := range post[0].Exprs {
		if _, ok := e.(*expr.Masq); ok {
			masq = true
		}
	}
	if !masq {
		t.Errorf("postrouting rule lacks masquerade: %#v", post[0].Exprs)
	}
	testutil.RequireTool(t, "nft")
	out, err := exec.Command("nft", "list", "table", "ip", "banger0").CombinedOutput()
	t.Logf("nft list table ip banger0:\n%s", out)
	guard, gerr := exec.Command("nft", "list", "table", "ip", "banger_uplink").CombinedOutput()
	t.Logf("nft list table ip banger_uplink:\n%s", guard)
	if gerr != nil || !strings.Contains(string(guard), `iifname "up0" ct state ! established,related drop`) {
		t.Errorf("the uplink guard is not as it should be (%v)", gerr)
	}
	if state, _ := os.ReadFile(hs.stateFile); !strings.Contains(string(state), `"uplinks": [`) || !strings.Contains(string(state), `"up0"`) {
		t.Errorf("the state file does not record up0 as switched on:\n%s", state)
	}
	for _, want := range []string{
		`iifname "banger0" ip saddr 10.77.0.0/24 ip daddr != 10.77.0.0/24 oifname "up0" masquerade`,
		`iifname "banger0" ip saddr != 10.77.0.0/24 drop`,
		`iifname "banger0" accept`,
		`oifname "banger0" ct state established,related accept`,
		`oifname "banger0" drop`,
		"hook input priority filter",
	} {
		if err != nil || !strings.Contains(string(out), want) {
			t.Errorf("nft does not show %q (%v)", want, err)
		}
	}

	// nat.delete takes the masquerade away, not the filter; bridge.delete
	// takes the table with the bridge.
	for i, want := range []bool{true, false} {
		if r, err := hs.client.DeleteNAT(ctx, "banger0"); err != nil || r.Deleted != want {
			t.Errorf("delete %d: %+v, %v", i, r, err)
		}
	}
	if got := tableChains(t, "banger0"); !slices.Equal(got, []string{"forward", "input"}) {
		t.Errorf("chains after nat.delete: %v, want forward and input", got)
	}
	if r, err := hs.client.DeleteBridge(ctx, "banger0"); err != nil || !r.Deleted {
		t.Fatalf("bridge.delete: %+v, %v", r, err)
	}
	// The uplink's guard stays with its forwarding.
	if err := exec.Command("nft", "delete", "table", "ip", "banger_uplink").Run(); err != nil {
		t.Errorf("no uplink guard after bridge.delete: %v", err)
	}
	if tables, _ := c.ListTablesOfFamily(nftables.TableFamilyIPv4); len(tables) != 0 {
		t.Errorf("tables left after bridge.delete: %v", tables)
	}
	// A table left without its bridge goes with the next bridge.delete.
	lone := c.AddTable(natTable("banger0"))
	c.AddChain(&nftables.Chain{Name: "forward", Table: lone, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if r, err := hs.client.DeleteBridge(ctx, "banger0"); err != nil || !r.Deleted {
		t.Errorf("bridge.delete of a lone table: %+v, %v", r, err)
	}
	if tables, _ := c.ListTablesOfFamily(nftables.TableFamilyIPv4); len(tables) != 0 {
		t.Errorf("lone table left: %v", tables)
	}
}

// tableChains lists the chains of table ip name, sorted.
func tableChains(t *testing.T, name string) []string {
	t.Helper()
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, ch := range chains {
		if ch.Table.Name == name {
			out = append(out, ch.Name)
		}
	}
	slices.Sort(out)
	return out
}

// tap.open: the owner of a TAP (here the victim, whose VMM could not open
// /dev/net/tun by itself) gets a descriptor attached to it; the helper
// never creates a TAP by opening it.
func TestTapOpenNetNS(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	hs := startHelper(t)
	ctx := context.Background()
	vc := hs.as(t, victimUID)
	if _, err := vc.EnsureBridge(ctx, helperapi.BridgeEnsureParams{Name: victim.Bridge(), CIDR: victim.Gateway()}); err != nil {
		t.Fatal(err)
	}
	name := victim.TapPrefix() + "pool-1"
	if _, err := vc.CreateTap(ctx, helperapi.TapCreateParams{Name: name, Bridge: victim.Bridge()}); err != nil {
		t.Fatal(err)
	}
	f, r, err := vc.OpenTap(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	ifr, _ := unix.NewIfreq("")
	if err := unix.IoctlIfreq(int(f.Fd()), unix.TUNGETIFF, ifr); err != nil {
		t.Fatal(err)
	}
	if ifr.Name() != name || ifr.Uint16()&unix.IFF_TAP == 0 || ifr.Uint16()&unix.IFF_VNET_HDR == 0 || !r.VnetHdr {
		t.Errorf("passed fd is on %q flags %#x (%+v)", ifr.Name(), ifr.Uint16(), r)
	}
	// While it is open, the tap is busy.
	_, _, err = vc.OpenTap(ctx, name)
	wantCode(t, "second open", err, rpc.CodeConflict)
	f.Close()

	// It never creates a tap.
	_, _, err = vc.OpenTap(ctx, victim.TapPrefix()+"nosuch")
	wantCode(t, "open of a missing tap", err, rpc.CodeNotFound)
	if _, err := netlink.LinkByName(victim.TapPrefix() + "nosuch"); err == nil {
		t.Errorf("tap.open created a tap")
	}
	if _, err := vc.DeleteTap(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := vc.DeleteBridge(ctx, victim.Bridge()); err != nil {
		t.Fatal(err)
	}
}
