package helper

import (
	"context"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/banger-dev/banger/internal/rpc"
)

// The uplink guard. The kernel forwards a packet when forwarding is on for
// the interface it arrived on, and the replies to banger's guests arrive on
// the uplink, so nat.ensure switches forwarding on there. That alone would
// make the host a router for its LAN: anything arriving on the uplink would
// be routed wherever the host has a route (another interface, a VPN, a
// container bridge). So for each uplink whose forwarding the helper itself
// switched from 0 to 1 (recorded in the state file), a table of the
// helper's own lets the uplink forward replies only:
//
//	table ip banger_uplink {
//	    chain forward {
//	        type filter hook forward priority filter; policy accept;
//	        iifname "eth0" ct state != established,related drop
//	    }
//	}
//
// No bridge can have that name (bridge names are [a-z0-9-]). An uplink whose
// forwarding was on already is left alone: something else wants the host to
// route from it. Software started later that relies on forwarding from a
// guarded uplink (Docker's published ports, a VPN server) is blocked by the
// guard until the helper lifts it: the helper does so by itself when it
// finds host forwarding on (net.ipv4.ip_forward=1, what such software sets)
// at its start or at a nat.ensure; otherwise root removes the uplink from
// the state file's "uplinks" and the table (docs/helper.md).

// uplinkTable is the guard's table.
const uplinkTable = "banger_uplink"

// hostForwarding is net.ipv4.ip_forward (conf/all/forwarding): set, the
// host routes by someone's choice.
const hostForwarding = "/proc/sys/net/ipv4/ip_forward"

// writeUplinkGuard makes the guard table hold exactly the rules for ups
// (one transaction), or deletes it when ups is empty.
func writeUplinkGuard(ups []string) error {
	if len(ups) == 0 {
		_, err := deleteTable(uplinkTable)
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	t := natTable(uplinkTable)
	c.AddTable(t)
	chains := addChains(c, t, filterChains[0]) // forward
	fwd := chains[natChainForward]
	var rules []*nftables.Rule
	for _, u := range ups {
		// iifname UPLINK ct state != established,related drop
		rules = append(rules, &nftables.Rule{Table: t, Chain: fwd,
			Exprs: append(slices.Concat(ifMatch(expr.MetaKeyIIFNAME, u), ctEstablished(true)), &expr.Verdict{Kind: expr.VerdictDrop})})
	}
	for _, r := range rules {
		c.AddRule(r)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("writing nftables table ip %s: %w", uplinkTable, err)
	}
	return verifyChains(c, t, chains, rules)
}

// guardUplinks runs before nat.ensure switches forwarding on for ups: the
// ones whose forwarding is off now join the guarded uplinks (recorded
// first, so a crash in between leaves a guard rather than a router), and
// the guard is written for all of them. When host forwarding is on, the
// guard is lifted instead.
func (h *Helper) guardUplinks(ctx context.Context, ups []string) error {
	if on, err := readSysctl(hostForwarding); err != nil {
		return err
	} else if on == "1" {
		return h.liftUplinkGuard(ctx, "net.ipv4.ip_forward is 1: the host routes by its administrator's choice")
	}
	guarded := h.owners.guardedUplinks()
	for _, u := range ups {
		f, err := readSysctl(confPath("ipv4", u, "forwarding"))
		if err != nil {
			return err
		}
		if f != "1" && !slices.Contains(guarded, u) {
			guarded = append(guarded, u)
		}
	}
	if len(guarded) == 0 {
		return nil
	}
	if err := h.owners.setUplinks(guarded); err != nil {
		return err
	}
	if err := writeUplinkGuard(h.owners.guardedUplinks()); err != nil {
		return rpc.WithHint(err, "the uplinks' forwarding stays as it was; retry nat.ensure")
	}
	h.log.InfoContext(ctx, "uplinks guarded", "table", "ip "+uplinkTable, "uplinks", h.owners.guardedUplinks())
	return nil
}

// liftUplinkGuard forgets the guarded uplinks and deletes the guard.
func (h *Helper) liftUplinkGuard(ctx context.Context, why string) error {
	ups := h.owners.guardedUplinks()
	if len(ups) == 0 {
		return nil
	}
	if err := writeUplinkGuard(nil); err != nil {
		return err
	}
	if err := h.owners.setUplinks(nil); err != nil {
		return err
	}
	h.log.InfoContext(ctx, "uplink guard lifted", "uplinks", ups, "why", why)
	return nil
}

// reviewUplinks runs at start: an uplink that is gone, or whose forwarding
// is off again (a reboot, an administrator), is no longer the helper's
// doing; host forwarding on lifts the guard; the rest stay guarded (the
// table written again, in case it went).
func (h *Helper) reviewUplinks() error {
	ups := h.owners.guardedUplinks()
	if len(ups) == 0 {
		return nil
	}
	ctx := context.Background()
	if on, err := readSysctl(hostForwarding); err != nil {
		return err
	} else if on == "1" {
		return h.liftUplinkGuard(ctx, "net.ipv4.ip_forward is 1: the host routes by its administrator's choice")
	}
	var keep []string
	for _, u := range ups {
		l, err := linkByName(u)
		if err != nil {
			return err
		}
		if l == nil {
			continue
		}
		if f, err := readSysctl(confPath("ipv4", u, "forwarding")); err == nil && f == "1" {
			keep = append(keep, u)
		}
	}
	if err := h.owners.setUplinks(keep); err != nil {
		return err
	}
	if err := writeUplinkGuard(keep); err != nil {
		return err
	}
	if len(keep) > 0 {
		h.log.Info("uplinks guarded", "table", "ip "+uplinkTable, "uplinks", keep)
	}
	return nil
}
