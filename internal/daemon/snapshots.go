package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/hostcheck"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/snapshot"
	"github.com/banger-dev/banger/internal/vmm"
	"github.com/banger-dev/banger/internal/vmm/firecracker"
	"github.com/banger-dev/banger/internal/vmm/qemu"
)

// Snapshots, pause, forks and warm creates (ARCHITECTURE.md, "Snapshots").
// A snapshot is a directory under STATE/snapshots (package snapshot: the
// device state, the memory, the config disk and a manifest) plus frozen
// disk bases under STATE/bases, and a row, written last. Under qemu the
// VM's disks are frozen in place: it goes on writing to new qcow2 overlays
// over the bases, so taking a snapshot pauses it for tens of
// milliseconds.

func (d *Daemon) snapshotsDir() string { return filepath.Join(d.layout.StateDir, "snapshots") }
func (d *Daemon) basesDir() string     { return filepath.Join(d.layout.StateDir, "bases") }

// snapshotter is the driver of vm as a vmm.Snapshotter.
func (d *Daemon) snapshotter(vm model.VM) (vmm.Snapshotter, error) {
	switch vm.VMM {
	case "qemu":
		return qemu.New(d.cfg.Paths.Qemu), nil
	case "firecracker":
		return firecracker.New(d.cfg.Paths.Firecracker, d.log), nil
	}
	return nil, rpc.Errorf(rpc.ErrUnavailable, "vmm %q cannot snapshot", vm.VMM)
}

// vmmVersions caches `VMM --version` by binary: a manifest records it and
// a restore compares it.
var vmmVersions sync.Map

func (d *Daemon) vmmVersion(ctx context.Context, vmmName string) string {
	bin := d.cfg.Paths.Qemu
	if vmmName == "firecracker" {
		bin = d.cfg.Paths.Firecracker
	}
	key := vmmName + "\x00" + bin + "\x00" + fileStamp(bin)
	if v, ok := vmmVersions.Load(key); ok {
		return v.(string)
	}
	_, v, err := hostcheck.BinaryVersion(ctx, bin)
	if err != nil {
		return ""
	}
	vmmVersions.Store(key, v)
	return v
}

// machineOf is what a snapshot of vm (booted by spec) records, and what a
// restore of vm must match.
func (d *Daemon) machineOf(ctx context.Context, vm model.VM, img model.Image, spec vmm.Spec) (snapshot.Machine, error) {
	m := snapshot.Machine{
		VMM: vm.VMM, VMMVersion: d.vmmVersion(ctx, vm.VMM), Accel: spec.Accel,
		VCPUs: vm.Spec.VCPUs, MemoryMiB: vm.Spec.MemoryMiB, DiskSizeBytes: vm.Spec.DiskSizeBytes,
		Image: img.Name, ImageBuild: imageBuildOf(img), GuestContract: img.GuestContract,
	}
	switch {
	case vm.VMM == "qemu" && spec.Accel == "kvm":
		m.CPU = "host: " + hostCPUModel()
	case vm.VMM == "qemu":
		m.CPU = "max (tcg)"
	default:
		m.CPU = "host: " + hostCPUModel()
	}
	if vm.VMM == "qemu" {
		// Every VM has a network link, even one not given its TAP yet
		// (a create's probe).
		if spec.TapFile == nil && spec.TapName == "" {
			spec.TapName = "tap"
		}
		ds, err := qemu.DeviceSet(spec)
		if err != nil {
			return m, err
		}
		m.Devices = ds
	} else {
		m.Devices = "firecracker"
	}
	return m, nil
}

// imageBuildOf identifies the build of an image: its rootfs's hash, or its
// size and time where it was never hashed.
func imageBuildOf(img model.Image) string {
	if img.RootfsSHA256 != "" {
		return img.RootfsSHA256
	}
	return fmt.Sprintf("%d@%s", img.RootfsSize, img.CreatedAt.UTC().Format(time.RFC3339Nano))
}

func hostCPUModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// --- pause and resume ---

func (d *Daemon) vmPause(ctx context.Context, p api.VMRef) (api.VMInfo, error) {
	return d.setPaused(ctx, p.Name, true)
}

func (d *Daemon) vmResume(ctx context.Context, p api.VMRef) (api.VMInfo, error) {
	return d.setPaused(ctx, p.Name, false)
}

