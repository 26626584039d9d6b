package agentd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/rpc"
)

// guestLink finds the guest's interface: the one the default route goes
// through, else the only ethernet one.
func guestLink() (netlink.Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing the interfaces: %w", err)
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("listing the routes: %w", err)
	}
	return pickLink(links, routes)
}

// pickLink chooses the guest's interface among links: the one of the
// default route of least metric among routes, else the only ethernet link
// (loopback never).
func pickLink(links []netlink.Link, routes []netlink.Route) (netlink.Link, error) {
	byIndex := map[int]netlink.Link{}
	var ether []netlink.Link
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 || a.EncapType == "loopback" {
			continue
		}
		byIndex[a.Index] = l
		if a.EncapType == "ether" {
			ether = append(ether, l)
		}
	}
	var best netlink.Link
	metric := 0
	for _, r := range routes {
		l, ok := byIndex[r.LinkIndex]
		if !ok || !isDefault(r) {
			continue
		}
		if best == nil || r.Priority < metric {
			best, metric = l, r.Priority
		}
	}
	if best != nil {
		return best, nil
	}
	if len(ether) == 1 {
		return ether[0], nil
	}
	var names []string
	for _, l := range ether {
		names = append(names, l.Attrs().Name)
	}
	return nil, rpc.Errorf(rpc.ErrNotFound, "no default route in the guest and %d ethernet interfaces (%s): cannot tell which is the VM's",
		len(ether), strings.Join(names, ", "))
}

func isDefault(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0 && r.Dst.IP.IsUnspecified()
}

// flushIPv4 removes the link's IPv4 routes (of every table but local,
// whose routes go with the addresses) and addresses.
func flushIPv4(link netlink.Link) error {
	name := link.Attrs().Name
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{LinkIndex: link.Attrs().Index, Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("listing the routes of %s: %w", name, err)
	}
	for _, r := range routes {
		if r.Table == unix.RT_TABLE_LOCAL {
			continue
		}
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("removing the route %s of %s: %w", r, name, err)
		}
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing the addresses of %s: %w", name, err)
	}
	for _, a := range addrs {
		if err := netlink.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("removing the address %s of %s: %w", a.IPNet, name, err)
		}
	}
	return nil
}

// setMAC gives link the MAC hw and returns it as it now is: link down,
// MAC set, link up. Down first because some drivers refuse a change while
// up (EBUSY), and because the kernel removes the link's IPv6 addresses
// when it goes down and makes the link-local one anew from the new MAC
// when it comes up: a live change would keep the snapshot's fe80:: address,
// which every clone of it shares. A link that has hw already is left as it
// is (identity is idempotent).
func setMAC(link netlink.Link, hw net.HardwareAddr) (netlink.Link, error) {
	name := link.Attrs().Name
	if !bytes.Equal(link.Attrs().HardwareAddr, hw) {
		if err := netlink.LinkSetDown(link); err != nil {
			return nil, fmt.Errorf("bringing %s down to set its MAC: %w", name, err)
		}
		if err := netlink.LinkSetHardwareAddr(link, hw); err != nil {
			netlink.LinkSetUp(link) // as it was, the error is the MAC's
			return nil, fmt.Errorf("setting the MAC of %s to %s: %w", name, hw, err)
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("bringing %s up after setting its MAC: %w", name, err)
		}
	}
	l, err := netlink.LinkByIndex(link.Attrs().Index)
	if err != nil {
		return nil, fmt.Errorf("reading %s back: %w", name, err)
	}
	if !bytes.Equal(l.Attrs().HardwareAddr, hw) {
		return nil, fmt.Errorf("%s has the MAC %s after it was set to %s", name, l.Attrs().HardwareAddr, hw)
	}
	return l, nil
}

// setAddress brings link up with the address p and, if gw is valid, the
// default route through gw.
func setAddress(link netlink.Link, p netip.Prefix, gw netip.Addr) error {
	name := link.Attrs().Name
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("bringing %s up: %w", name, err)
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}
	if err := netlink.AddrAdd(link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding the address %s to %s: %w", p, name, err)
	}
	if gw.IsValid() {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			Gw: gw.AsSlice(), Table: unix.RT_TABLE_MAIN}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("adding the default route via %s on %s: %w", gw, name, err)
		}
	}
	return nil
}

