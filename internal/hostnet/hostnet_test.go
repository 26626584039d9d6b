package hostnet

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/banger-dev/banger/internal/testutil"
)

func TestClashes(t *testing.T) {
	uses := []Use{
		{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Iface: "wg0", What: "route 10.0.0.0/8"},
		{Prefix: netip.MustParsePrefix("172.30.77.0/24"), Iface: "banger0", What: "address 172.30.77.1/24"},
		{Prefix: netip.MustParsePrefix("192.168.1.0/24"), Iface: "eth0", What: "address 192.168.1.5/24"},
	}
	if c := Clashes(uses, netip.MustParsePrefix("172.30.77.0/24"), "banger0"); len(c) != 0 {
		t.Errorf("the bridge's own subnet clashes: %v", c)
	}
	if c := Clashes(uses, netip.MustParsePrefix("172.30.77.0/24"), "banger1"); len(c) != 1 {
		t.Errorf("another bridge's subnet does not clash: %v", c)
	}
	if c := Clashes(uses, netip.MustParsePrefix("10.77.0.0/24"), "banger0"); len(c) != 1 || c[0].String() != "route 10.0.0.0/8 on wg0" {
		t.Errorf("a VPN's route: %v", c)
	}
	// The LAN's gateway as a /30: the overlap with the LAN's subnet.
	if c := Clashes(uses, netip.MustParsePrefix("192.168.1.0/30"), "banger0"); len(c) != 1 || c[0].Iface != "eth0" {
		t.Errorf("the LAN: %v", c)
	}
}

// List sees addresses and routes of every table, and never a default route.
func TestListNetNS(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "lan0"}, PeerName: "lan0peer"}); err != nil {
		t.Fatal(err)
	}
	l, _ := netlink.LinkByName("lan0")
	a, _ := netlink.ParseAddr("192.168.77.2/24")
	if err := netlink.AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	dst, _ := netlink.ParseIPNet("10.9.0.0/16")
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Table: 100}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP("192.168.77.1")}); err != nil {
		t.Fatal(err)
	}
	// A VPN's split default (OpenVPN's def1), and a /8 that is not one.
	for _, cidr := range []string{"0.0.0.0/1", "128.0.0.0/1", "10.0.0.0/8"} {
		dst, _ := netlink.ParseIPNet(cidr)
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Gw: net.ParseIP("192.168.77.1")}); err != nil {
			t.Fatalf("route %s: %v", cidr, err)
		}
	}
	uses, err := List()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"address 192.168.77.2/24 on lan0": false, "route 192.168.77.0/24 on lan0": false, "route 10.9.0.0/16 (table 100) on lan0": false,
		"route 10.0.0.0/8 on lan0": false}
	for _, u := range uses {
		if _, ok := want[u.String()]; ok {
			want[u.String()] = true
		}
		if u.Prefix.Bits() < 8 {
			t.Errorf("a default route is listed: %v", u)
		}
	}
	for w, seen := range want {
		if !seen {
			t.Errorf("List lacks %q: %v", w, uses)
		}
	}
	// So a split default clashes with no private subnet; the /8 with its own.
	for subnet, clashes := range map[string]int{"172.30.78.0/24": 0, "192.168.200.0/24": 0, "10.231.1.0/24": 1} {
		if c := Clashes(uses, netip.MustParsePrefix(subnet), "banger1"); len(c) != clashes {
			t.Errorf("%s clashes with %v, want %d", subnet, c, clashes)
		}
	}
}

func TestIsDefaultRoute(t *testing.T) {
	for bits, want := range map[int]bool{0: true, 1: true, 2: true, 7: true, 8: false, 16: false, 32: false} {
		if got := IsDefaultRoute(bits); got != want {
			t.Errorf("IsDefaultRoute(%d) = %v", bits, got)
		}
	}
}