func (d *Daemon) setPaused(ctx context.Context, ref string, pause bool) (api.VMInfo, error) {
	vm, err := d.lookupVM(ctx, ref)
	if err != nil {
		return api.VMInfo{}, err
	}
	unlock := d.lockVM(vm.ID)
	defer unlock()
	if vm, err = d.store.GetVM(ctx, vm.ID); err != nil {
		return api.VMInfo{}, err
	}
	want, verb := model.StateRunning, "resume"
	if pause {
		want, verb = model.StatePaused, "pause"
	}
	if !vm.Runtime.State.Live() || !d.vmAlive(vm) {
		return api.VMInfo{}, rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "vm %s is %s: only a running VM can %s", vm.Name, vm.Runtime.State, verb), "start it: banger vm start "+vm.Name)
	}
	if vm.Runtime.State == want {
		return d.vmInfo(ctx, vm), nil
	}
	s, err := d.snapshotter(vm)
	if err != nil {
		return api.VMInfo{}, err
	}
	spec := d.liveSpec(vm)
	if pause {
		err = s.Pause(ctx, spec)
	} else {
		err = s.Resume(ctx, spec)
	}
	if err != nil {
		return api.VMInfo{}, vmError(vm, fmt.Errorf("%s: %w", verb, err))
	}
	vm, err = d.store.UpdateVMRuntime(ctx, vm.ID, func(r *model.VMRuntime) error {
		r.State = want
		return nil
	})
	if err != nil {
		return api.VMInfo{}, err
	}
	d.log.InfoContext(ctx, "vm "+verb+"d", "vm", vm.Name)
	return d.vmInfo(ctx, vm), nil
}

// liveSpec is the part of a spec the snapshotter's calls on a running VM
// need: its sockets, its disks and whether it has a network link.
func (d *Daemon) liveSpec(vm model.VM) vmm.Spec {
	s := vmmSpecFor(vm)
	s.TapName = d.getHandles(vm).TapDevice
	s.SharedMemory = d.getHandles(vm).Memory == "memfd"
	rootFormat := "raw"
	if vm.Runtime.SystemOverlay == "qcow2" {
		rootFormat = "qcow2"
	}
	s.Disks = []vmm.Disk{
		{ID: "rootfs", Path: vm.Runtime.OverlayPath, Format: rootFormat},
		{ID: "work", Path: vm.Runtime.WorkDiskPath, Format: workFormat(vm)},
	}
	return s
}

// reconcileRunState makes a re-adopted VM's recorded state the VMM's
// (running or paused), and finishes or rolls back what a crash cut short
// (reconcileIntent).
func (d *Daemon) reconcileRunState(ctx context.Context, vm model.VM) {
	d.reconcileIntent(ctx, vm)
	if vm.VMM == "firecracker" {
		// A guest that halts leaves Firecracker running: watch it again.
		if err := firecracker.New(d.cfg.Paths.Firecracker, d.log).WatchHalt(ctx, vmmSpecFor(vm), d.getHandles(vm).PID); err != nil {
			d.log.WarnContext(ctx, "reconcile: no halt watch", "vm", vm.Name, "error", err.Error())
		}
	}
	if vm.VMM != "qemu" {
		return
	}
	st, err := qemu.QueryStatus(ctx, vm.Runtime.APISockPath)
	if err != nil {
		return
	}
	want := model.StateRunning
	if st == "paused" || st == "postmigrate" {
		want = model.StatePaused
	}
	if cur, err := d.store.GetVM(ctx, vm.ID); err == nil && cur.Runtime.State != want {
		_, _ = d.store.UpdateVMRuntime(ctx, vm.ID, func(r *model.VMRuntime) error {
			r.State = want
			return nil
		})
		d.log.InfoContext(ctx, "reconcile: vm state from its VMM", "vm", vm.Name, "state", want, "qemu_status", st)
	}
}

// --- taking a snapshot ---

// snapshotReq is one snapshot to take.
type snapshotReq struct {
	kind, name string
	// resume: let the VM run again afterwards (not for a template made
	// from a VM about to be discarded).
	resume bool
}

// snapshotResult is a snapshot taken, with how long the VM was paused.
type snapshotResult struct {
	sn       model.Snapshot
	manifest snapshot.Manifest
	paused   time.Duration
	took     time.Duration
}

// intent is what a snapshot in progress has done to its VM, in the VM
// directory (vmFileIntent), so that a bangerd killed midway finishes or
// undoes it at its next start (reconcileIntent).
type intent struct {
	Snapshot string   `json:"snapshot"` // its id
	Resume   bool     `json:"resume"`   // the VM was running: resume it
	Freezes  []freeze `json:"freezes,omitempty"`
}

