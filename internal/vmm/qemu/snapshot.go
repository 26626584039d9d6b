package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/runner"
	"github.com/banger-dev/banger/internal/vmm"
)

// Snapshots under qemu (vmm.Snapshotter): a paused guest's device state is
// a migration stream written to a file through a descriptor passed over
// QMP (getfd, then migrate fd:NAME: no shell, no exec: URI). A VM with
// SharedMemory has its RAM in a memfd, which the x-ignore-shared
// capability leaves out of the stream (tens of kilobytes instead of the
// RAM) and which Snapshot copies, holes kept, from the process's
// descriptor. A restore starts qemu with -S -incoming defer, the memory
// file mapped copy-on-write, and feeds it the stream the same way.
// qemu 7.2 has no file: migration URI (8.2) and no mapped-ram (9.0).

var _ vmm.Snapshotter = (*Driver)(nil)

// memfdName is what qemu names its memory-backend-memfd's memfd
// (backends/hostmem-memfd.c: TYPE_MEMORY_BACKEND_MEMFD); /proc shows it as
// "/memfd:memory-backend-memfd (deleted)".
const memfdName = "/memfd:memory-backend-memfd"

// migrationLimit bounds a save or a load.
const migrationLimit = 5 * time.Minute

// Pause implements vmm.Snapshotter: QMP stop.
func (d *Driver) Pause(ctx context.Context, s vmm.Spec) error {
	_, err := Execute(ctx, s.APISocket, "stop", nil)
	return err
}

// Resume implements vmm.Snapshotter: QMP cont (also out of the
// postmigrate state a snapshot leaves).
func (d *Driver) Resume(ctx context.Context, s vmm.Spec) error {
	_, err := Execute(ctx, s.APISocket, "cont", nil)
	return err
}

// SetLink implements vmm.Snapshotter: QMP set_link on the netdev.
func (d *Driver) SetLink(ctx context.Context, s vmm.Spec, up bool) error {
	if s.TapFile == nil && s.TapName == "" {
		return nil
	}
	_, err := Execute(ctx, s.APISocket, "set_link", map[string]any{"name": "net0", "up": up})
	return err
}

// Freeze is one disk to freeze (FreezeDisks): the new qcow2 overlay the
// guest writes to from now on, and the path its current file is hard-linked
// to as a frozen base.
type Freeze struct {
	Overlay string
	Base    string
}

// FreezeDisks makes the guest write, from now on, to a new qcow2 overlay
// per disk, leaving the current files as they are at this instant:
// read-only bases. Each current file is hard-linked to its Base path
// first; the overlay is made by qemu-img over the Base path with the
// right backing format (-u: qemu holds the file's write lock) and put on
// top with blockdev-snapshot-sync mode=existing. (Letting qemu make the
// overlay and renaming its backing file with change-backing-file instead
// records the overlay's own format as the backing format on qemu 7.2: a
// raw base then reads as a broken qcow2.) fr[i] belongs to s.Disks[i]; a
// zero Freeze leaves that disk alone. The caller records the new paths,
// then removes the old names. Run it paused: the disks' state then
// matches the device state saved next.
func (d *Driver) FreezeDisks(ctx context.Context, s vmm.Spec, fr []Freeze) error {
	if len(fr) > len(s.Disks) {
		return fmt.Errorf("qemu: %d disks to freeze, the VM has %d", len(fr), len(s.Disks))
	}
	sess, err := Dial(ctx, s.APISocket)
	if err != nil {
		return err
	}
	defer sess.Close()
	sizes, err := virtualSizes(ctx, sess)
	if err != nil {
		return err
	}
	for i, f := range fr {
		if f.Overlay == "" {
			continue
		}
		dev := fmt.Sprintf("vd%c", 'a'+i)
		format := s.Disks[i].Format
		if format == "" {
			format = "raw"
		}
		size, ok := sizes[dev]
		if !ok {
			return fmt.Errorf("qemu: disk %s (%s) is not in query-block", s.Disks[i].ID, dev)
		}
		if err := os.Link(s.Disks[i].Path, f.Base); err != nil && !os.IsExist(err) {
			return fmt.Errorf("keeping disk %s's frozen state: %w", s.Disks[i].ID, err)
		}
		if _, err := (&runner.Exec{}).Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-u",
			"-F", format, "-b", f.Base, f.Overlay, strconv.FormatInt(size, 10)); err != nil {
			return fmt.Errorf("disk %s's new overlay: %w", s.Disks[i].ID, err)
		}
		// A node name is at most 31 characters.
		sum := sha256.Sum256([]byte(f.Overlay))
		node := "bg-" + hex.EncodeToString(sum[:10])
		if _, err := sess.Run(ctx, "blockdev-snapshot-sync", map[string]any{
			"device": dev, "snapshot-file": f.Overlay, "snapshot-node-name": node, "format": "qcow2", "mode": "existing",
		}); err != nil {
			os.Remove(f.Overlay)
			return fmt.Errorf("freezing disk %s: %w", s.Disks[i].ID, err)
		}
	}
	return nil
}

