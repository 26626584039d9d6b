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

// Every bridge has an nftables table of banger's own, `ip <bridge>` (for
// example `ip banger1`), written through netlink (google/nftables).
// bridge.ensure writes its filter chains, which keep the bridge's guests in
// and everything else out whether or not the bridge has NAT; nat.ensure adds
// the masquerade chain to the same table and nat.delete removes just that;
// bridge.delete deletes the bridge and its table. The table is the bridge's
// owner's: no record of its own.
//
//	table ip banger1 {
//	    chain forward {                        # bridge.ensure
//	        type filter hook forward priority filter; policy accept;
//	        iifname "banger1" ip saddr != 172.30.78.0/24 drop
//	        iifname "banger1" accept
//	        oifname "banger1" ct state established,related accept
//	        oifname "banger1" drop
//	    }
//	    chain input {                          # bridge.ensure
//	        type filter hook input priority filter; policy accept;
//	        iifname "banger1" ip saddr != 172.30.78.0/24 drop
//	    }
//	    chain postrouting {                    # nat.ensure
//	        type nat hook postrouting priority srcnat; policy accept;
//	        iifname "banger1" ip saddr 172.30.78.0/24 ip daddr != 172.30.78.0/24 [oifname EGRESS] masquerade
//	    }
//	}
//
// So a guest that forges its source address reaches neither the host nor
// anything beyond it; nothing reaches the guests from outside but replies
// (not the LAN, not another user's guests, whether or not either bridge has
// NAT); the host masquerades only what comes from the bridge with a source
// in its subnet. One table per bridge means two users' networks never touch
// each other's rules.
//
// Forwarding is switched on per interface, never host-wide
// (net.ipv4.ip_forward stays as it was): on the bridge, and on the uplinks
// the guests' traffic leaves by (the interfaces of the default routes; root
// may name one, Egress), because the kernel decides whether to forward a
// packet by the interface it came in on, and the replies come in on the
// uplink. An uplink the helper switched on forwards replies only
// (uplink.go).

// Chain names inside a bridge's table.
const (
	natChainPostrouting = "postrouting"
	natChainForward     = "forward"
	natChainInput       = "input"
)

func natTable(bridge string) *nftables.Table {
	return &nftables.Table{Name: bridge, Family: nftables.TableFamilyIPv4}
}

// chainSpec is one base chain of banger's tables.
type chainSpec struct {
	name string
	typ  nftables.ChainType
	hook *nftables.ChainHook
	prio *nftables.ChainPriority
}

var (
	filterChains = []chainSpec{
		{natChainForward, nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter},
		{natChainInput, nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter},
	}
	masqChain = chainSpec{natChainPostrouting, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource}
)

// addChains queues the chains of specs in t, emptied, for rules to follow
// in the same transaction (an existing chain is kept and flushed, so its
// rules are replaced atomically).
func addChains(c *nftables.Conn, t *nftables.Table, specs ...chainSpec) map[string]*nftables.Chain {
	chains := map[string]*nftables.Chain{}
	for _, sp := range specs {
		ch := c.AddChain(&nftables.Chain{Name: sp.name, Table: t, Type: sp.typ, Hooknum: sp.hook, Priority: sp.prio})
		c.FlushChain(ch)
		chains[sp.name] = ch
	}
	return chains
}

// verifyChains checks that each chain holds the rules queued for it.
func verifyChains(c *nftables.Conn, t *nftables.Table, chains map[string]*nftables.Chain, rules []*nftables.Rule) error {
	for name, ch := range chains {
		got, err := c.GetRules(t, ch)
		if err != nil {
			return fmt.Errorf("verifying table ip %s chain %s: %w", t.Name, name, err)
		}
		want := 0
		for _, r := range rules {
			if r.Chain == ch {
				want++
			}
		}
		if len(got) != want {
			return rpc.WithHint(fmt.Errorf("verifying table ip %s chain %s: %d rules, want %d", t.Name, name, len(got), want),
				"something else changed the table meanwhile; retry, and look at it with: sudo nft list table ip "+t.Name)
		}
	}
	return nil
}

// writeFilter writes bridge's table with its filter chains for subnet, in
// one transaction. fresh drops whatever the table held first (a new bridge
// must not inherit the masquerade of an earlier one of that name); else a
// masquerade chain in it is kept.
func writeFilter(bridge string, subnet netip.Prefix, fresh bool) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	t := natTable(bridge)
	c.AddTable(t)
	if fresh {
		c.DelTable(t)
		c.AddTable(t)
	}
	chains := addChains(c, t, filterChains...)
	rules := filterRules(t, chains, subnet, bridge)
	for _, r := range rules {
		c.AddRule(r)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("writing nftables table ip %s: %w", bridge, err)
	}
	return verifyChains(c, t, chains, rules)
}