type freeze struct {
	Disk    int    `json:"disk"` // 0 rootfs, 1 work
	Old     string `json:"old"`  // the file frozen
	Overlay string `json:"overlay"`
	BaseID  string `json:"base_id"`
	Base    string `json:"base"`
	Format  string `json:"format"`  // of Old
	Backing string `json:"backing"` // the base Old sat on
}

const vmFileIntent = "snapshot-intent.json"

func writeIntent(vm model.VM, in intent) error {
	b, _ := json.Marshal(in)
	p := filepath.Join(vm.Runtime.VMDir, vmFileIntent)
	if err := os.WriteFile(p+".tmp", b, 0o600); err != nil {
		return err
	}
	return os.Rename(p+".tmp", p)
}

func readIntent(vm model.VM) (intent, bool) {
	var in intent
	b, err := os.ReadFile(filepath.Join(vm.Runtime.VMDir, vmFileIntent))
	if err != nil || json.Unmarshal(b, &in) != nil {
		return in, false
	}
	return in, true
}

func clearIntent(vm model.VM) { os.Remove(filepath.Join(vm.Runtime.VMDir, vmFileIntent)) }

// takeSnapshot snapshots the live vm (the caller holds its lock): pause,
// freeze its disks, save the device state and memory, resume, commit the
// directory, insert the row. Any failure after the pause resumes the VM.
func (d *Daemon) takeSnapshot(ctx context.Context, vm model.VM, req snapshotReq) (snapshotResult, error) {
	start := time.Now()
	var res snapshotResult
	if !vm.Runtime.State.Live() || !d.vmAlive(vm) {
		return res, rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "vm %s is %s: a snapshot needs its VMM running", vm.Name, vm.Runtime.State), "start it: banger vm start "+vm.Name)
	}
	if len(vm.Spec.Mounts) > 0 {
		return res, rpc.WithHint(rpc.Errorf(rpc.ErrUnavailable, "vm %s has host folders (--mount %s): qemu 7.2 cannot migrate a virtio-fs device, so it cannot be snapshotted or forked", vm.Name, mountList(vm)),
			"snapshot a VM without host folders, or copy the files in with banger vm cp")
	}
	img, err := d.store.GetImage(ctx, vm.Image)
	if err != nil {
		return res, err
	}
	if !hasAgent(img) {
		return res, rpc.WithHint(rpc.Errorf(rpc.ErrUnavailable, "vm %s runs image %s of guest contract %d: a snapshot's clones are given their identity by the guest agent (contract %d)", vm.Name, img.Name, img.GuestContract, guest.ContractAgent),
			"images built by this banger carry the agent: banger image build --name NEW")
	}
	if _, err := d.store.GetSnapshot(ctx, req.name); err == nil {
		return res, rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "snapshot %q already exists", req.name), "pick another --name, or delete it: banger snapshot delete "+req.name)
	}
	drv, err := d.snapshotter(vm)
	if err != nil {
		return res, err
	}
	if req.kind == model.SnapshotTemplate {
		d.waitSSHD(ctx, vm)
		// Nothing else uses a template's VM: end its agent session, so
		// the snapshot's agent waits for a handshake and each clone's
		// first one is answered (one taken mid-session is swallowed by
		// that session's framing, and retried).
		d.agents.drop(vm.ID)
		time.Sleep(300 * time.Millisecond)
	}
	_, accel, _ := d.chooseVMM(ctx, img.KernelPath)
	bootSpec, err := d.vmSpec(vm, img, accel)
	if err != nil {
		return res, err
	}
	machine, err := d.machineOf(ctx, vm, img, bootSpec)
	if err != nil {
		return res, err
	}
	spec := d.liveSpec(vm)
	id := newVMID()
	pending, err := snapshot.Begin(d.snapshotsDir(), id)
	if err != nil {
		return res, err
	}
	d.snapping.Store(vm.ID, true)
	defer d.snapping.Delete(vm.ID)
	wasPaused := vm.Runtime.State == model.StatePaused
	in := intent{Snapshot: id, Resume: req.resume && !wasPaused}
	if err := writeIntent(vm, in); err != nil {
		pending.Abort()
		return res, err
	}
	committed := false
	pauseStart := time.Now()
	defer func() {
		if in.Resume {
			if rerr := drv.Resume(context.WithoutCancel(ctx), spec); rerr != nil {
				d.log.ErrorContext(ctx, "resuming after a snapshot", "vm", vm.Name, "error", rerr.Error())
			}
			res.paused = time.Since(pauseStart)
		}
		if !committed {
			pending.Abort()
			if len(in.Freezes) > 0 {
				d.settleFreezes(context.WithoutCancel(ctx), vm.ID, in.Freezes)
			}
		}
		clearIntent(vm)
	}()
	if !wasPaused {
		if err := drv.Pause(ctx, spec); err != nil {
			return res, vmError(vm, fmt.Errorf("pausing: %w", err))
		}
	}
	// The disks, frozen at this instant.
	disks, vm, err := d.freezeDisks(ctx, vm, spec, &in)
	if err != nil {
		return res, vmError(vm, err)
	}
	spec = d.liveSpec(vm)
	cfg := filepath.Join(vm.Runtime.VMDir, guest.ConfigDiskName)
	if fileExists(cfg) {
		if err := disk.CopySparse(cfg, pending.Path(snapshot.FileConfig)); err != nil {
			return res, err
		}
		disks = append(disks, snapshot.Disk{ID: "config", Format: "raw", File: snapshot.FileConfig})
	}
	files := vmm.SnapshotFiles{State: pending.Path(snapshot.FileState)}
	memFile := ""
	if d.getHandles(vm).Memory == "memfd" || vm.VMM == "firecracker" {
		files.Memory, memFile = pending.Path(snapshot.FileMemory), snapshot.FileMemory
	}
	if err := drv.Snapshot(ctx, spec, files); err != nil {
		return res, vmError(vm, fmt.Errorf("saving its state: %w", err))
	}
	if in.Resume {
		if err := drv.Resume(ctx, spec); err != nil {
			d.log.ErrorContext(ctx, "resuming after a snapshot", "vm", vm.Name, "error", err.Error())
		}
		in.Resume = false
		res.paused = time.Since(pauseStart)
	}
	m := snapshot.Manifest{
		ID: id, Name: req.name, Kind: req.kind, CreatedAt: time.Now().UTC(),
		Source:  snapshot.Source{VMID: vm.ID, VMName: vm.Name, Hostname: vm.Name, IP: vm.Runtime.GuestIP, MAC: vm.Runtime.MAC},
		Machine: machine, Disks: disks, State: snapshot.FileState, Memory: memFile,
	}
	dir, err := pending.Commit(m)
	if err != nil {
		return res, err
	}
	committed = true
	mj, _ := json.Marshal(m)
	sn := model.Snapshot{ID: id, Name: req.name, Kind: req.kind, VMID: vm.ID, VMName: vm.Name, Image: img.Name,
		Dir: dir, SizeBytes: snapshot.Size(dir), Manifest: string(mj)}
	if err := d.store.CreateSnapshot(ctx, &sn); err != nil {
		os.RemoveAll(dir)
		return res, err
	}
	res.sn, res.manifest, res.took = sn, m, time.Since(start)
	d.log.InfoContext(ctx, "snapshot taken", "vm", vm.Name, "snapshot", sn.Name, "kind", sn.Kind, "id", id,
		"paused_ms", res.paused.Milliseconds(), "took_ms", res.took.Milliseconds(), "size_bytes", sn.SizeBytes)
	return res, nil
}

