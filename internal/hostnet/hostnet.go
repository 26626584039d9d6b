// Package hostnet tells which IPv4 prefixes the host already uses, in the
// caller's network namespace: every address on every link and every route
// of every routing table (netlink). A banger subnet must overlap none of
// them but what lies on its own bridge: a subnet over the uplink's LAN,
// its gateway, a VPN or a public range would re-route that traffic for the
// whole host. The root helper checks it at every bridge.ensure and
// `banger system install` when it grants a subnet.
package hostnet

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Use is one prefix the host uses.
type Use struct {
	Prefix netip.Prefix
	// Iface is the link it is on ("" when the route names none).
	Iface string
	// What says it: "address 192.168.1.5/24", "route 10.8.0.0/16",
	// "route 10.9.0.0/16 (table 100)".
	What string
}

func (u Use) String() string {
	s := u.What
	if u.Iface != "" {
		s += " on " + u.Iface
	}
	return s
}

// DefaultRouteBits is the longest prefix a route may have and still be a
// default route: 0.0.0.0/0, and the halves or quarters a VPN installs to
// take the default without replacing it (OpenVPN's def1: 0.0.0.0/1 and
// 128.0.0.0/1; WireGuard's AllowedIPs split likewise). Every private
// subnet lies inside such a route, so they say nothing about which subnet
// is in use; a route of /8 or longer does.
const DefaultRouteBits = 7

// IsDefaultRoute reports whether a route to a prefix of that many bits is
// a default route (see DefaultRouteBits).
func IsDefaultRoute(bits int) bool { return bits <= DefaultRouteBits }

// List returns the IPv4 addresses and routes of the current network
// namespace. Default routes (IsDefaultRoute: shorter than /8) are left
// out: every subnet lies inside them.
func List() ([]Use, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	name := map[int]string{}
	for _, l := range links {
		name[l.Attrs().Index] = l.Attrs().Name
	}
	var out []Use
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing addresses: %w", err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		out = append(out, Use{Prefix: netip.PrefixFrom(ip, ones).Masked(), Iface: name[a.LinkIndex], What: "address " + netip.PrefixFrom(ip, ones).String()})
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(r.Dst.IP.To4())
		if !ok {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		if IsDefaultRoute(ones) {
			continue
		}
		p := netip.PrefixFrom(ip, ones).Masked()
		what := "route " + p.String()
		if r.Table != unix.RT_TABLE_MAIN {
			what += fmt.Sprintf(" (table %d)", r.Table)
		}
		out = append(out, Use{Prefix: p, Iface: name[r.LinkIndex], What: what})
	}
	return out, nil
}

// Clashes lists the uses that overlap subnet, leaving out those on the
// link named own (the bridge that carries subnet already).
func Clashes(uses []Use, subnet netip.Prefix, own string) []Use {
	var out []Use
	for _, u := range uses {
		if own != "" && u.Iface == own {
			continue
		}
		if u.Prefix.Overlaps(subnet) {
			out = append(out, u)
		}
	}
	return out
}
