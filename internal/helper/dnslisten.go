package helper

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

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
		return res, bindError("udp", want, err)
	}
	defer pc.Close()
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return res, bindError("tcp", want, err)
	}
	defer ln.Close()
	uf, err := pc.(*net.UDPConn).File()
	if err != nil {
		return res, fmt.Errorf("duplicating the udp socket on %s: %w", addr, err)
	}
	tf, err := ln.(*net.TCPListener).File()
	if err != nil {
		uf.Close()
		return res, fmt.Errorf("duplicating the tcp socket on %s: %w", addr, err)
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

// bindError says why port 53 on addr could not be bound; when it is taken,
// by what (portHolders), or how to find out.
func bindError(proto string, addr netip.Addr, err error) error {
	if !errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("binding %s %s:53: %w", proto, addr, err)
	}
	hint := "find what holds it: sudo ss -l" + map[string]string{"udp": "u", "tcp": "t"}[proto] + "np 'sport = :53'; stop it or make it listen elsewhere (dnsmasq: bind-interfaces), or set network.dns = false for this bangerd"
	by := ""
	if held := portHolders(proto, addr, 53); len(held) > 0 {
		by = " by " + strings.Join(held, ", ")
		hint = "stop it or make it listen elsewhere (dnsmasq: bind-interfaces), or set network.dns = false for this bangerd"
	}
	return rpc.WithHint(fmt.Errorf("%s port 53 on %s is taken%s, so banger's DNS for the bridge cannot listen there: %w", proto, addr, by, rpc.ErrConflict), hint)
}

// portHolders names the sockets bound to port on addr, or on every
// address (IPv4 0.0.0.0, IPv6 ::), from /proc/net/<proto>{,6}, with the
// process holding each when /proc lets the helper see it ("dnsmasq (pid
// 812) on 0.0.0.0:53"; "a socket on 0.0.0.0:53" when it does not: under
// its unit the helper sees only its own processes). Best effort: nil when
// nothing is found.
func portHolders(proto string, addr netip.Addr, port uint16) []string {
	var out []string
	for _, table := range []string{proto, proto + "6"} {
		raw, err := os.ReadFile(filepath.Join("/proc/net", table))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(raw), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 {
				continue
			}
			local, ok := parseProcAddr(f[1])
			// A TCP socket that holds the port listens (state 0A); any
			// bound UDP socket does.
			if !ok || local.Port() != port || proto == "tcp" && f[3] != "0A" {
				continue
			}
			if a := local.Addr().Unmap(); a != addr && !a.IsUnspecified() {
				continue
			}
			who := "a socket"
			if p := socketOwner(f[9]); p != "" {
				who = p
			}
			out = append(out, who+" on "+local.String())
		}
	}
	return out
}

// parseProcAddr reads /proc/net's ADDR:PORT (hex, the address in host byte
// order, as the kernel prints it on a little-endian host).
func parseProcAddr(s string) (netip.AddrPort, bool) {
	h, p, ok := strings.Cut(s, ":")
	port, err := strconv.ParseUint(p, 16, 16)
	b, herr := hex.DecodeString(h)
	if !ok || err != nil || herr != nil || (len(b) != 4 && len(b) != 16) {
		return netip.AddrPort{}, false
	}
	for i := 0; i+4 <= len(b); i += 4 { // each 32-bit word is little-endian
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	a, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(a, uint16(port)), true
}

// socketOwner names the process holding socket inode ino ("dnsmasq (pid
// 812)"), or "" when none is visible.
func socketOwner(ino string) string {
	if ino == "" || ino == "0" {
		return ""
	}
	want := "socket:[" + ino + "]"
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if p.Name()[0] < '0' || p.Name()[0] > '9' {
			continue
		}
		fds, err := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if l, err := os.Readlink(filepath.Join("/proc", p.Name(), "fd", fd.Name())); err == nil && l == want {
				comm, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "comm"))
				return fmt.Sprintf("%s (pid %s)", strings.TrimSpace(string(comm)), p.Name())
			}
		}
	}
	return ""
}