// bridgeSubnet is the subnet of the bridge's one IPv4 address.
func bridgeSubnet(br netlink.Link) (netip.Prefix, error) {
	addrs, err := netlink.AddrList(br, netlink.FAMILY_V4)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("listing the addresses of bridge %s: %w", br.Attrs().Name, err)
	}
	if len(addrs) != 1 {
		return netip.Prefix{}, rpc.WithHint(fmt.Errorf("bridge %s has %d IPv4 addresses, want 1: %w", br.Attrs().Name, len(addrs), rpc.ErrConflict),
			"run bridge.ensure on it first (a VM start does)")
	}
	return addrPrefix(addrs[0]).Masked(), nil
}

// natEnsure writes the masquerade chain of the caller's bridge's table
// (and its filter chains again, so that no masquerade exists without them)
// in one atomic transaction, and turns forwarding on for the bridge and its
// uplinks.
func (h *Helper) natEnsure(ctx context.Context, caller rpc.PeerCred, p helperapi.NATEnsureParams) (helperapi.NATResult, error) {
	var res helperapi.NATResult
	subnet := netip.MustParsePrefix(p.Subnet) // validated
	if err := h.rootStaysOut(caller, kindBridge, p.Bridge); err != nil {
		return res, err
	}
	br, err := h.callersBridge(caller, p.Bridge)
	if err != nil {
		return res, err
	}
	have, err := bridgeSubnet(br)
	if err != nil {
		return res, err
	}
	if have != subnet {
		return res, rpc.WithHint(fmt.Errorf("bridge %s carries subnet %s, not %s: %w", p.Bridge, have, subnet, rpc.ErrConflict),
			"run bridge.ensure with the subnet's gateway first")
	}
	// The uplinks, whose forwarding is switched on below. Root may name
	// one (egress; a user may not: CheckGrant), which must then be an
	// interface of a default route: forwarding on anything else (all,
	// default: the whole host) would make the host route what it should not.
	uplinks, err := defaultRouteLinks()
	if err != nil {
		return res, err
	}
	if p.Egress != "" && !slices.Contains(uplinks, p.Egress) {
		l, err := linkByName(p.Egress)
		what := "carries no default route"
		if err == nil && l == nil {
			what = "does not exist"
		}
		return res, rpc.WithHint(fmt.Errorf("argument egress %q %s, so it is no uplink (the uplinks: %v): %w", p.Egress, what, uplinks, rpc.ErrBadRequest),
			"name the interface of a default route (ip route show default), or leave egress out")
	}
	c, err := nftables.New()
	if err != nil {
		return res, fmt.Errorf("nftables: %w", err)
	}
	t := natTable(p.Bridge)
	res.Table = "ip " + t.Name

	// Measure.
	existed, err := chainExists(c, t, natChainPostrouting)
	if err != nil {
		return res, err
	}

	// Act.
	c.AddTable(t)
	chains := addChains(c, t, append(slices.Clone(filterChains), masqChain)...)
	rules := slices.Concat(filterRules(t, chains, subnet, p.Bridge), []*nftables.Rule{masqRule(t, chains[natChainPostrouting], subnet, p.Bridge, p.Egress)})
	for _, r := range rules {
		c.AddRule(r)
	}
	if err := c.Flush(); err != nil {
		return res, fmt.Errorf("writing nftables table %s: %w", res.Table, err)
	}

	// Verify.
	if err := verifyChains(c, t, chains, rules); err != nil {
		return res, err
	}

	// Forwarding for the bridge and the uplinks only, the uplinks guarded
	// first (uplink.go) so that they forward replies and nothing else.
	if p.Egress != "" {
		uplinks = []string{p.Egress}
	}
	if err := h.guardUplinks(ctx, uplinks); err != nil {
		return res, err
	}
	for _, i := range append([]string{p.Bridge}, uplinks...) {
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
		"created", res.Created, "forwarding_enabled", res.Forwarding, "owner", h.ownerOf(kindBridge, p.Bridge, caller), "caller", caller.UID)
	return res, nil
}

// ruleParts are the expressions banger's rules are made of.
type ruleParts struct {
	fromBridge, toBridge []expr.Any
	addrMatch            func(offset uint32, op expr.CmpOp) []expr.Any
	ifMatch              func(key expr.MetaKey, name string) []expr.Any
}

const saddr, daddr = 12, 16

func parts(subnet netip.Prefix, bridge string) ruleParts {
	mask := netipMask(subnet)
	network := subnet.Masked().Addr().AsSlice()
	rp := ruleParts{
		addrMatch: func(offset uint32, op expr.CmpOp) []expr.Any {
			return []expr.Any{
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
				&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
				&expr.Cmp{Op: op, Register: 1, Data: network},
			}
		},
		ifMatch: ifMatch,
	}
	rp.fromBridge = rp.ifMatch(expr.MetaKeyIIFNAME, bridge)
	rp.toBridge = rp.ifMatch(expr.MetaKeyOIFNAME, bridge)
	return rp
}

// ifMatch matches the packet's input or output interface name (key
// MetaKeyIIFNAME or MetaKeyOIFNAME).
func ifMatch(key expr.MetaKey, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(name)},
	}
}