// virtualSizes maps each block device to its virtual size in bytes.
func virtualSizes(ctx context.Context, sess *Session) (map[string]int64, error) {
	raw, err := sess.Run(ctx, "query-block", nil)
	if err != nil {
		return nil, err
	}
	var devs []struct {
		Device   string `json:"device"`
		Inserted *struct {
			Image struct {
				VirtualSize int64 `json:"virtual-size"`
			} `json:"image"`
		} `json:"inserted"`
	}
	if err := json.Unmarshal(raw, &devs); err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, dv := range devs {
		if dv.Inserted != nil {
			out[dv.Device] = dv.Inserted.Image.VirtualSize
		}
	}
	return out, nil
}

// ActiveDisks returns the file each disk of the VM writes to now, in disk
// order, as qemu reports it (query-block): after a crash during
// FreezeDisks, the truth about which overlay is in use.
func (d *Driver) ActiveDisks(ctx context.Context, s vmm.Spec) ([]string, error) {
	raw, err := Execute(ctx, s.APISocket, "query-block", nil)
	if err != nil {
		return nil, err
	}
	var devs []struct {
		Device   string `json:"device"`
		Inserted *struct {
			File string `json:"file"`
		} `json:"inserted"`
	}
	if err := json.Unmarshal(raw, &devs); err != nil {
		return nil, err
	}
	var out []string
	for i := 0; ; i++ {
		found := false
		for _, dv := range devs {
			if dv.Device == fmt.Sprintf("vd%c", 'a'+i) && dv.Inserted != nil {
				out, found = append(out, dv.Inserted.File), true
			}
		}
		if !found {
			return out, nil
		}
	}
}

// Snapshot implements vmm.Snapshotter. The guest must be paused. With
// dst.Memory set, the VM's RAM must be SharedMemory: the stream leaves it
// out and it is copied to dst.Memory; with dst.Memory "", the stream
// carries the RAM.
func (d *Driver) Snapshot(ctx context.Context, s vmm.Spec, dst vmm.SnapshotFiles) (err error) {
	if dst.Memory != "" && !s.SharedMemory {
		return errors.New("qemu: a separate memory file needs the VM's RAM in a memfd (SharedMemory); snapshot with the RAM in the stream instead")
	}
	sess, err := Dial(ctx, s.APISocket)
	if err != nil {
		return err
	}
	defer sess.Close()
	raw, err := sess.Run(ctx, "query-status", nil)
	if err != nil {
		return err
	}
	if st, _ := decodeStatus(raw); st != "paused" && st != "postmigrate" {
		return fmt.Errorf("qemu: the guest is %s, not paused", st)
	}
	if err := setIgnoreShared(ctx, sess, dst.Memory != ""); err != nil {
		return err
	}
	f, err := os.OpenFile(dst.State, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		f.Close()
		if err != nil {
			os.Remove(dst.State)
		}
	}()
	if err := sess.SendFile(ctx, "banger-state", f); err != nil {
		return err
	}
	if _, err := sess.Run(ctx, "migrate", map[string]any{"uri": "fd:banger-state"}); err != nil {
		return err
	}
	if err := waitMigration(ctx, sess); err != nil {
		return fmt.Errorf("saving the device state: %w", err)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if dst.Memory == "" {
		return nil
	}
	pid, err := sess.peerPID()
	if err != nil {
		return err
	}
	src, err := memfdOf(pid)
	if err != nil {
		return err
	}
	if err := disk.CopySparse(src, dst.Memory); err != nil {
		return fmt.Errorf("copying the guest's memory: %w", err)
	}
	return nil
}

// Restore implements vmm.Snapshotter: qemu with s's resources, paused,
// waiting for the state (src.Memory mapped copy-on-write when set); the
// stream is loaded, the link set down, the guest continued.
func (d *Driver) Restore(ctx context.Context, s vmm.Spec, src vmm.SnapshotFiles) (int, error) {
	argv, err := args(s, &incoming{memory: src.Memory})
	if err != nil {
		return 0, err
	}
	state, err := os.Open(src.State)
	if err != nil {
		return 0, err
	}
	defer state.Close()
	p, err := d.spawn(s, argv)
	if err != nil {
		return 0, err
	}
	ok := false
	defer func() {
		if !ok {
			p.kill()
		}
	}()
	if _, err := p.waitStatus(ctx, s, 15*time.Second, "inmigrate"); err != nil {
		return 0, err
	}
	sess, err := Dial(ctx, s.APISocket)
	if err != nil {
		return 0, err
	}
	defer sess.Close()
	if err := setIgnoreShared(ctx, sess, src.Memory != ""); err != nil {
		return 0, err
	}
	if err := sess.SendFile(ctx, "banger-state", state); err != nil {
		return 0, err
	}
	if _, err := sess.Run(ctx, "migrate-incoming", map[string]any{"uri": "fd:banger-state"}); err != nil {
		return 0, err
	}
	if err := waitIncoming(ctx, sess, p, s); err != nil {
		return 0, fmt.Errorf("loading the snapshot's state: %w", err)
	}
	if s.TapFile != nil || s.TapName != "" {
		if _, err := sess.Run(ctx, "set_link", map[string]any{"name": "net0", "up": false}); err != nil {
			return 0, err
		}
	}
	if _, err := sess.Run(ctx, "cont", nil); err != nil {
		return 0, err
	}
	ok = true
	return p.pid, nil
}

func setIgnoreShared(ctx context.Context, sess *Session, on bool) error {
	_, err := sess.Run(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": on}},
	})
	return err
}