// announce flushes link's neighbours (IPv4 and IPv6: entries of the
// snapshot's network) and sends a gratuitous ARP for each of its IPv4
// addresses, so that the host's neighbour table and the bridge learn the
// link's MAC for them at once. A link without a carrier (a restored VM's:
// bangerd brings the VMM's link up only after identity) would drop the
// packets: then it returns deferred, and the caller sends them when the
// carrier comes (announceWhenUp).
func announce(link netlink.Link) (deferred bool, err error) {
	name, index := link.Attrs().Name, link.Attrs().Index
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		neighs, err := netlink.NeighList(index, family)
		if err != nil {
			return false, fmt.Errorf("listing the neighbours of %s: %w", name, err)
		}
		for _, n := range neighs {
			if err := netlink.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
				return false, fmt.Errorf("removing the neighbour %s of %s: %w", n.IP, name, err)
			}
		}
	}
	l, err := netlink.LinkByIndex(index)
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", name, err)
	}
	if !running(l) {
		return true, nil
	}
	return false, sendGARPs(l)
}

// running reports whether link is up and has a carrier (IFF_RUNNING: the
// kernel transmits on it).
func running(link netlink.Link) bool {
	return link.Attrs().RawFlags&unix.IFF_UP != 0 && link.Attrs().RawFlags&unix.IFF_RUNNING != 0
}

// sendGARPs sends a gratuitous ARP for each IPv4 address of link.
func sendGARPs(link netlink.Link) error {
	name, index := link.Attrs().Name, link.Attrs().Index
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing the addresses of %s: %w", name, err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		if !ok {
			continue
		}
		if err := sendGARP(index, link.Attrs().HardwareAddr, ip); err != nil {
			return fmt.Errorf("announcing %s on %s: %w", ip, name, err)
		}
	}
	return nil
}

// carrierPoll is how often announceWhenUp looks at the link.
const carrierPoll = 5 * time.Millisecond

// announceWhenUp waits (polling; at most timeout, or until stop is
// closed) for link index to be running, then sends its gratuitous ARPs
// with the MAC and addresses it has then. It returns how long it waited.
func announceWhenUp(index int, stop <-chan struct{}, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	tick := time.NewTicker(carrierPoll)
	defer tick.Stop()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		l, err := netlink.LinkByIndex(index)
		if err != nil {
			return time.Since(start), fmt.Errorf("reading link %d: %w", index, err)
		}
		if running(l) {
			return time.Since(start), sendGARPs(l)
		}
		select {
		case <-stop:
			return time.Since(start), errAnnounceSuperseded
		case <-timer.C:
			return time.Since(start), fmt.Errorf("%s had no carrier in %v: no gratuitous ARP sent", l.Attrs().Name, timeout)
		case <-tick.C:
		}
	}
}

var errAnnounceSuperseded = errors.New("superseded by a newer identity")

// htons is v in network byte order, as a host's uint16.
func htons(v uint16) uint16 {
	return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, v))
}

// sendGARP broadcasts a gratuitous ARP request for ip from hw out of
// interface index: "who has ip? tell ip (at hw)", which the kernel's
// arp_notify sends too (arp_send with the address as both sender and
// target), through an AF_PACKET socket that the kernel puts the Ethernet
// header on.
func sendGARP(index int, hw net.HardwareAddr, ip netip.Addr) error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0) // protocol 0: receives nothing
	if err != nil {
		return fmt.Errorf("AF_PACKET socket: %w", err)
	}
	// Closing a packet socket waits for an RCU grace period (the kernel's
	// packet_release calls synchronize_net): 2 to 20 ms that the answer
	// need not wait for.
	defer func() { go unix.Close(fd) }()
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: index, Halen: 6,
		Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
	return unix.Sendto(fd, garp(hw, ip), 0, to)
}

// garp is the ARP payload of a gratuitous request (RFC 5227's
// announcement): Ethernet and IPv4, op 1, sender hw/ip, target
// 00:00:00:00:00:00/ip.
func garp(hw net.HardwareAddr, ip netip.Addr) []byte {
	b := make([]byte, 0, 28)
	b = binary.BigEndian.AppendUint16(b, 1)      // hardware: Ethernet
	b = binary.BigEndian.AppendUint16(b, 0x0800) // protocol: IPv4
	b = append(b, 6, 4)
	b = binary.BigEndian.AppendUint16(b, 1) // request
	a := ip.As4()
	b = append(b, hw...)
	b = append(b, a[:]...)
	b = append(b, make([]byte, 6)...)
	b = append(b, a[:]...)
	return slices.Clip(b)
}