// ctEstablished matches conntrack state established or related (negated:
// neither).
func ctEstablished(negate bool) []expr.Any {
	op := expr.CmpOpNeq
	if negate {
		op = expr.CmpOpEq
	}
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: op, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// filterRules are the rules of a bridge's forward and input chains.
func filterRules(t *nftables.Table, chains map[string]*nftables.Chain, subnet netip.Prefix, bridge string) []*nftables.Rule {
	rp := parts(subnet, bridge)
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	drop := &expr.Verdict{Kind: expr.VerdictDrop}
	// iifname BRIDGE ip saddr != SUBNET drop
	spoofed := func() []expr.Any {
		return append(slices.Concat(rp.fromBridge, rp.addrMatch(saddr, expr.CmpOpNeq)), drop)
	}
	// oifname BRIDGE ct state established,related accept
	replies := append(slices.Concat(rp.toBridge, ctEstablished(false)), accept)
	fwd, in := chains[natChainForward], chains[natChainInput]
	return []*nftables.Rule{
		{Table: t, Chain: fwd, Exprs: spoofed()},
		{Table: t, Chain: fwd, Exprs: append(slices.Clone(rp.fromBridge), accept)},
		{Table: t, Chain: fwd, Exprs: replies},
		{Table: t, Chain: fwd, Exprs: append(slices.Clone(rp.toBridge), drop)},
		{Table: t, Chain: in, Exprs: spoofed()},
	}
}

// masqRule is the masquerade of the bridge's guests:
// iifname BRIDGE ip saddr SUBNET ip daddr != SUBNET [oifname EGRESS] masquerade
func masqRule(t *nftables.Table, post *nftables.Chain, subnet netip.Prefix, bridge, egress string) *nftables.Rule {
	rp := parts(subnet, bridge)
	masq := slices.Concat(rp.fromBridge, rp.addrMatch(saddr, expr.CmpOpEq), rp.addrMatch(daddr, expr.CmpOpNeq))
	if egress != "" {
		masq = append(masq, rp.ifMatch(expr.MetaKeyOIFNAME, egress)...)
	}
	return &nftables.Rule{Table: t, Chain: post, Exprs: append(masq, &expr.Masq{})}
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

// chainExists reports whether table t has a chain name.
func chainExists(c *nftables.Conn, t *nftables.Table, name string) (bool, error) {
	chains, err := c.ListChainsOfTableFamily(t.Family)
	if err != nil {
		return false, fmt.Errorf("listing nftables chains: %w", err)
	}
	return slices.ContainsFunc(chains, func(ch *nftables.Chain) bool { return ch.Table.Name == t.Name && ch.Name == name }), nil
}

// deleteTable deletes bridge's table, if there is one.
func deleteTable(bridge string) (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("nftables: %w", err)
	}
	t := natTable(bridge)
	exists, err := tableExists(c, t)
	if err != nil || !exists {
		return false, err
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("deleting nftables table ip %s: %w", bridge, err)
	}
	if exists, err = tableExists(c, t); err != nil {
		return false, err
	} else if exists {
		return false, rpc.WithHint(fmt.Errorf("nftables table ip %s still present after delete", bridge),
			"look at it with: sudo nft list table ip "+bridge)
	}
	return true, nil
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

// natDelete removes the masquerade chain of the caller's bridge's table;
// its filter chains stay with the bridge (bridge.delete removes them). A
// missing chain is not an error.
func (h *Helper) natDelete(ctx context.Context, caller rpc.PeerCred, p helperapi.NATDeleteParams) (helperapi.DeleteResult, error) {
	// Ownership: the bridge's. A bridge that is gone leaves the name to
	// the grant that covers it (CheckGrant) and to root.
	br, err := h.measure(kindBridge, p.Bridge)
	if err != nil {
		return helperapi.DeleteResult{}, err
	}
	if br != nil {
		if err := h.claim(caller, kindBridge, p.Bridge, nil); err != nil {
			return helperapi.DeleteResult{}, err
		}
	}
	c, err := nftables.New()
	if err != nil {
		return helperapi.DeleteResult{}, fmt.Errorf("nftables: %w", err)
	}
	t := natTable(p.Bridge)
	// Measure.
	exists, err := chainExists(c, t, natChainPostrouting)
	if err != nil || !exists {
		return helperapi.DeleteResult{}, err
	}
	// Act.
	ch := &nftables.Chain{Name: natChainPostrouting, Table: t}
	c.FlushChain(ch)
	c.DelChain(ch)
	if err := c.Flush(); err != nil {
		return helperapi.DeleteResult{}, fmt.Errorf("deleting chain %s of nftables table ip %s: %w", natChainPostrouting, t.Name, err)
	}
	// Verify.
	if exists, err = chainExists(c, t, natChainPostrouting); err != nil {
		return helperapi.DeleteResult{}, err
	} else if exists {
		return helperapi.DeleteResult{}, rpc.WithHint(fmt.Errorf("chain %s of nftables table ip %s still present after delete", natChainPostrouting, t.Name),
			"look at it with: sudo nft list table ip "+t.Name)
	}
	h.log.InfoContext(ctx, "nat deleted", "table", "ip "+t.Name, "owner", h.ownerOf(kindBridge, p.Bridge, caller), "caller", caller.UID)
	return helperapi.DeleteResult{Deleted: true}, nil
}
