package helper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
)

// tunDevice is the clone device TAPs are opened through.
const tunDevice = "/dev/net/tun"

// tapOpen opens an existing TAP of the caller's and passes the descriptor
// with the reply (SCM_RIGHTS), for a VMM that cannot open /dev/net/tun
// (qemu takes it as -netdev tap,fd=N). It never creates a TAP: the name must
// already be a TAP, owned by the caller unless the caller is root.
func (h *Helper) tapOpen(ctx context.Context, caller rpc.PeerCred, p helperapi.TapOpenParams) (helperapi.TapOpenResult, error) {
	var res helperapi.TapOpenResult
	l, err := h.callersTap(caller, p.Name)
	if err != nil {
		return res, err
	}

	fd, err := unix.Open(tunDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return res, fmt.Errorf("opening %s: %w", tunDevice, err)
	}
	f := os.NewFile(uintptr(fd), tunDevice)
	ifr, err := unix.NewIfreq(p.Name)
	if err != nil {
		f.Close()
		return res, fmt.Errorf("tap %s: %w", p.Name, err)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		f.Close()
		if errors.Is(err, unix.EBUSY) {
			return res, fmt.Errorf("tap %s is already open (its VM running?): %w", p.Name, rpc.ErrConflict)
		}
		return res, fmt.Errorf("attaching to tap %s: %w", p.Name, err)
	}
	// Verify: the descriptor is attached to the named TAP (TUNSETIFF would
	// have made a fresh one had the TAP vanished since the lookup).
	got, err := unix.NewIfreq("")
	if err == nil {
		err = unix.IoctlIfreq(fd, unix.TUNGETIFF, got)
	}
	if err != nil || strings.TrimRight(got.Name(), "\x00") != p.Name {
		f.Close()
		return res, fmt.Errorf("tap %s vanished while being opened: %w", p.Name, rpc.ErrConflict)
	}
	if l2, err := linkByName(p.Name); err != nil || l2 == nil || l2.Attrs().Index != l.Attrs().Index {
		f.Close()
		return res, fmt.Errorf("tap %s was replaced while being opened: %w", p.Name, rpc.ErrConflict)
	}
	if err := rpc.AttachFiles(ctx, f); err != nil {
		f.Close()
		return res, err
	}
	h.log.InfoContext(ctx, "tap opened", "tap", p.Name, "uid", caller.UID, "pid", caller.PID)
	return helperapi.TapOpenResult{Name: p.Name, VnetHdr: true}, nil
}

// callersTap returns the TAP name when it exists and belongs to the caller
// (any TAP for root).
func (h *Helper) callersTap(caller rpc.PeerCred, name string) (netlink.Link, error) {
	l, err := h.measure(kindTap, name)
	if err != nil {
		return nil, err
	}
	t, ok := l.(*netlink.Tuntap)
	if l == nil || !ok || t.Mode != netlink.TUNTAP_MODE_TAP {
		return nil, fmt.Errorf("argument name %q: no such tap: %w", name, rpc.ErrNotFound)
	}
	return l, h.claim(caller, kindTap, name, kernelOwner(l))
}
