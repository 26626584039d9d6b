package helper

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/rpc"
)

// NAT lives in an nftables table of banger's own per bridge, `ip <bridge>`
// (for example `ip banger1`), written through netlink (google/nftables). It
// carries banger's traffic and nothing else:
//
//	table ip banger1 {
//	    chain postrouting {
//	        type nat hook postrouting priority srcnat; policy accept;
//	        iifname "banger1" ip saddr 172.30.78.0/24 ip daddr != 172.30.78.0/24 [oifname EGRESS] masquerade
//	    }
//	    chain forward {
//	        type filter hook forward priority filter; policy accept;
//	        iifname "banger1" ip saddr != 172.30.78.0/24 drop
//	        iifname "banger1" accept
//	        oifname "banger1" ct state established,related accept
//	        oifname "banger1" drop
//	    }
//	    chain input {
//	        type filter hook input priority filter; policy accept;
//	        iifname "banger1" ip saddr != 172.30.78.0/24 drop
//	    }
//	}
//
// So the host masquerades only what comes from the bridge with a source in
// its subnet; a guest that forges its source address reaches neither the
// host nor anything beyond it; nothing reaches the guests from outside but
// replies (not the LAN, not another user's guests). One table per bridge
// means two users' networks never touch each other's rules, and deleting
// is deleting the table.
//
// Forwarding is switched on per interface, never host-wide
// (net.ipv4.ip_forward stays as it was): on the bridge, and on the uplinks
// the guests' traffic leaves by (Egress, or the interfaces of the default
// routes), because the kernel decides whether to forward a packet by the
// interface it came in on, and the replies come in on the uplink.

// Chain names inside a NAT table.
const (
	natChainPostrouting = "postrouting"
	natChainForward     = "forward"
	natChainInput       = "input"
)

func natTable(bridge string) *nftables.Table {
	return &nftables.Table{Name: bridge, Family: nftables.TableFamilyIPv4}
}

// natEnsure writes the caller's bridge's table afresh in one atomic
// transaction (add, delete, add again: the result is the same whatever was
// there before) and turns forwarding on for the bridge and its uplinks.
func (h *Helper) natEnsure(ctx context.Context, caller rpc.PeerCred, p helperapi.NATEnsureParams) (helperapi.NATResult, error) {
	var res helperapi.NATResult
	subnet := netip.MustParsePrefix(p.Subnet) // validated
	if _, err := h.callersBridge(caller, p.Bridge); err != nil {
		return res, err
	}
	c, err := nftables.New()
	if err != nil {
		return res, fmt.Errorf("nftables: %w", err)
	}
	t := natTable(p.Bridge)
	res.Table = "ip " + t.Name

	// Measure.
	existed, err := tableExists(c, t)
	if err != nil {
		return res, err
	}
	if !existed {
		if err := h.owners.drop(kindNAT, p.Bridge); err != nil {
			return res, err
		}
	} else if err := h.claim(caller, kindNAT, p.Bridge, nil); err != nil {
		return res, err
	}

	// Act.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	chains := map[string]*nftables.Chain{}
	for _, ch := range []struct {
		name string
		typ  nftables.ChainType
		hook *nftables.ChainHook
		prio *nftables.ChainPriority
	}{
		{natChainPostrouting, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource},
		{natChainForward, nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter},
		{natChainInput, nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter},
	} {
		chains[ch.name] = c.AddChain(&nftables.Chain{Name: ch.name, Table: t, Type: ch.typ, Hooknum: ch.hook, Priority: ch.prio})
	}
	rules := natRules(t, chains, subnet, p.Bridge, p.Egress)
	for _, r := range rules {
		c.AddRule(r)
	}
	if err := c.Flush(); err != nil {
		return res, fmt.Errorf("writing nftables table %s: %w", res.Table, err)
	}
	if err := h.owners.set(kindNAT, p.Bridge, caller.UID); err != nil {
		return res, err
	}

	// Verify.
	for name, ch := range chains {
		got, err := c.GetRules(t, ch)
		if err != nil {
			return res, fmt.Errorf("verifying %s chain %s: %w", res.Table, name, err)
		}
		want := 0
		for _, r := range rules {
			if r.Chain == ch {
				want++
			}
		}
		if len(got) != want {
			return res, fmt.Errorf("verifying %s chain %s: %d rules, want %d", res.Table, name, len(got), want)
		}
	}

	// Forwarding for the bridge and the uplinks only.
	ifaces := []string{p.Bridge}
	if p.Egress != "" {
		ifaces = append(ifaces, p.Egress)
	} else {
		up, err := defaultRouteLinks()
		if err != nil {
			return res, err
		}
		ifaces = append(ifaces, up...)
	}
	for _, i := range ifaces {
		changed, err := enableForwarding(i)
		if err != nil {
			return res, err
		}
		if changed {
			res.Forwarding = append(res.Forwarding, i)
		}
	}
	res.Created = !existed
	h.log.InfoContext(ctx, "nat ensured", "table", res.Table, "subnet", p.Subnet, "egress", p.Egress,
		"created", res.Created, "forwarding_enabled", res.Forwarding, "owner", caller.UID)
	return res, nil
}