// freezeDisks freezes vm's system and work disks as bases and returns them
// as the snapshot's disks, with vm as it is now (its disks moved on, under
// qemu). The intent records each step before it is taken.
func (d *Daemon) freezeDisks(ctx context.Context, vm model.VM, spec vmm.Spec, in *intent) ([]snapshot.Disk, model.VM, error) {
	if err := os.MkdirAll(d.basesDir(), 0o700); err != nil {
		return nil, vm, err
	}
	var fr []freeze
	for i, dk := range spec.Disks[:2] {
		baseID := newVMID()
		f := freeze{Disk: i, Old: dk.Path, BaseID: baseID, Format: dk.Format,
			Base:    filepath.Join(d.basesDir(), baseID+"."+dk.Format),
			Overlay: filepath.Join(vm.Runtime.VMDir, fmt.Sprintf("%s-%s.qcow2", dk.ID, baseID))}
		if len(vm.Runtime.Bases) == 2 {
			f.Backing = vm.Runtime.Bases[i]
		}
		fr = append(fr, f)
	}
	in.Freezes = fr
	if err := writeIntent(vm, *in); err != nil {
		return nil, vm, err
	}
	if vm.VMM == "qemu" {
		q := qemu.New(d.cfg.Paths.Qemu)
		qf := make([]qemu.Freeze, len(fr))
		for i, f := range fr {
			qf[i] = qemu.Freeze{Overlay: f.Overlay, Base: f.Base}
		}
		if err := q.FreezeDisks(ctx, spec, qf); err != nil {
			return nil, vm, err
		}
		var err error
		if vm, err = d.recordFreezes(ctx, vm, fr); err != nil {
			return nil, vm, err
		}
	} else {
		// Firecracker's disks are raw files it keeps writing: the
		// bases are copies, made while the guest is paused.
		for _, f := range fr {
			if err := disk.Reflink(f.Old, f.Base); err != nil {
				if err := disk.CopySparse(f.Old, f.Base); err != nil {
					return nil, vm, err
				}
			}
			b := model.Base{ID: f.BaseID, Path: f.Base, Format: f.Format}
			if err := d.store.CreateBase(ctx, &b); err != nil {
				return nil, vm, err
			}
		}
	}
	var out []snapshot.Disk
	for _, f := range fr {
		os.Chmod(f.Base, 0o400)
		out = append(out, snapshot.Disk{ID: spec.Disks[f.Disk].ID, Base: f.BaseID, Format: f.Format})
	}
	return out, vm, nil
}