// migrationInfo is what query-migrate answers, as far as we read it.
type migrationInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
}

func queryMigrate(ctx context.Context, sess *Session) (migrationInfo, error) {
	var mi migrationInfo
	raw, err := sess.Run(ctx, "query-migrate", nil)
	if err == nil {
		err = json.Unmarshal(raw, &mi)
	}
	return mi, err
}

// waitMigration polls an outgoing migration until it completes or fails.
func waitMigration(ctx context.Context, sess *Session) error {
	deadline := time.Now().Add(migrationLimit)
	for {
		mi, err := queryMigrate(ctx, sess)
		if err != nil {
			return err
		}
		switch mi.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", mi.Status, mi.ErrorDesc)
		}
		if time.Now().After(deadline) {
			_, _ = sess.Run(ctx, "migrate_cancel", nil)
			return fmt.Errorf("migration still %s after %v", mi.Status, migrationLimit)
		}
		select {
		case <-ctx.Done():
			_, _ = sess.Run(context.Background(), "migrate_cancel", nil)
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// waitIncoming polls a restore until the guest is loaded (paused, as -S
// leaves it) or the load failed (qemu then exits).
func waitIncoming(ctx context.Context, sess *Session, p *process, s vmm.Spec) error {
	deadline := time.Now().Add(migrationLimit)
	for {
		select {
		case err := <-p.exited:
			return fmt.Errorf("qemu exited (%v); see %s", err, s.LogPath)
		default:
		}
		raw, err := sess.Run(ctx, "query-status", nil)
		if err != nil {
			return err
		}
		st, _ := decodeStatus(raw)
		if st == "paused" {
			return nil
		}
		if mi, err := queryMigrate(ctx, sess); err == nil && mi.Status == "failed" {
			return fmt.Errorf("migration failed: %s", mi.ErrorDesc)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still %s after %v", st, migrationLimit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// peerPID is the pid at the other end of the QMP socket: qemu itself.
func (s *Session) peerPID() (int, error) {
	raw, err := s.conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return int(cred.Pid), nil
}

// memfdOf is the /proc path of qemu's memory-backend-memfd descriptor.
func memfdOf(pid int) (string, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if l, err := os.Readlink(p); err == nil && (l == memfdName+" (deleted)" || l == memfdName) {
			return p, nil
		}
	}
	return "", fmt.Errorf("qemu (pid %d) has no %s descriptor: was the VM started with its RAM in a memfd?", pid, memfdName)
}

// DeviceSet is a fingerprint of the machine and devices qemu gives a VM
// of spec s: its argv with every per-VM value (name, paths, kernel command
// line, MAC, TAP, disk formats, the memory backend) replaced. A snapshot
// restores only into the same device set.
func DeviceSet(s vmm.Spec) (string, error) {
	c := s
	c.ID, c.Name, c.MAC = "vm", "vm", "02:00:00:00:00:00"
	c.Kernel, c.Initrd, c.Cmdline = "/k", "", ""
	if s.Initrd != "" {
		c.Initrd = "/i"
	}
	c.APISocket, c.LogPath, c.ConsolePath = "/a", "/l", "/c"
	if c.AgentSocket != "" {
		c.AgentSocket = "/g"
	}
	if c.TapFile != nil || c.TapName != "" {
		c.TapFile, c.TapName = nil, "tap"
	}
	c.SharedMemory = false
	c.Disks = make([]vmm.Disk, len(s.Disks))
	for i, dk := range s.Disks {
		c.Disks[i] = vmm.Disk{ID: dk.ID, Path: fmt.Sprintf("/d%d", i), Format: "raw", ReadOnly: dk.ReadOnly}
	}
	argv, err := Args(c)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256([]byte(strings.Join(argv, "\x00")))
	return hex.EncodeToString(sum[:8]), nil
}
