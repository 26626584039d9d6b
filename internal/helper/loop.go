package helper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
)

// Loop devices are driven with ioctls rather than losetup: the helper opens
// and checks the backing file itself (openStateFile) and hands that very
// descriptor to LOOP_CONFIGURE, so there is no window in which a path that
// passed the checks could be swapped before the kernel opens it (losetup
// would open the path again).

// loopAttach attaches the file at p.Path to a free loop device, or returns
// the one it is already attached to.
func (h *Helper) loopAttach(ctx context.Context, caller rpc.PeerCred, p helperapi.LoopAttachParams) (helperapi.LoopAttachResult, error) {
	f, st, err := h.openStateFile(caller, p.Path, p.ReadOnly)
	if err != nil {
		return helperapi.LoopAttachResult{}, err
	}
	defer f.Close()

	// Measure: is this very file (device and inode) attached already?
	dev, info, err := h.findLoop(st)
	if err != nil {
		return helperapi.LoopAttachResult{}, err
	}
	if dev != "" {
		ro := info.Flags&unix.LO_FLAGS_READ_ONLY != 0
		if ro != p.ReadOnly {
			return helperapi.LoopAttachResult{}, fmt.Errorf("%s is already attached to %s with read_only=%v: %w", p.Path, dev, ro, rpc.ErrConflict)
		}
		h.log.DebugContext(ctx, "loop already attached", "path", p.Path, "device", dev)
		return helperapi.LoopAttachResult{Device: dev, Existing: true}, nil
	}

	// Act: take a free device and configure it from our descriptor. Another
	// process may take the same free device first (EBUSY): try the next.
	var flags uint32
	if p.ReadOnly {
		flags = unix.LO_FLAGS_READ_ONLY
	}
	for attempt := 0; ; attempt++ {
		dev, err = h.configureFreeLoop(f, flags)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EBUSY) || attempt >= 20 {
			return helperapi.LoopAttachResult{}, fmt.Errorf("attaching %s: %w", p.Path, err)
		}
	}

	// Verify: the device reports our file.
	info, err = loopStatus(h.devPath(dev))
	if err != nil {
		return helperapi.LoopAttachResult{}, fmt.Errorf("verifying %s: %w", dev, err)
	}
	if info.Device != st.Dev || info.Inode != st.Ino {
		return helperapi.LoopAttachResult{}, fmt.Errorf("verifying %s: it does not report %s", dev, p.Path)
	}
	// A fresh attachment starts root's, whoever the node was given to before.
	var nst unix.Stat_t
	if err := unix.Lstat(h.devPath(dev), &nst); err == nil && nst.Mode&unix.S_IFMT == unix.S_IFBLK && nst.Uid != 0 {
		if err := unix.Lchown(h.devPath(dev), 0, -1); err != nil {
			return helperapi.LoopAttachResult{}, fmt.Errorf("giving %s back to root: %w", dev, err)
		}
	}
	h.log.InfoContext(ctx, "loop attached", "path", p.Path, "device", dev, "read_only", p.ReadOnly)
	return helperapi.LoopAttachResult{Device: dev}, nil
}

// configureFreeLoop asks loop-control for a free device and attaches f.
func (h *Helper) configureFreeLoop(f *os.File, flags uint32) (string, error) {
	ctl, err := os.OpenFile(filepath.Join(h.cfg.DevRoot, "loop-control"), os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("opening loop-control: %w", err)
	}
	n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
	ctl.Close()
	if err != nil {
		return "", fmt.Errorf("LOOP_CTL_GET_FREE: %w", err)
	}
	dev := fmt.Sprintf("/dev/loop%d", n)
	lf, err := os.OpenFile(h.devPath(dev), os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("opening %s: %w", dev, err)
	}
	defer lf.Close()
	cfg := unix.LoopConfig{Fd: uint32(f.Fd())}
	cfg.Info.Flags = flags
	copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], filepath.Base(f.Name()))
	if err := unix.IoctlLoopConfigure(int(lf.Fd()), &cfg); err != nil {
		return "", fmt.Errorf("LOOP_CONFIGURE %s: %w", dev, err)
	}
	return dev, nil
}