// recordFreezes records qemu's frozen disks: the bases' rows, the VM's new
// overlays and bases, then the old names removed. Each step can run again
// (reconcileIntent).
func (d *Daemon) recordFreezes(ctx context.Context, vm model.VM, fr []freeze) (model.VM, error) {
	have := map[string]bool{}
	if bs, err := d.store.ListBases(ctx); err == nil {
		for _, b := range bs {
			have[b.ID] = true
		}
	}
	for _, f := range fr {
		if have[f.BaseID] {
			continue
		}
		b := model.Base{ID: f.BaseID, Path: f.Base, Format: f.Format, Backing: f.Backing}
		if err := d.store.CreateBase(ctx, &b); err != nil {
			return vm, err
		}
	}
	vm, err := d.store.UpdateVMRuntime(ctx, vm.ID, func(r *model.VMRuntime) error {
		bases := []string{"", ""}
		copy(bases, r.Bases)
		for _, f := range fr {
			bases[f.Disk] = f.BaseID
			if f.Disk == 0 {
				r.OverlayPath, r.SystemOverlay = f.Overlay, "qcow2"
			} else {
				r.WorkDiskPath, r.WorkDiskFormat = f.Overlay, "qcow2"
			}
		}
		r.Bases = bases
		return nil
	})
	if err != nil {
		return vm, err
	}
	for _, f := range fr {
		if f.Old != f.Base && strings.HasPrefix(f.Old, vm.Runtime.VMDir+"/") {
			os.Remove(f.Old)
		}
	}
	return vm, nil
}

// reconcileIntent finishes or undoes a snapshot a crash cut short, for a
// VM whose VMM still runs: its disks are recorded as qemu uses them, its
// guest resumed if the snapshot had paused it, the half-written directory
// removed. (A committed snapshot whose row is missing is removed as well:
// the row is the snapshot.)
func (d *Daemon) reconcileIntent(ctx context.Context, vm model.VM) {
	in, ok := readIntent(vm)
	if !ok {
		return
	}
	log := d.log.With("vm", vm.Name, "snapshot", in.Snapshot)
	if len(in.Freezes) > 0 {
		d.settleFreezes(ctx, vm.ID, in.Freezes)
	}
	if in.Resume {
		if st, err := qemu.QueryStatus(ctx, vm.Runtime.APISockPath); vm.VMM != "qemu" || (err == nil && (st == "paused" || st == "postmigrate")) {
			if drv, err := d.snapshotter(vm); err == nil {
				if err := drv.Resume(ctx, d.liveSpec(vm)); err == nil {
					log.InfoContext(ctx, "reconcile: resumed a vm a cut-short snapshot had paused")
				}
			}
		}
	}
	clearIntent(vm) // its directory, without a row, went at reconcileSnapshotDirs
}

// --- methods ---

