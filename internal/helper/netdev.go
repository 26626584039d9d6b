package helper

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/rpc"
)

// Bridges and TAPs are made through netlink (vishvananda/netlink) in the
// helper's network namespace.

// linkByName returns the link, or nil when there is none.
func linkByName(name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("looking up link %s: %w", name, err)
	}
	return l, nil
}

// measure looks a link up and forgets the record of one that is gone.
func (h *Helper) measure(kind, name string) (netlink.Link, error) {
	l, err := linkByName(name)
	if err == nil && l == nil {
		err = h.owners.drop(kind, name)
	}
	return l, err
}

// checkSubnetFree refuses a subnet that overlaps an address or route of
// the host that is not on the bridge itself, or another user's grant
// (helperapi.Grants.CheckSubnetFree, which system install runs too).
func (h *Helper) checkSubnetFree(caller rpc.PeerCred, bridge string, subnet netip.Prefix) error {
	uses, err := hostnet.List()
	if err != nil {
		return err
	}
	return rpc.WithHint(h.grants.CheckSubnetFree(caller.UID, bridge, subnet, uses),
		"choose a free private subnet: sudo banger system install --user NAME --subnet CIDR (as root: network.subnet in the config)")
}

// rootStaysOut refuses root's ensure of a name that is a user's: in a
// grant's namespace (its bridge, its TAP prefix) or recorded to another
// uid. A root daemon configured with a user's bridge would otherwise take
// it over, re-address it and put its TAPs on that user's segment. Root's
// deletes are not checked: root may clean up anything.
func (h *Helper) rootStaysOut(caller rpc.PeerCred, kind, name string) error {
	if caller.UID != 0 {
		return nil
	}
	hint := "a root bangerd's network is its config's (network.bridge, default banger0, TAPs tap-*); choose names no grant has (" + helperapi.DefaultGrantsFile + ")"
	for _, g := range h.grants.Users {
		if kind == kindBridge && name == g.Bridge() || kind == kindTap && strings.HasPrefix(name, g.TapPrefix()) {
			return rpc.WithHint(fmt.Errorf("%s %s is in the network granted to %s (uid %d, bridge %s, TAPs %s*), not root's to make or change: %w",
				kind, name, g.User, g.UID, g.Bridge(), g.TapPrefix(), rpc.ErrConflict), hint)
		}
	}
	if uid, ok := h.owners.owner(kind, name); ok && uid != 0 {
		return rpc.WithHint(fmt.Errorf("%s %s belongs to uid %d, not root's to make or change: %w", kind, name, uid, rpc.ErrConflict),
			hint+"; or, if uid "+fmt.Sprint(uid)+" is done with it, "+removeHint(kind, name))
	}
	return nil
}

// bridgeEnsure makes the bridge exist, carry exactly the IPv4 address
// p.CIDR, have IPv6 off and be up.
func (h *Helper) bridgeEnsure(ctx context.Context, caller rpc.PeerCred, p helperapi.BridgeEnsureParams) (helperapi.BridgeResult, error) {
	var res helperapi.BridgeResult
	prefix := netip.MustParsePrefix(p.CIDR) // validated
	if err := h.rootStaysOut(caller, kindBridge, p.Name); err != nil {
		return res, err
	}

	// Measure.
	l, err := h.measure(kindBridge, p.Name)
	if err != nil {
		return res, err
	}
	if l != nil {
		if l.Type() != "bridge" {
			return res, fmt.Errorf("link %s exists and is a %s, not a bridge: %w", p.Name, l.Type(), rpc.ErrConflict)
		}
		if err := h.claim(caller, kindBridge, p.Name, nil); err != nil {
			return res, err
		}
	}
	if err := h.checkSubnetFree(caller, p.Name, prefix.Masked()); err != nil {
		return res, err
	}

	// Act: create (down), IPv6 off before it comes up, exactly this IPv4
	// address, the filter chains of its table, up.
	created := false
	if l == nil {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: p.Name}}
		if err := netlink.LinkAdd(br); err != nil {
			return res, fmt.Errorf("creating bridge %s: %w", p.Name, err)
		}
		created = true
		if err := h.owners.set(kindBridge, p.Name, caller.UID); err != nil {
			netlink.LinkDel(br)
			return res, err
		}
		if l, err = netlink.LinkByName(p.Name); err != nil {
			return res, verifyFailed(p.Name, fmt.Errorf("bridge %s: created but not found: %w", p.Name, err))
		}
	}
	if err := ipv6Off(p.Name); err != nil {
		return res, err
	}
	if err := ensureOnlyAddr(l, prefix); err != nil {
		return res, fmt.Errorf("bridge %s: %w", p.Name, err)
	}
	// The filter exists before the bridge comes up, NAT or not: isolation
	// between users must not depend on a later nat.ensure.
	if err := writeFilter(p.Name, prefix.Masked(), created); err != nil {
		return res, err
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(l); err != nil {
			return res, fmt.Errorf("bringing bridge %s up: %w", p.Name, err)
		}
	}

	// Verify.
	if l, err = netlink.LinkByName(p.Name); err != nil {
		return res, verifyFailed(p.Name, fmt.Errorf("verifying bridge %s: %w", p.Name, err))
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		return res, verifyFailed(p.Name, fmt.Errorf("verifying bridge %s: not up", p.Name))
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return res, verifyFailed(p.Name, fmt.Errorf("verifying bridge %s: %w", p.Name, err))
	}
	if len(addrs) != 1 || addrPrefix(addrs[0]) != prefix {
		return res, verifyFailed(p.Name, fmt.Errorf("verifying bridge %s: addresses %v, want only %s", p.Name, addrs, prefix))
	}
	if created {
		h.log.InfoContext(ctx, "bridge created", "bridge", p.Name, "cidr", p.CIDR, "owner", caller.UID)
	}
	return helperapi.BridgeResult{Name: p.Name, Index: l.Attrs().Index, Created: created}, nil
}