// natRules builds the table's rules.
func natRules(t *nftables.Table, chains map[string]*nftables.Chain, subnet netip.Prefix, bridge, egress string) []*nftables.Rule {
	mask := netipMask(subnet)
	network := subnet.Masked().Addr().AsSlice()
	addrMatch := func(offset uint32, op expr.CmpOp) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
			&expr.Cmp{Op: op, Register: 1, Data: network},
		}
	}
	const saddr, daddr = 12, 16
	ifMatch := func(key expr.MetaKey, name string) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: key, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(name)},
		}
	}
	fromBridge := ifMatch(expr.MetaKeyIIFNAME, bridge)
	toBridge := ifMatch(expr.MetaKeyOIFNAME, bridge)
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	drop := &expr.Verdict{Kind: expr.VerdictDrop}

	// iifname BRIDGE ip saddr SUBNET ip daddr != SUBNET [oifname EGRESS] masquerade
	masq := slices.Concat(fromBridge, addrMatch(saddr, expr.CmpOpEq), addrMatch(daddr, expr.CmpOpNeq))
	if egress != "" {
		masq = append(masq, ifMatch(expr.MetaKeyOIFNAME, egress)...)
	}
	masq = append(masq, &expr.Masq{})

	// iifname BRIDGE ip saddr != SUBNET drop
	spoofed := func() []expr.Any {
		return append(slices.Concat(fromBridge, addrMatch(saddr, expr.CmpOpNeq)), drop)
	}

	// oifname BRIDGE ct state established,related accept
	replies := append(slices.Clone(toBridge),
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
		accept,
	)

	post, fwd, in := chains[natChainPostrouting], chains[natChainForward], chains[natChainInput]
	return []*nftables.Rule{
		{Table: t, Chain: post, Exprs: masq},
		{Table: t, Chain: fwd, Exprs: spoofed()},
		{Table: t, Chain: fwd, Exprs: append(slices.Clone(fromBridge), accept)},
		{Table: t, Chain: fwd, Exprs: replies},
		{Table: t, Chain: fwd, Exprs: append(slices.Clone(toBridge), drop)},
		{Table: t, Chain: in, Exprs: spoofed()},
	}
}

// ifname is an interface name as nftables compares it: NUL-padded to
// IFNAMSIZ.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

func netipMask(p netip.Prefix) []byte {
	m := make([]byte, 4)
	for i := 0; i < p.Bits(); i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

func tableExists(c *nftables.Conn, t *nftables.Table) (bool, error) {
	tables, err := c.ListTablesOfFamily(t.Family)
	if err != nil {
		return false, fmt.Errorf("listing nftables tables: %w", err)
	}
	return slices.ContainsFunc(tables, func(x *nftables.Table) bool { return x.Name == t.Name }), nil
}

// defaultRouteLinks names the interfaces of the IPv4 default routes of the
// main table (the uplinks; a VPN's split default, 0.0.0.0/1 and
// 128.0.0.0/1, counts: hostnet.IsDefaultRoute), leaving out banger's own.
func defaultRouteLinks() ([]string, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	var out []string
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); !hostnet.IsDefaultRoute(ones) {
				continue
			}
		}
		l, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			continue
		}
		n := l.Attrs().Name
		ours := strings.HasPrefix(n, helperapi.BridgePrefix) || strings.HasPrefix(n, helperapi.TapPrefix)
		if !ours && helperapi.ValidateIfName("egress", n) == nil && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	return out, nil
}

// enableForwarding turns IPv4 forwarding on for one interface and reports
// whether it was off. It is never turned off again: other software may
// rely on it.
func enableForwarding(iface string) (bool, error) {
	path := confPath("ipv4", iface, "forwarding")
	before, err := readSysctl(path)
	if err != nil {
		return false, err
	}
	if err := setSysctl(path, "1"); err != nil {
		return false, err
	}
	return before != "1", nil
}

// natDelete deletes the caller's bridge's table; a missing one is not an
// error.
func (h *Helper) natDelete(ctx context.Context, caller rpc.PeerCred, p helperapi.NATDeleteParams) (helperapi.DeleteResult, error) {
	c, err := nftables.New()
	if err != nil {
		return helperapi.DeleteResult{}, fmt.Errorf("nftables: %w", err)
	}
	t := natTable(p.Bridge)
	// Measure.
	exists, err := tableExists(c, t)
	if err != nil {
		return helperapi.DeleteResult{}, err
	}
	if !exists {
		return helperapi.DeleteResult{}, h.owners.drop(kindNAT, p.Bridge)
	}
	if err := h.claim(caller, kindNAT, p.Bridge, nil); err != nil {
		return helperapi.DeleteResult{}, err
	}
	// Act.
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return helperapi.DeleteResult{}, fmt.Errorf("deleting nftables table ip %s: %w", t.Name, err)
	}
	// Verify.
	if exists, err = tableExists(c, t); err != nil {
		return helperapi.DeleteResult{}, err
	} else if exists {
		return helperapi.DeleteResult{}, fmt.Errorf("nftables table ip %s still present after delete", t.Name)
	}
	if err := h.owners.drop(kindNAT, p.Bridge); err != nil {
		return helperapi.DeleteResult{}, err
	}
	h.log.InfoContext(ctx, "nat deleted", "table", "ip "+t.Name)
	return helperapi.DeleteResult{Deleted: true}, nil
}
