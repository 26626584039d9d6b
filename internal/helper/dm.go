package helper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/runner"
)

// Device-mapper goes through dmsetup (argv only, through the runner). The
// table is one argv element built from validated parts: a name matching
// banger-[a-z0-9-]+, /dev/loopN paths and numbers.

// snapshotTable is the table dm.snapshot.create loads:
// "0 SECTORS snapshot BASE COW P CHUNK" (persistent exception store).
func snapshotTable(sectors uint64, base, cow string, chunk uint32) string {
	return fmt.Sprintf("0 %d snapshot %s %s P %d", sectors, base, cow, chunk)
}

// dmsetupCreate is the argv that creates a device from a one-line table.
func dmsetupCreate(name, table string) []string {
	return []string{"dmsetup", "create", name, "--table", table}
}

// dmsetupTable is the argv that prints a device's live table.
func dmsetupTable(name string) []string { return []string{"dmsetup", "table", name} }

// dmsetupRemove is the argv that removes a device, retrying while udev
// briefly holds it open.
func dmsetupRemove(name string) []string { return []string{"dmsetup", "remove", "--retry", name} }

func (h *Helper) dmsetup(ctx context.Context, argv []string) (string, error) {
	out, err := h.run.Run(ctx, argv[0], argv[1:]...)
	return string(out), err
}

// dmSnapshotCreate creates the snapshot if missing (an existing one must
// have the same table) and gives its node to p.UID.
func (h *Helper) dmSnapshotCreate(ctx context.Context, caller rpc.PeerCred, p helperapi.DMSnapshotCreateParams) (helperapi.DMSnapshotResult, error) {
	var res helperapi.DMSnapshotResult
	if err := h.checkUID("uid", p.UID); err != nil {
		return res, err
	}
	base := strings.TrimPrefix(p.BaseDevice, "/dev/")
	cow := strings.TrimPrefix(p.COWDevice, "/dev/")
	if _, err := h.checkLoopOwned(caller, "base_device", base, false); err != nil {
		return res, err
	}
	if _, err := h.checkLoopOwned(caller, "cow_device", cow, false); err != nil {
		return res, err
	}
	sectors, err := h.sysSectors(base)
	if err != nil {
		return res, err
	}
	if sectors == 0 {
		return res, fmt.Errorf("argument base_device %q: empty device: %w", p.BaseDevice, rpc.ErrBadRequest)
	}
	bmaj, bmin, err := h.sysDev(base)
	if err != nil {
		return res, err
	}
	cmaj, cmin, err := h.sysDev(cow)
	if err != nil {
		return res, err
	}
	// dmsetup prints devices as MAJ:MIN.
	want := snapshotTable(sectors, fmt.Sprintf("%d:%d", bmaj, bmin), fmt.Sprintf("%d:%d", cmaj, cmin), p.Chunk())

	// Measure.
	dm, exists, err := h.findDM(p.Name)
	if err != nil {
		return res, err
	}
	if exists {
		if err := h.checkDMTable(ctx, p.Name, want); err != nil {
			return res, err
		}
	} else {
		// Act.
		table := snapshotTable(sectors, p.BaseDevice, p.COWDevice, p.Chunk())
		if _, err := h.dmsetup(ctx, dmsetupCreate(p.Name, table)); err != nil {
			return res, fmt.Errorf("creating snapshot %s: %w", p.Name, err)
		}
		// Verify.
		var found bool
		if dm, found, err = h.findDM(p.Name); err != nil {
			return res, err
		} else if !found {
			return res, fmt.Errorf("snapshot %s: created but not in %s/block", p.Name, h.cfg.SysRoot)
		}
		if err := h.checkDMTable(ctx, p.Name, want); err != nil {
			return res, err
		}
		h.log.InfoContext(ctx, "dm snapshot created", "name", p.Name, "node", "/dev/"+dm, "base", p.BaseDevice, "cow", p.COWDevice, "sectors", sectors)
	}
	node, err := h.chownDM(p.Name, dm, p.UID)
	if err != nil {
		return res, err
	}
	return helperapi.DMSnapshotResult{Name: p.Name, Device: "/dev/mapper/" + p.Name, Node: node, Sectors: sectors, Created: !exists}, nil
}

// checkDMTable compares a device's live table with want.
func (h *Helper) checkDMTable(ctx context.Context, name, want string) error {
	out, err := h.dmsetup(ctx, dmsetupTable(name))
	if err != nil {
		return fmt.Errorf("reading the table of %s: %w", name, err)
	}
	if got := strings.TrimSpace(out); got != want {
		return fmt.Errorf("dm device %s exists with table %q, want %q: %w", name, got, want, rpc.ErrConflict)
	}
	return nil
}

// chownDM gives the dm-N node, and /dev/mapper/NAME when it is a node of
// its own rather than a symlink, to uid. It returns /dev/dm-N.
func (h *Helper) chownDM(name, dm string, uid uint32) (string, error) {
	maj, min, err := h.sysDev(dm)
	if err != nil {
		return "", err
	}
	node := "/dev/" + dm
	if err := chownNode(h.devPath(node), maj, min, uid); err != nil {
		return "", err
	}
	mapper := h.devPath("/dev/mapper/" + name)
	if fi, err := os.Lstat(mapper); err == nil && fi.Mode()&os.ModeSymlink == 0 {
		if err := chownNode(mapper, maj, min, uid); err != nil {
			return "", err
		}
	}
	return node, nil
}