func addrPrefix(a netlink.Addr) netip.Prefix {
	ip, ok := netip.AddrFromSlice(a.IP.To4())
	if !ok {
		return netip.Prefix{}
	}
	ones, _ := a.Mask.Size()
	return netip.PrefixFrom(ip, ones)
}

// ensureOnlyAddr adds want to l and removes every other IPv4 address (the
// bridge is banger's, so a changed subnet leaves nothing stale behind).
func ensureOnlyAddr(l netlink.Link, want netip.Prefix) error {
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing addresses: %w", err)
	}
	have := false
	for _, a := range addrs {
		if addrPrefix(a) == want {
			have = true
			continue
		}
		if err := netlink.AddrDel(l, &a); err != nil {
			return fmt.Errorf("removing stale address %s: %w", a.IPNet, err)
		}
	}
	if have {
		return nil
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: want.Addr().AsSlice(), Mask: net.CIDRMask(want.Bits(), 32)}}
	if err := netlink.AddrAdd(l, a); err != nil {
		return fmt.Errorf("adding address %s: %w", want, err)
	}
	return nil
}

// bridgeDelete deletes the caller's bridge and its table; a missing one is
// not an error.
func (h *Helper) bridgeDelete(ctx context.Context, caller rpc.PeerCred, p helperapi.BridgeDeleteParams) (helperapi.DeleteResult, error) {
	owner := h.ownerOf(kindBridge, p.Name, caller)
	res, err := h.deleteLink(ctx, caller, kindBridge, p.Name, "bridge")
	if err != nil {
		return res, err
	}
	// The table goes with the bridge (also one left without it). A bridge
	// that was there was the caller's (deleteLink claimed it); a name
	// without a bridge is the caller's grant's (CheckGrant), or root's.
	gone, err := deleteTable(p.Name)
	if err != nil {
		return res, err
	}
	if gone {
		h.log.InfoContext(ctx, "bridge table deleted", "table", "ip "+p.Name, "owner", owner, "caller", caller.UID)
	}
	return helperapi.DeleteResult{Deleted: res.Deleted || gone}, nil
}

// deleteLink deletes the caller's link name of type typ (bridge, tuntap).
func (h *Helper) deleteLink(ctx context.Context, caller rpc.PeerCred, kind, name, typ string) (helperapi.DeleteResult, error) {
	// Measure.
	l, err := h.measure(kind, name)
	if err != nil || l == nil {
		return helperapi.DeleteResult{}, err
	}
	if l.Type() != typ {
		return helperapi.DeleteResult{}, fmt.Errorf("link %s is a %s, not a %s: %w", name, l.Type(), typ, rpc.ErrConflict)
	}
	if err := h.claim(caller, kind, name, kernelOwner(l)); err != nil {
		return helperapi.DeleteResult{}, err
	}
	owner := h.ownerOf(kind, name, caller)
	// Act.
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return helperapi.DeleteResult{}, fmt.Errorf("deleting %s %s: %w", typ, name, err)
	}
	// Verify.
	if l, err := linkByName(name); err != nil {
		return helperapi.DeleteResult{}, err
	} else if l != nil {
		return helperapi.DeleteResult{}, rpc.WithHint(fmt.Errorf("%s %s still present after delete", typ, name),
			"something recreated it; look at it with: ip -d link show "+name)
	}
	if err := h.owners.drop(kind, name); err != nil {
		return helperapi.DeleteResult{}, err
	}
	h.log.InfoContext(ctx, typ+" deleted", "link", name, "owner", owner, "caller", caller.UID)
	return helperapi.DeleteResult{Deleted: true}, nil
}

// verifyFailed is a check after an act that found the link not as the act
// left it: something else changed it meanwhile (code internal: an
// unexpected host failure), with what to look at.
func verifyFailed(link string, err error) error {
	return rpc.WithHint(err, "something else changed the link meanwhile (a network manager, another tool?); retry, and look at it with: ip -d addr show "+link)
}

