package helper

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
)

// dnsListen is dns.listen: it binds UDP and TCP port 53 on an address that
// one of banger's bridges carries, and hands both sockets to the caller.
// Nothing else is bound for anyone: no other port, no other address.
func (h *Helper) dnsListen(ctx context.Context, _ rpc.PeerCred, p helperapi.DNSListenParams) (helperapi.DNSListenResult, error) {
	res := helperapi.DNSListenResult{Address: p.Address}
	want := netip.MustParseAddr(p.Address)
	links, err := netlink.LinkList()
	if err != nil {
		return res, fmt.Errorf("listing links: %w", err)
	}
	for _, l := range links {
		name := l.Attrs().Name
		if !strings.HasPrefix(name, helperapi.BridgePrefix) || l.Type() != "bridge" {
			continue
		}
		addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && ip == want {
				res.Bridge = name
			}
		}
	}
	if res.Bridge == "" {
		return res, fmt.Errorf("address %s is on none of banger's bridges: %w", p.Address, rpc.ErrBadRequest)
	}
	addr := net.JoinHostPort(p.Address, "53")
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		return res, fmt.Errorf("binding udp %s: %w", addr, err)
	}
	defer pc.Close()
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return res, fmt.Errorf("binding tcp %s: %w", addr, err)
	}
	defer ln.Close()
	uf, err := pc.(*net.UDPConn).File()
	if err != nil {
		return res, err
	}
	tf, err := ln.(*net.TCPListener).File()
	if err != nil {
		uf.Close()
		return res, err
	}
	if err := rpc.AttachFiles(ctx, uf, tf); err != nil {
		uf.Close()
		tf.Close()
		return res, err
	}
	return res, nil
}