// findLoop returns the loop device whose backing file is the file st
// describes (same device and inode), or "".
func (h *Helper) findLoop(st unix.Stat_t) (string, *unix.LoopInfo64, error) {
	names, err := filepath.Glob(filepath.Join(h.cfg.SysRoot, "block", "loop*"))
	if err != nil {
		return "", nil, err
	}
	for _, dir := range names {
		name := filepath.Base(dir)
		if _, ok, _ := h.loopBacking(name); !ok {
			continue
		}
		info, err := loopStatus(filepath.Join(h.cfg.DevRoot, name))
		if err != nil {
			continue // detached meanwhile
		}
		if info.Device == st.Dev && info.Inode == st.Ino {
			return "/dev/" + name, info, nil
		}
	}
	return "", nil, nil
}

func loopStatus(dev string) (*unix.LoopInfo64, error) {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if err != nil {
		return nil, fmt.Errorf("LOOP_GET_STATUS64 %s: %w", dev, err)
	}
	return info, nil
}

// loopDetach detaches p.Device when its backing file is under a state root
// (and the caller's) and nothing holds it.
func (h *Helper) loopDetach(ctx context.Context, caller rpc.PeerCred, p helperapi.LoopDetachParams) (helperapi.DeleteResult, error) {
	name := strings.TrimPrefix(p.Device, "/dev/")
	// Measure.
	if _, ok, err := h.loopBacking(name); err != nil || !ok {
		return helperapi.DeleteResult{}, err
	}
	b, err := h.checkLoopOwned(caller, "device", name, true)
	if err != nil {
		return helperapi.DeleteResult{}, err
	}
	if holders := h.holders(name); len(holders) > 0 {
		return helperapi.DeleteResult{}, fmt.Errorf("%s is held by %s; remove that first: %w", p.Device, strings.Join(holders, ", "), rpc.ErrConflict)
	}
	// Act.
	dev := h.devPath(p.Device)
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return helperapi.DeleteResult{}, fmt.Errorf("opening %s: %w", dev, err)
	}
	err = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
	f.Close()
	switch {
	case errors.Is(err, unix.ENXIO):
		return helperapi.DeleteResult{}, nil // detached meanwhile
	case errors.Is(err, unix.EBUSY):
		return helperapi.DeleteResult{}, fmt.Errorf("detaching %s: busy: %w", p.Device, rpc.ErrConflict)
	case err != nil:
		return helperapi.DeleteResult{}, fmt.Errorf("LOOP_CLR_FD %s: %w", p.Device, err)
	}
	// Verify: the kernel finishes the detach when the last opener closes
	// the device; wait briefly for that.
	deadline := time.Now().Add(3 * time.Second)
	for {
		if _, ok, _ := h.loopBacking(name); !ok {
			break
		}
		if time.Now().After(deadline) {
			return helperapi.DeleteResult{}, fmt.Errorf("%s still attached after detach (opened by another process?): %w", p.Device, rpc.ErrConflict)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A node handed to a user by chown.device goes back to root, so that
	// the next file attached to the same device is not that user's to read.
	var st unix.Stat_t
	if err := unix.Lstat(dev, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Uid != 0 {
		if err := unix.Lchown(dev, 0, -1); err != nil {
			return helperapi.DeleteResult{}, fmt.Errorf("%s detached, but giving its node back to root failed: %w", p.Device, err)
		}
	}
	h.log.InfoContext(ctx, "loop detached", "device", p.Device, "path", b.Path)
	return helperapi.DeleteResult{Deleted: true}, nil
}

// devPath maps a validated /dev/... name to the node under DevRoot.
func (h *Helper) devPath(dev string) string {
	return filepath.Join(h.cfg.DevRoot, strings.TrimPrefix(dev, "/dev/"))
}

// holders lists what holds a block device (/sys/block/NAME/holders), such
// as the dm device built on it.
func (h *Helper) holders(name string) []string {
	ents, _ := os.ReadDir(filepath.Join(h.cfg.SysRoot, "block", name, "holders"))
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}