// ownerOf is the recorded owner of kind/name, else the caller (who made
// it, or claims it).
func (h *Helper) ownerOf(kind, name string, caller rpc.PeerCred) uint32 {
	if uid, ok := h.owners.owner(kind, name); ok {
		return uid
	}
	return caller.UID
}

// kernelOwner is a TAP's owner as the kernel keeps it (nil for other
// links; root for a TAP without an owner, which only root may use).
func kernelOwner(l netlink.Link) *uint32 {
	t, ok := l.(*netlink.Tuntap)
	if !ok {
		return nil
	}
	uid := t.Owner
	if uid == 1<<32-1 {
		uid = 0
	}
	return &uid
}

// callersBridge returns the bridge name, which must exist and be the
// caller's.
func (h *Helper) callersBridge(caller rpc.PeerCred, name string) (netlink.Link, error) {
	br, err := h.measure(kindBridge, name)
	if err != nil {
		return nil, err
	}
	if br == nil || br.Type() != "bridge" {
		return nil, fmt.Errorf("argument bridge %q: no such bridge (run bridge.ensure first): %w", name, rpc.ErrNotFound)
	}
	return br, h.claim(caller, kindBridge, name, nil)
}

// tapCreate makes the TAP exist (persistent, owned by the caller), with
// IPv6 off, attached to the caller's bridge p.Bridge and up.
func (h *Helper) tapCreate(ctx context.Context, caller rpc.PeerCred, p helperapi.TapCreateParams) (helperapi.TapResult, error) {
	var res helperapi.TapResult
	if err := h.rootStaysOut(caller, kindTap, p.Name); err != nil {
		return res, err
	}
	if err := h.rootStaysOut(caller, kindBridge, p.Bridge); err != nil {
		return res, err
	}
	br, err := h.callersBridge(caller, p.Bridge)
	if err != nil {
		return res, err
	}

	// Measure.
	l, err := h.measure(kindTap, p.Name)
	if err != nil {
		return res, err
	}
	created := false
	if l != nil {
		t, ok := l.(*netlink.Tuntap)
		if !ok || t.Mode != netlink.TUNTAP_MODE_TAP || t.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 {
			return res, fmt.Errorf("link %s exists and is a %s, not a single-queue tap: %w", p.Name, l.Type(), rpc.ErrConflict)
		}
		if err := h.claim(caller, kindTap, p.Name, kernelOwner(l)); err != nil {
			return res, err
		}
	} else {
		// Act: create, owned by the caller and nobody else (the kernel
		// wants the opener to be the owner and in the group; the group is
		// the caller's own). IFF_TUN_EXCL makes a TAP created meanwhile by
		// someone else an error rather than silently ours.
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: p.Name},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_TUN_EXCL,
			Owner:     caller.UID,
			Group:     caller.GID,
		}
		if err := netlink.LinkAdd(tap); err != nil {
			return res, fmt.Errorf("creating tap %s: %w", p.Name, err)
		}
		created = true
		if err := h.owners.set(kindTap, p.Name, caller.UID); err != nil {
			netlink.LinkDel(tap)
			return res, err
		}
		if l, err = netlink.LinkByName(p.Name); err != nil {
			return res, verifyFailed(p.Name, fmt.Errorf("tap %s: created but not found: %w", p.Name, err))
		}
	}
	// Act: IPv6 off, attach, up.
	if err := ipv6Off(p.Name); err != nil {
		return res, err
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMasterByIndex(l, br.Attrs().Index); err != nil {
			return res, fmt.Errorf("attaching tap %s to %s: %w", p.Name, p.Bridge, err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(l); err != nil {
			return res, fmt.Errorf("bringing tap %s up: %w", p.Name, err)
		}
	}
	// Verify.
	if l, err = netlink.LinkByName(p.Name); err != nil {
		return res, verifyFailed(p.Name, fmt.Errorf("verifying tap %s: %w", p.Name, err))
	}
	if l.Attrs().MasterIndex != br.Attrs().Index || l.Attrs().Flags&net.FlagUp == 0 {
		return res, verifyFailed(p.Name, fmt.Errorf("verifying tap %s: not up on %s", p.Name, p.Bridge))
	}
	if o := kernelOwner(l); caller.UID != 0 && (o == nil || *o != caller.UID) {
		return res, verifyFailed(p.Name, fmt.Errorf("verifying tap %s: the kernel does not give it to uid %d", p.Name, caller.UID))
	}
	if created {
		h.log.InfoContext(ctx, "tap created", "tap", p.Name, "bridge", p.Bridge, "owner", caller.UID)
	}
	return helperapi.TapResult{Name: p.Name, Index: l.Attrs().Index, Created: created}, nil
}

// tapDelete deletes the caller's TAP; a missing one is not an error.
func (h *Helper) tapDelete(ctx context.Context, caller rpc.PeerCred, p helperapi.TapDeleteParams) (helperapi.DeleteResult, error) {
	return h.deleteLink(ctx, caller, kindTap, p.Name, "tuntap")
}
