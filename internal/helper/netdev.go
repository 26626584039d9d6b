package helper

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/helperapi"
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

// bridgeEnsure makes the bridge exist, carry exactly the IPv4 address p.CIDR
// and be up.
func (h *Helper) bridgeEnsure(ctx context.Context, _ rpc.PeerCred, p helperapi.BridgeEnsureParams) (helperapi.BridgeResult, error) {
	var res helperapi.BridgeResult
	prefix := netip.MustParsePrefix(p.CIDR) // validated

	// Measure.
	l, err := linkByName(p.Name)
	if err != nil {
		return res, err
	}
	created := false
	if l == nil {
		// Act: create.
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: p.Name}}
		if err := netlink.LinkAdd(br); err != nil {
			return res, fmt.Errorf("creating bridge %s: %w", p.Name, err)
		}
		created = true
		if l, err = netlink.LinkByName(p.Name); err != nil {
			return res, fmt.Errorf("bridge %s: created but not found: %w", p.Name, err)
		}
	} else if l.Type() != "bridge" {
		return res, fmt.Errorf("link %s exists and is a %s, not a bridge: %w", p.Name, l.Type(), rpc.ErrConflict)
	}

	// Act: exactly this IPv4 address.
	if err := ensureOnlyAddr(l, prefix); err != nil {
		return res, fmt.Errorf("bridge %s: %w", p.Name, err)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(l); err != nil {
			return res, fmt.Errorf("bringing bridge %s up: %w", p.Name, err)
		}
	}

	// Verify.
	if l, err = netlink.LinkByName(p.Name); err != nil {
		return res, fmt.Errorf("verifying bridge %s: %w", p.Name, err)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		return res, fmt.Errorf("verifying bridge %s: not up", p.Name)
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return res, fmt.Errorf("verifying bridge %s: %w", p.Name, err)
	}
	if len(addrs) != 1 || addrPrefix(addrs[0]) != prefix {
		return res, fmt.Errorf("verifying bridge %s: addresses %v, want only %s", p.Name, addrs, prefix)
	}
	if created {
		h.log.InfoContext(ctx, "bridge created", "bridge", p.Name, "cidr", p.CIDR)
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

// bridgeDelete deletes the bridge; a missing one is not an error.
func (h *Helper) bridgeDelete(ctx context.Context, _ rpc.PeerCred, p helperapi.BridgeDeleteParams) (helperapi.DeleteResult, error) {
	return h.deleteLink(ctx, p.Name, "bridge")
}

// deleteLink deletes the link name of the given type (bridge, tuntap).
func (h *Helper) deleteLink(ctx context.Context, name, typ string) (helperapi.DeleteResult, error) {
	// Measure.
	l, err := linkByName(name)
	if err != nil || l == nil {
		return helperapi.DeleteResult{}, err
	}
	if l.Type() != typ {
		return helperapi.DeleteResult{}, fmt.Errorf("link %s is a %s, not a %s: %w", name, l.Type(), typ, rpc.ErrConflict)
	}
	// Act.
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return helperapi.DeleteResult{}, fmt.Errorf("deleting %s %s: %w", typ, name, err)
	}
	// Verify.
	if l, err := linkByName(name); err != nil {
		return helperapi.DeleteResult{}, err
	} else if l != nil {
		return helperapi.DeleteResult{}, fmt.Errorf("%s %s still present after delete", typ, name)
	}
	h.log.InfoContext(ctx, typ+" deleted", "link", name)
	return helperapi.DeleteResult{Deleted: true}, nil
}

// tapCreate makes the TAP exist (persistent, owned by p.UID and p.GID),
// attached to p.Bridge and up.
func (h *Helper) tapCreate(ctx context.Context, caller rpc.PeerCred, p helperapi.TapCreateParams) (helperapi.TapResult, error) {
	var res helperapi.TapResult
	if err := h.checkUID("uid", p.UID); err != nil {
		return res, err
	}
	if err := h.checkGID(caller, p.GID); err != nil {
		return res, err
	}
	br, err := linkByName(p.Bridge)
	if err != nil {
		return res, err
	}
	if br == nil || br.Type() != "bridge" {
		return res, fmt.Errorf("argument bridge %q: no such bridge (run bridge.ensure first): %w", p.Bridge, rpc.ErrNotFound)
	}

	// Measure.
	l, err := linkByName(p.Name)
	if err != nil {
		return res, err
	}
	created := false
	if l == nil {
		// Act: create. IFF_TUN_EXCL makes a TAP created meanwhile by someone
		// else an error rather than silently ours.
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: p.Name},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_TUN_EXCL,
			Owner:     p.UID,
			Group:     p.GID,
		}
		if err := netlink.LinkAdd(tap); err != nil {
			return res, fmt.Errorf("creating tap %s: %w", p.Name, err)
		}
		created = true
		if l, err = netlink.LinkByName(p.Name); err != nil {
			return res, fmt.Errorf("tap %s: created but not found: %w", p.Name, err)
		}
	}
	t, ok := l.(*netlink.Tuntap)
	if !ok || t.Mode != netlink.TUNTAP_MODE_TAP {
		return res, fmt.Errorf("link %s exists and is a %s, not a tap: %w", p.Name, l.Type(), rpc.ErrConflict)
	}
	if t.Owner != p.UID || t.Group != p.GID {
		return res, fmt.Errorf("tap %s exists owned by %d:%d, not %d:%d; delete it first: %w", p.Name, t.Owner, t.Group, p.UID, p.GID, rpc.ErrConflict)
	}
	if t.Flags&netlink.TUNTAP_MULTI_QUEUE != 0 {
		return res, fmt.Errorf("tap %s exists as a multi-queue tap; delete it first: %w", p.Name, rpc.ErrConflict)
	}
	// Act: attach and bring up.
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
		return res, fmt.Errorf("verifying tap %s: %w", p.Name, err)
	}
	if l.Attrs().MasterIndex != br.Attrs().Index || l.Attrs().Flags&net.FlagUp == 0 {
		return res, fmt.Errorf("verifying tap %s: not up on %s", p.Name, p.Bridge)
	}
	if created {
		h.log.InfoContext(ctx, "tap created", "tap", p.Name, "bridge", p.Bridge, "uid", p.UID, "gid", p.GID)
	}
	return helperapi.TapResult{Name: p.Name, Index: l.Attrs().Index, Created: created}, nil
}

// tapDelete deletes the TAP; a missing one is not an error. A non-root
// caller may delete only its own TAPs.
func (h *Helper) tapDelete(ctx context.Context, caller rpc.PeerCred, p helperapi.TapDeleteParams) (helperapi.DeleteResult, error) {
	if caller.UID != 0 {
		l, err := linkByName(p.Name)
		if err != nil || l == nil {
			return helperapi.DeleteResult{}, err
		}
		if t, ok := l.(*netlink.Tuntap); ok && t.Owner != caller.UID {
			return helperapi.DeleteResult{}, fmt.Errorf("tap %s is owned by uid %d, not by the caller (uid %d): %w", p.Name, t.Owner, caller.UID, rpc.ErrForbidden)
		}
	}
	return h.deleteLink(ctx, p.Name, "tuntap")
}
