package helper

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
)

// NAT lives in an nftables table of banger's own per bridge, `ip <bridge>`
// (for example `ip banger0`), written through netlink (google/nftables):
//
//	table ip banger0 {
//	    chain postrouting {
//	        type nat hook postrouting priority srcnat; policy accept;
//	        ip saddr 10.77.0.0/24 ip daddr != 10.77.0.0/24 [oifname EGRESS] masquerade
//	    }
//	    chain forward {
//	        type filter hook forward priority filter; policy accept;
//	        iifname "banger0" accept
//	        oifname "banger0" ct state established,related accept
//	    }
//	}
//
// One table per bridge means two users' installs on one host never touch
// each other's rules, and deleting is deleting the table.

const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// Chain names inside a NAT table.
const (
	natChainPostrouting = "postrouting"
	natChainForward     = "forward"
)

func natTable(bridge string) *nftables.Table {
	return &nftables.Table{Name: bridge, Family: nftables.TableFamilyIPv4}
}

// natEnsure writes the bridge's table afresh in one atomic transaction (add,
// delete, add again: the result is the same whatever was there before) and
// turns IPv4 forwarding on in the helper's network namespace.
func (h *Helper) natEnsure(ctx context.Context, _ rpc.PeerCred, p helperapi.NATEnsureParams) (helperapi.NATResult, error) {
	var res helperapi.NATResult
	subnet := netip.MustParsePrefix(p.Subnet) // validated
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

	// Act.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	post := c.AddChain(&nftables.Chain{
		Name: natChainPostrouting, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	fwd := c.AddChain(&nftables.Chain{
		Name: natChainForward, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter,
	})
	for _, r := range natRules(t, post, fwd, subnet, p.Bridge, p.Egress) {
		c.AddRule(r)
	}
	if err := c.Flush(); err != nil {
		return res, fmt.Errorf("writing nftables table %s: %w", res.Table, err)
	}

	// Verify.
	for _, want := range []struct {
		chain *nftables.Chain
		rules int
	}{{post, 1}, {fwd, 2}} {
		rules, err := c.GetRules(t, want.chain)
		if err != nil {
			return res, fmt.Errorf("verifying %s chain %s: %w", res.Table, want.chain.Name, err)
		}
		if len(rules) != want.rules {
			return res, fmt.Errorf("verifying %s chain %s: %d rules, want %d", res.Table, want.chain.Name, len(rules), want.rules)
		}
	}

	enabled, err := ensureIPForward()
	if err != nil {
		return res, err
	}
	res.Created = !existed
	res.IPForwardEnabled = enabled
	h.log.InfoContext(ctx, "nat ensured", "table", res.Table, "subnet", p.Subnet, "egress", p.Egress, "created", res.Created, "ip_forward_enabled", enabled)
	return res, nil
}

// natRules builds the table's three rules.
func natRules(t *nftables.Table, post, fwd *nftables.Chain, subnet netip.Prefix, bridge, egress string) []*nftables.Rule {
	mask := netipMask(subnet)
	network := subnet.Masked().Addr().AsSlice()
	addrMatch := func(offset uint32, op expr.CmpOp) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
			&expr.Cmp{Op: op, Register: 1, Data: network},
		}
	}
	ifMatch := func(key expr.MetaKey, name string) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: key, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(name)},
		}
	}
	accept := &expr.Verdict{Kind: expr.VerdictAccept}

	// ip saddr SUBNET ip daddr != SUBNET [oifname EGRESS] masquerade
	masq := slices.Concat(addrMatch(12, expr.CmpOpEq), addrMatch(16, expr.CmpOpNeq))
	if egress != "" {
		masq = append(masq, ifMatch(expr.MetaKeyOIFNAME, egress)...)
	}
	masq = append(masq, &expr.Masq{})

	// iifname BRIDGE accept
	out := append(ifMatch(expr.MetaKeyIIFNAME, bridge), accept)

	// oifname BRIDGE ct state established,related accept
	back := append(ifMatch(expr.MetaKeyOIFNAME, bridge),
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
		accept,
	)

	return []*nftables.Rule{
		{Table: t, Chain: post, Exprs: masq},
		{Table: t, Chain: fwd, Exprs: out},
		{Table: t, Chain: fwd, Exprs: back},
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

// ensureIPForward turns net.ipv4.ip_forward on; it reports whether it was
// off. It is never turned off again: other software may rely on it.
func ensureIPForward() (bool, error) {
	raw, err := os.ReadFile(ipForwardPath)
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", ipForwardPath, err)
	}
	if strings.TrimSpace(string(raw)) == "1" {
		return false, nil
	}
	if err := os.WriteFile(ipForwardPath, []byte("1\n"), 0o644); err != nil {
		return false, fmt.Errorf("enabling IPv4 forwarding: %w", err)
	}
	if raw, err = os.ReadFile(ipForwardPath); err != nil || strings.TrimSpace(string(raw)) != "1" {
		return false, fmt.Errorf("IPv4 forwarding still off after writing %s", ipForwardPath)
	}
	return true, nil
}

// natDelete deletes the bridge's table; a missing one is not an error.
func (h *Helper) natDelete(ctx context.Context, _ rpc.PeerCred, p helperapi.NATDeleteParams) (helperapi.DeleteResult, error) {
	c, err := nftables.New()
	if err != nil {
		return helperapi.DeleteResult{}, fmt.Errorf("nftables: %w", err)
	}
	t := natTable(p.Bridge)
	// Measure.
	exists, err := tableExists(c, t)
	if err != nil || !exists {
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
	h.log.InfoContext(ctx, "nat deleted", "table", "ip "+t.Name)
	return helperapi.DeleteResult{Deleted: true}, nil
}