func (d *Daemon) vmSnapshot(ctx context.Context, p api.VMSnapshotParams) (api.SnapshotInfo, error) {
	vm, err := d.lookupVM(ctx, p.Name)
	if err != nil {
		return api.SnapshotInfo{}, err
	}
	name := p.Snapshot
	if name == "" {
		name = vm.Name + "-" + time.Now().UTC().Format("20060102-150405")
	}
	if err := model.ValidateName("snapshot", name); err != nil {
		return api.SnapshotInfo{}, fmt.Errorf("%v: %w", err, rpc.ErrBadRequest)
	}
	unlock := d.lockVM(vm.ID)
	defer unlock()
	if vm, err = d.store.GetVM(ctx, vm.ID); err != nil {
		return api.SnapshotInfo{}, err
	}
	res, err := d.takeSnapshot(ctx, vm, snapshotReq{kind: model.SnapshotVM, name: name, resume: true})
	if err != nil {
		return api.SnapshotInfo{}, err
	}
	info, err := d.snapshotInfo(ctx, res.sn)
	info.PausedMS, info.TookMS = res.paused.Milliseconds(), res.took.Milliseconds()
	return info, err
}

func (d *Daemon) snapshotInfo(ctx context.Context, sn model.Snapshot) (api.SnapshotInfo, error) {
	u, err := d.loadBaseUsers(ctx)
	if err != nil {
		return api.SnapshotInfo{Snapshot: sn, Details: json.RawMessage(sn.Manifest), UsedBy: []string{}}, err
	}
	return u.info(sn), nil
}

func decodeManifest(sn model.Snapshot) (snapshot.Manifest, error) {
	var m snapshot.Manifest
	err := json.Unmarshal([]byte(sn.Manifest), &m)
	return m, err
}

func manifestBases(m snapshot.Manifest) []string {
	var out []string
	for _, dk := range m.Disks {
		if dk.Base != "" {
			out = append(out, dk.Base)
		}
	}
	return out
}

// baseUsers answers which VMs sit on which frozen disks: the bases'
// backing chains and the VMs, read once.
type baseUsers struct {
	backing map[string]string
	vms     []model.VM
}

func (d *Daemon) loadBaseUsers(ctx context.Context) (baseUsers, error) {
	u := baseUsers{backing: map[string]string{}}
	bases, err := d.store.ListBases(ctx)
	if err != nil {
		return u, err
	}
	for _, b := range bases {
		u.backing[b.ID] = b.Backing
	}
	u.vms, err = d.store.ListVMs(ctx)
	return u, err
}

// on names the VMs whose disks sit, directly or through other bases, on
// any of ids.
func (u baseUsers) on(ids []string) []string {
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	users := []string{}
	for _, vm := range u.vms {
	chains:
		for _, top := range vm.Runtime.Bases {
			for id, n := top, 0; id != "" && n < 1000; id, n = u.backing[id], n+1 {
				if want[id] {
					users = append(users, vm.Name)
					break chains
				}
			}
		}
	}
	return users
}

// info is sn as list and show report it.
func (u baseUsers) info(sn model.Snapshot) api.SnapshotInfo {
	info := api.SnapshotInfo{Snapshot: sn, Details: json.RawMessage(sn.Manifest), UsedBy: []string{}}
	if m, err := decodeManifest(sn); err == nil {
		info.UsedBy = u.on(manifestBases(m))
	}
	return info
}

func (d *Daemon) snapshotList(ctx context.Context, p api.SnapshotListParams) ([]api.SnapshotInfo, error) {
	sns, err := d.store.ListSnapshots(ctx)
	if err != nil {
		return nil, err
	}
	u, err := d.loadBaseUsers(ctx)
	if err != nil {
		return nil, err
	}
	out := []api.SnapshotInfo{}
	for _, sn := range sns {
		if sn.Kind != model.SnapshotVM && !p.All {
			continue
		}
		info := u.info(sn)
		info.Details = nil
		out = append(out, info)
	}
	return out, nil
}

func (d *Daemon) lookupSnapshot(ctx context.Context, ref string) (model.Snapshot, error) {
	sn, err := d.store.GetSnapshot(ctx, ref)
	if errors.Is(err, rpc.ErrNotFound) {
		return sn, rpc.WithHint(err, "list snapshots: banger snapshot list --all")
	}
	return sn, err
}

func (d *Daemon) snapshotShow(ctx context.Context, p api.SnapshotRef) (api.SnapshotInfo, error) {
	sn, err := d.lookupSnapshot(ctx, p.Name)
	if err != nil {
		return api.SnapshotInfo{}, err
	}
	return d.snapshotInfo(ctx, sn)
}