// findDM returns the dm-N whose dm/name is name.
func (h *Helper) findDM(name string) (string, bool, error) {
	dirs, err := filepath.Glob(filepath.Join(h.cfg.SysRoot, "block", "dm-*"))
	if err != nil {
		return "", false, err
	}
	for _, d := range dirs {
		raw, err := os.ReadFile(filepath.Join(d, "dm", "name"))
		if err != nil {
			continue
		}
		if strings.TrimSpace(string(raw)) == name {
			return filepath.Base(d), true, nil
		}
	}
	return "", false, nil
}

// dmName reads the name of dm-N.
func (h *Helper) dmName(dm string) (string, error) {
	raw, err := os.ReadFile(filepath.Join(h.cfg.SysRoot, "block", dm, "dm", "name"))
	if err != nil {
		return "", fmt.Errorf("argument device %q: %w", "/dev/"+dm, err)
	}
	return strings.TrimSpace(string(raw)), nil
}

// checkDMOwned lets root act on any banger- dm device, and others only on
// those built solely on loop devices backed by their own files.
func (h *Helper) checkDMOwned(caller rpc.PeerCred, name, dm string) error {
	if caller.UID == 0 {
		return nil
	}
	ents, err := os.ReadDir(filepath.Join(h.cfg.SysRoot, "block", dm, "slaves"))
	if err != nil {
		return fmt.Errorf("reading what %s is built on: %w", name, err)
	}
	if len(ents) == 0 {
		return fmt.Errorf("dm device %s is built on nothing the caller owns: %w", name, rpc.ErrForbidden)
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "loop") {
			return fmt.Errorf("dm device %s is built on %s, not on a loop device: %w", name, e.Name(), rpc.ErrForbidden)
		}
		if _, err := h.checkLoopOwned(caller, "device", e.Name(), true); err != nil {
			return fmt.Errorf("dm device %s: %w", name, err)
		}
	}
	return nil
}

// dmSnapshotRemove removes the snapshot; a missing one is not an error.
func (h *Helper) dmSnapshotRemove(ctx context.Context, caller rpc.PeerCred, p helperapi.DMSnapshotRemoveParams) (helperapi.DeleteResult, error) {
	// Measure.
	dm, exists, err := h.findDM(p.Name)
	if err != nil || !exists {
		return helperapi.DeleteResult{}, err
	}
	if err := h.checkDMOwned(caller, p.Name, dm); err != nil {
		return helperapi.DeleteResult{}, err
	}
	// Act.
	if _, err := h.dmsetup(ctx, dmsetupRemove(p.Name)); err != nil {
		var re *runner.Error
		if errors.As(err, &re) && strings.Contains(strings.ToLower(re.Stderr), "busy") {
			return helperapi.DeleteResult{}, fmt.Errorf("removing snapshot %s: %v: %w", p.Name, err, rpc.ErrConflict)
		}
		return helperapi.DeleteResult{}, fmt.Errorf("removing snapshot %s: %w", p.Name, err)
	}
	// Verify.
	if _, exists, err := h.findDM(p.Name); err != nil {
		return helperapi.DeleteResult{}, err
	} else if exists {
		return helperapi.DeleteResult{}, fmt.Errorf("snapshot %s still present after dmsetup remove", p.Name)
	}
	h.log.InfoContext(ctx, "dm snapshot removed", "name", p.Name, "node", "/dev/"+dm)
	return helperapi.DeleteResult{Deleted: true}, nil
}

// chownDevice gives a device node banger made to p.UID: a loop device backed
// by a state-root file of the caller's, or a banger- dm device.
func (h *Helper) chownDevice(ctx context.Context, caller rpc.PeerCred, p helperapi.ChownDeviceParams) (helperapi.ChownDeviceResult, error) {
	if err := h.checkUID("uid", p.UID); err != nil {
		return helperapi.ChownDeviceResult{}, err
	}
	var node string
	switch {
	case strings.HasPrefix(p.Device, "/dev/loop"):
		name := strings.TrimPrefix(p.Device, "/dev/")
		if _, err := h.checkLoopOwned(caller, "device", name, false); err != nil {
			return helperapi.ChownDeviceResult{}, err
		}
		maj, min, err := h.sysDev(name)
		if err != nil {
			return helperapi.ChownDeviceResult{}, err
		}
		if err := chownNode(h.devPath(p.Device), maj, min, p.UID); err != nil {
			return helperapi.ChownDeviceResult{}, err
		}
		node = p.Device
	default:
		var name, dm string
		if n, ok := strings.CutPrefix(p.Device, "/dev/mapper/"); ok {
			var exists bool
			var err error
			if dm, exists, err = h.findDM(n); err != nil {
				return helperapi.ChownDeviceResult{}, err
			} else if !exists {
				return helperapi.ChownDeviceResult{}, fmt.Errorf("argument device %q: no such dm device: %w", p.Device, rpc.ErrNotFound)
			}
			name = n
		} else {
			dm = strings.TrimPrefix(p.Device, "/dev/")
			n, err := h.dmName(dm)
			if err != nil {
				return helperapi.ChownDeviceResult{}, err
			}
			if err := helperapi.ValidateDMName("device", n); err != nil {
				return helperapi.ChownDeviceResult{}, fmt.Errorf("argument device %q is dm device %q, not banger's: %w", p.Device, n, rpc.ErrForbidden)
			}
			name = n
		}
		if err := h.checkDMOwned(caller, name, dm); err != nil {
			return helperapi.ChownDeviceResult{}, err
		}
		var err error
		if node, err = h.chownDM(name, dm, p.UID); err != nil {
			return helperapi.ChownDeviceResult{}, err
		}
	}
	h.log.InfoContext(ctx, "device chowned", "device", p.Device, "node", node, "uid", p.UID)
	return helperapi.ChownDeviceResult{Node: node}, nil
}
