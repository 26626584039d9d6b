package helper

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
)

// dnsListen is dns.listen: it binds UDP and TCP port 53 on the gateway
// address of the caller's bridge (CheckGrant made sure a user asks for its
// own; root may name any banger bridge's address) and hands both sockets
// to the caller. Nothing else is bound for anyone: no other port, no other
// address.
func (h *Helper) dnsListen(ctx context.Context, caller rpc.PeerCred, p helperapi.DNSListenParams) (helperapi.DNSListenResult, error) {
	res := helperapi.DNSListenResult{Address: p.Address}
	want := netip.MustParseAddr(p.Address)
	br, err := h.bridgeWith(want)
	if err != nil {
		return res, err
	}
	if br == "" {
		return res, fmt.Errorf("address %s is on none of banger's bridges: %w", p.Address, rpc.ErrBadRequest)
	}
	if _, err := h.callersBridge(caller, br); err != nil {
		return res, err
	}
	res.Bridge = br
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
	h.log.InfoContext(ctx, "dns sockets passed", "address", p.Address, "bridge", br, "uid", caller.UID)
	return res, nil
}

// bridgeWith names the banger bridge that carries addr ("" if none).
func (h *Helper) bridgeWith(addr netip.Addr) (string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return "", fmt.Errorf("listing links: %w", err)
	}
	for _, l := range links {
		if l.Type() != "bridge" || helperapi.ValidateBridgeName("bridge", l.Attrs().Name) != nil {
			continue
		}
		addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && ip == addr {
				return l.Attrs().Name, nil
			}
		}
	}
	return "", nil
}