// snapshotDelete removes a snapshot's row and directory, and the bases
// nothing needs any more. VMs made from it keep running and keep their
// disks: the bases they sit on stay.
func (d *Daemon) snapshotDelete(ctx context.Context, p api.SnapshotRef) (api.SnapshotInfo, error) {
	sn, err := d.lookupSnapshot(ctx, p.Name)
	if err != nil {
		return api.SnapshotInfo{}, err
	}
	info, _ := d.snapshotInfo(ctx, sn)
	if err := d.deleteSnapshot(ctx, sn); err != nil {
		return info, err
	}
	return info, nil
}

func (d *Daemon) deleteSnapshot(ctx context.Context, sn model.Snapshot) error {
	d.snapMu.Lock()
	defer d.snapMu.Unlock()
	if err := d.store.DeleteSnapshot(ctx, sn.ID); err != nil {
		return err
	}
	if err := os.RemoveAll(sn.Dir); err != nil {
		d.log.WarnContext(ctx, "removing a snapshot's directory", "dir", sn.Dir, "error", err.Error())
	}
	d.log.InfoContext(ctx, "snapshot deleted", "snapshot", sn.Name, "id", sn.ID, "kind", sn.Kind)
	d.gcBasesLocked(ctx)
	return nil
}

// gcBases deletes the bases that no snapshot and no VM needs.
func (d *Daemon) gcBases(ctx context.Context) {
	d.snapMu.Lock()
	defer d.snapMu.Unlock()
	d.gcBasesLocked(ctx)
}

func (d *Daemon) gcBasesLocked(ctx context.Context) {
	bases, err := d.store.ListBases(ctx)
	if err != nil || len(bases) == 0 {
		return
	}
	var roots []string
	sns, err := d.store.ListSnapshots(ctx)
	if err != nil {
		return
	}
	for _, sn := range sns {
		m, err := decodeManifest(sn)
		if err != nil {
			return // keep everything rather than guess
		}
		roots = append(roots, manifestBases(m)...)
	}
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return
	}
	for _, vm := range vms {
		roots = append(roots, vm.Runtime.Bases...)
		if in, ok := readIntent(vm); ok {
			for _, f := range in.Freezes {
				roots = append(roots, f.BaseID)
			}
		}
	}
	for _, b := range snapshot.Unreferenced(bases, roots) {
		if err := os.Remove(b.Path); err != nil && !os.IsNotExist(err) {
			d.log.WarnContext(ctx, "removing a frozen disk", "base", b.ID, "path", b.Path, "error", err.Error())
			continue
		}
		_ = d.store.DeleteBase(ctx, b.ID)
		d.log.InfoContext(ctx, "frozen disk removed: nothing needs it", "base", b.ID, "path", b.Path)
	}
}

// reconcileSnapshotDirs runs at start, before the VMs are re-adopted: no
// snapshot is in progress, so a directory without a row (a temporary one,
// or one committed just before a crash) is removed, as is a frozen disk
// without a row that no cut-short snapshot of a live VM names. A VM whose
// VMM died during a snapshot keeps its old disks (frozen, not changed since:
// the guest was paused) and loses what the snapshot had begun.
func (d *Daemon) reconcileSnapshotDirs(ctx context.Context) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return
	}
	pending := map[string]bool{} // base files a live VM's intent names
	for _, vm := range vms {
		in, ok := readIntent(vm)
		if !ok {
			continue
		}
		h := d.rediscover(vm)
		d.setHandlesMem(vm, h)
		if vm.Runtime.State.Live() && d.vmAlive(vm) {
			for _, f := range in.Freezes {
				pending[f.Base] = true
			}
			continue // reconcileIntent finishes or undoes it
		}
		d.settleFreezes(ctx, vm.ID, in.Freezes) // a dead VMM: undone
		clearIntent(vm)
		d.log.InfoContext(ctx, "reconcile: undid a snapshot its VMM did not live through", "vm", vm.Name, "snapshot", in.Snapshot)
	}
	for _, l := range d.snapshotLeftovers(ctx) {
		if l.Kind == "base" && pending[l.What] {
			continue
		}
		if err := os.RemoveAll(l.What); err == nil {
			d.log.InfoContext(ctx, "reconcile: removed a leftover", "kind", l.Kind, "path", l.What, "why", l.Detail)
		}
	}
}

// snapshotLeftovers are the snapshot directories and frozen disks on disk
// that no row accounts for.
func (d *Daemon) snapshotLeftovers(ctx context.Context) []api.Leak {
	var out []api.Leak
	sns, err := d.store.ListSnapshots(ctx)
	if err != nil {
		return nil
	}
	dirs := map[string]bool{}
	for _, sn := range sns {
		dirs[filepath.Clean(sn.Dir)] = true
	}
	ents, _ := os.ReadDir(d.snapshotsDir())
	for _, e := range ents {
		p := filepath.Join(d.snapshotsDir(), e.Name())
		switch {
		case dirs[p]:
		case snapshot.IsTemp(e.Name()):
			out = append(out, api.Leak{Kind: "snapshot-dir", What: p, Detail: "a snapshot never finished (" + humanBytes(snapshot.Size(p)) + ")"})
		default:
			out = append(out, api.Leak{Kind: "snapshot-dir", What: p, Detail: "no snapshot row (" + humanBytes(snapshot.Size(p)) + ")"})
		}
	}
	bases, err := d.store.ListBases(ctx)
	if err != nil {
		return out
	}
	files := map[string]bool{}
	for _, b := range bases {
		files[filepath.Clean(b.Path)] = true
	}
	ents, _ = os.ReadDir(d.basesDir())
	for _, e := range ents {
		p := filepath.Join(d.basesDir(), e.Name())
		if !files[p] {
			out = append(out, api.Leak{Kind: "base", What: p, Detail: "a frozen disk without a row"})
		}
	}
	return out
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d KiB", n>>10)
}

// snapshotRunning reports whether a snapshot of VM id is being taken.
func (d *Daemon) snapshotRunning(id string) bool {
	_, ok := d.snapping.Load(id)
	return ok
}

// waitSSHD waits (at most 20 s) for the guest's sshd to listen (its pid
// file): a template taken then has sshd running in every clone, which
// re-reads its new host key on a SIGHUP, instead of an sshd half started
// that each clone's identity must wait for.
func (d *Daemon) waitSSHD(ctx context.Context, vm model.VM) {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		st, err := d.agentStream(ctx, vm)
		if err == nil {
			r, err := agent.Stat(ctx, st, "/run/sshd.pid")
			st.Close()
			if err == nil && r.Exists && r.Size > 0 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	d.log.WarnContext(ctx, "template: sshd wrote no pid file in 20 s; each clone waits for it", "vm", vm.Name)
}

// settleFreezes makes the VM's row and files agree with what a snapshot
// that failed or was cut short did to its disks: a disk qemu writes to
// its new overlay on (query-block) is recorded as frozen; the rest is
// undone (the overlay and the base link removed, unless a row names
// them). A dead VMM wrote nothing to a new overlay (the guest was paused):
// its old disks are whole.
func (d *Daemon) settleFreezes(ctx context.Context, id string, fr []freeze) {
	vm, err := d.store.GetVM(ctx, id)
	if err != nil {
		return
	}
	log := d.log.With("vm", vm.Name)
	var switched, undo []freeze
	if vm.VMM == "qemu" && d.vmAlive(vm) {
		active, err := qemu.New(d.cfg.Paths.Qemu).ActiveDisks(ctx, d.liveSpec(vm))
		if err != nil {
			log.ErrorContext(ctx, "settling a snapshot's disks: query-block", "error", err.Error())
			return // keep everything: the next start settles it
		}
		for _, f := range fr {
			if f.Disk < len(active) && active[f.Disk] == f.Overlay {
				switched = append(switched, f)
			} else {
				undo = append(undo, f)
			}
		}
	} else {
		undo = fr
	}
	if len(switched) > 0 {
		for _, f := range switched {
			if !fileExists(f.Base) {
				if err := os.Link(f.Old, f.Base); err != nil {
					log.ErrorContext(ctx, "settling a snapshot's disks: a frozen disk is gone", "file", f.Old, "error", err.Error())
				}
			}
		}
		if vm, err = d.recordFreezes(ctx, vm, switched); err != nil {
			log.ErrorContext(ctx, "settling a snapshot's disks: recording", "error", err.Error())
			return
		}
		log.InfoContext(ctx, "recorded the disks a failed snapshot froze", "disks", len(switched))
	}
	rows := map[string]bool{}
	if bs, err := d.store.ListBases(ctx); err == nil {
		for _, b := range bs {
			rows[b.ID] = true
		}
	}
	for _, f := range undo {
		if f.Overlay != vm.Runtime.OverlayPath && f.Overlay != vm.Runtime.WorkDiskPath {
			os.Remove(f.Overlay)
		}
		if !rows[f.BaseID] {
			os.Remove(f.Base)
		}
	}
}
