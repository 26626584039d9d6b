package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/runner"
	"github.com/banger-dev/banger/internal/snapshot"
	"github.com/banger-dev/banger/internal/vmm"
)

// Stages of a VM made from a snapshot (create --from, a warm create, a
// fork) and of an in-place restore.
var (
	restoreStages  = []string{"allocate", "disks", "network", "restore", "identity", "agent ready"}
	forkStages     = []string{"snapshot", "allocate", "disks", "network", "restore", "identity", "agent ready"}
	rollbackStages = []string{"stop", "disks", "network", "restore", "identity", "agent ready"}
	templateStages = []string{"allocate", "system overlay", "work disk", "network", "vmm start", "boot", "agent ready", "template"}
	errNoTemplate  = errors.New("no warm template")
	templatePrefix = "template-"
)

// vmFileRestoring, in a VM's directory, marks a restore whose identity is
// not set yet.
const vmFileRestoring = "restoring"

// restoreCheck refuses a snapshot that cannot become vm here, naming each
// mismatch and the way out.
func (d *Daemon) restoreCheck(ctx context.Context, vm model.VM, img model.Image, m snapshot.Manifest, sizeMatters bool) error {
	if len(vm.Spec.Mounts) > 0 {
		return rpc.WithHint(rpc.Errorf(rpc.ErrUnavailable, "vm %s has host folders (--mount %s): qemu 7.2 cannot restore a VM with a virtio-fs device", vm.Name, mountList(vm)),
			"make a new VM from the snapshot without folders: banger vm create --from "+m.Name+" --name NEW")
	}
	_, accel, _ := d.chooseVMM(ctx, img.KernelPath)
	spec, err := d.vmSpec(vm, img, accel)
	if err != nil {
		return err
	}
	here, err := d.machineOf(ctx, vm, img, spec)
	if err != nil {
		return err
	}
	if err := m.Machine.Compare(here, sizeMatters); err != nil {
		return rpc.WithHint(fmt.Errorf("snapshot %s: %w: %w", m.Name, err, rpc.ErrConflict),
			"restore it with the VMM, image, memory and vCPUs it was made with, or boot the VM cold (banger vm create --cold)")
	}
	return nil
}

// cloneDisks makes vm's disks over the snapshot's frozen ones: a qcow2
// overlay per base (qemu), a copy (Firecracker), and a config disk with
// vm's own host key. vm's row records them.
func (d *Daemon) cloneDisks(ctx context.Context, vm model.VM, m snapshot.Manifest) (model.VM, string, error) {
	bases, err := d.store.ListBases(ctx)
	if err != nil {
		return vm, "", err
	}
	byID := map[string]model.Base{}
	for _, b := range bases {
		byID[b.ID] = b
	}
	r := &runner.Exec{}
	var rootPath, workPath string
	var tops []string
	for _, dk := range m.Disks {
		if dk.Base == "" {
			continue
		}
		b, ok := byID[dk.Base]
		if !ok || !fileExists(b.Path) {
			return vm, "", fmt.Errorf("snapshot %s: its frozen disk %s (%s) is missing: %w", m.Name, dk.ID, dk.Base, rpc.ErrNotFound)
		}
		var out string
		if vm.VMM == "qemu" {
			out = filepath.Join(vm.Runtime.VMDir, dk.ID+"-"+newVMID()[:8]+".qcow2")
			if _, err := r.Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", b.Format, "-b", b.Path, out); err != nil {
				return vm, "", fmt.Errorf("overlay over %s: %w", b.Path, err)
			}
		} else {
			out = filepath.Join(vm.Runtime.VMDir, dk.ID+"-"+newVMID()[:8]+".raw")
			if err := disk.Reflink(b.Path, out); err != nil {
				if err := disk.CopySparse(b.Path, out); err != nil {
					return vm, "", err
				}
			}
			os.Chmod(out, 0o600)
		}
		switch dk.ID {
		case "rootfs":
			rootPath = out
		case "work":
			workPath = out
		}
		tops = append(tops, dk.Base)
	}
	if rootPath == "" || workPath == "" {
		return vm, "", fmt.Errorf("snapshot %s has no system or work disk", m.Name)
	}
	hostKey, err := d.makeHostKey(ctx, vm)
	if err != nil {
		return vm, "", err
	}
	if err := disk.WriteConfigDisk(filepath.Join(vm.Runtime.VMDir, guest.ConfigDiskName), hostKey, nil); err != nil {
		return vm, "", err
	}
	format := "qcow2"
	if vm.VMM != "qemu" {
		format = "raw"
	}
	vm, err = d.store.UpdateVMRuntime(ctx, vm.ID, func(rt *model.VMRuntime) error {
		rt.OverlayPath, rt.SystemOverlay = rootPath, format
		if format == "raw" {
			rt.SystemOverlay = disk.StrategySparseCopy
		}
		rt.WorkDiskPath, rt.WorkDiskFormat = workPath, format
		rt.Origin = m.ID
		if vm.VMM == "qemu" {
			rt.Bases = tops
		} else {
			rt.Bases = nil // copies: nothing sits on the bases
		}
		return nil
	})
	return vm, hostKey, err
}

// restoreVM boots vm (its disks made) from the snapshot's state: network,
// the VMM's restore, the identity through the agent, the agent's hello.
func (d *Daemon) restoreVM(ctx context.Context, o *operation, vm model.VM, img model.Image, sn model.Snapshot, m snapshot.Manifest, hostKey string) (model.VM, error) {
	h := &model.VMHandles{}
	if err := o.stage(ctx, d.log, "network", func() (string, error) {
		n, err := d.ensureNetwork(ctx)
		if err != nil {
			return "", err
		}
		nid, err := d.network(ctx)
		if err != nil {
			return "", err
		}
		tap, pooled, err := d.takeTap(ctx, vm, nid)
		if err != nil {
			return "", err
		}
		h.TapDevice = tap
		d.setHandles(vm, h)
		from := "new"
		if pooled {
			from = "from the pool"
		}
		return fmt.Sprintf("%s (%s) on %s, %s", tap, from, n.Bridge, vm.Runtime.GuestIP), nil
	}); err != nil {
		return vm, err
	}
	drv, err := d.snapshotter(vm)
	if err != nil {
		return vm, err
	}
	var spec vmm.Spec
	// Until its identity is set, a restored VM is the snapshot's: a
	// bangerd killed in between stops it at its next start
	// (reconcileVMs), rather than keep a VM with another's identity and
	// its link down.
	if err := os.WriteFile(filepath.Join(vm.Runtime.VMDir, vmFileRestoring), []byte(sn.ID+"\n"), 0o600); err != nil {
		return vm, err
	}
	if err := o.stage(ctx, d.log, "restore", func() (string, error) {
		_, accel, _ := d.chooseVMM(ctx, img.KernelPath)
		spec, err = d.vmSpec(vm, img, accel)
		if err != nil {
			return "", err
		}
		if spec.AgentSocket != "" {
			os.Remove(spec.AgentSocket)
		}
		if err := d.openTapForQemu(ctx, &spec, h); err != nil {
			return "", err
		}
		if spec.TapFile != nil {
			defer spec.TapFile.Close()
		}
		files := vmm.SnapshotFiles{State: filepath.Join(sn.Dir, m.State)}
		if m.Memory != "" {
			files.Memory = filepath.Join(sn.Dir, m.Memory)
		}
		pid, err := drv.Restore(ctx, spec, files)
		if err != nil {
			return "", vmError(vm, err)
		}
		h.PID = pid
		switch {
		case vm.VMM != "qemu":
		case m.Memory != "":
			h.Memory = "snapshot"
		default:
			h.Memory = "memfd" // the stream filled the VM's own memfd
		}
		d.setHandles(vm, h)
		vm.Runtime.State, vm.Runtime.LastError = model.StateRunning, ""
		if err := d.store.UpdateVM(ctx, &vm); err != nil {
			return "", err
		}
		mem := "its memory mapped copy-on-write from the snapshot"
		if m.Memory == "" {
			mem = "its memory loaded from the snapshot's stream"
		}
		link := "link down until its identity is set"
		if vm.VMM != "qemu" {
			link = "no link control: its identity is set next" // Firecracker
		}
		return fmt.Sprintf("%s, pid %d, from snapshot %s (%s); %s", vm.VMM, pid, sn.Name, mem, link), nil
	}); err != nil {
		return vm, err
	}
	deadline := time.Now().Add(d.cfg.VM.BootTimeout.D())
	if err := o.stage(ctx, d.log, "identity", func() (string, error) {
		detail, err := d.identify(ctx, vm, h.PID, hostKey, deadline, sn.Kind == model.SnapshotTemplate)
		if err != nil {
			return "", vmError(vm, err)
		}
		if err := drv.SetLink(ctx, spec, true); err != nil {
			return "", vmError(vm, fmt.Errorf("bringing the link up: %w", err))
		}
		os.Remove(filepath.Join(vm.Runtime.VMDir, vmFileRestoring))
		return detail, nil
	}); err != nil {
		return vm, err
	}
	err = o.stage(ctx, d.log, "agent ready", func() (string, error) {
		res, err := d.waitAgent(ctx, vm, h.PID, deadline)
		return fmt.Sprintf("banger-agent %s, restored guest up %.2f s", res.Release, float64(res.UptimeMS)/1000), err
	})
	return vm, err
}

// openTapForQemu passes an unprivileged qemu its TAP open (the helper
// opens it), as a boot does.
func (d *Daemon) openTapForQemu(ctx context.Context, spec *vmm.Spec, h *model.VMHandles) error {
	if os.Geteuid() == 0 || spec.TapName == "" || d.cfg.VMM == "firecracker" || spec.VSockPath != "" && spec.AgentSocket == "" {
		return nil
	}
	hc, err := d.helperClient(ctx)
	if err != nil {
		return err
	}
	f, _, err := hc.OpenTap(ctx, h.TapDevice)
	if err != nil {
		return fmt.Errorf("opening TAP %s: %w", h.TapDevice, err)
	}
	spec.TapFile = f
	return nil
}

// --- a VM from a snapshot: create --from, warm creates, forks ---

// createFrom runs a create from snapshot sn (the caller allocated vm).
func (d *Daemon) createFrom(ctx context.Context, o *operation, vm model.VM, img model.Image, sn model.Snapshot) (model.VM, error) {
	m, err := decodeManifest(sn)
	if err != nil {
		return vm, fmt.Errorf("snapshot %s: %w", sn.Name, err)
	}
	var hostKey string
	if err := o.stage(ctx, d.log, "disks", func() (string, error) {
		if err := d.ensureSSHKey(ctx); err != nil {
			return "", err
		}
		vm, hostKey, err = d.cloneDisks(ctx, vm, m)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("over snapshot %s's frozen disks (%s); a host key of its own", sn.Name, vm.Runtime.SystemOverlay), nil
	}); err != nil {
		return vm, err
	}
	return d.restoreVM(ctx, o, vm, img, sn, m, hostKey)
}

// warmTemplate returns the template snapshot a create of p can restore on
// this host, or errNoTemplate with the reason.
func (d *Daemon) warmTemplate(ctx context.Context, vm model.VM, img model.Image) (model.Snapshot, error) {
	sns, err := d.store.ListSnapshots(ctx)
	if err != nil {
		return model.Snapshot{}, err
	}
	reason := fmt.Errorf("%w for image %s yet (the first create of a spec makes one; or banger image warm %s)", errNoTemplate, img.Name, img.Name)
	for _, sn := range sns {
		if sn.Kind != model.SnapshotTemplate || sn.Image != img.Name {
			continue
		}
		m, err := decodeManifest(sn)
		if err != nil {
			continue
		}
		if err := d.restoreCheck(ctx, vm, img, m, true); err != nil {
			reason = fmt.Errorf("%w matching: template %s: %v", errNoTemplate, sn.Name, err)
			continue
		}
		return sn, nil
	}
	return model.Snapshot{}, reason
}

// makeTemplate snapshots vm, just booted cold, as its image's warm template
// for its spec (the create's last stage), unless one exists.
func (d *Daemon) makeTemplate(ctx context.Context, o *operation, vm model.VM, img model.Image) error {
	return o.stage(ctx, d.log, "template", func() (string, error) {
		d.snapMu.Lock()
		if _, err := d.warmTemplate(ctx, vm, img); err == nil {
			d.snapMu.Unlock()
			return "a warm template exists already", nil
		}
		d.snapMu.Unlock()
		unlock := d.lockVM(vm.ID)
		defer unlock()
		name := fmt.Sprintf("%s%s-%dx%d-%s", templatePrefix, img.Name, vm.Spec.VCPUs, vm.Spec.MemoryMiB, newVMID()[:6])
		res, err := d.takeSnapshot(ctx, vm, snapshotReq{kind: model.SnapshotTemplate, name: name, resume: true})
		if err != nil {
			// A create that worked is not failed by its template.
			d.log.WarnContext(ctx, "making the warm template", "vm", vm.Name, "error", err.Error())
			return "not made: " + err.Error(), nil
		}
		d.dropStaleTemplates(ctx, vm, img, res.sn.ID)
		return fmt.Sprintf("%s saved (paused the VM %d ms): the next creates of this image and size restore it", name, res.paused.Milliseconds()), nil
	})
}

// dropStaleTemplates deletes the templates of img for vm's size that this
// host can no longer restore (the image was rebuilt, qemu upgraded), now
// that keep replaces them.
func (d *Daemon) dropStaleTemplates(ctx context.Context, vm model.VM, img model.Image, keep string) {
	sns, err := d.store.ListSnapshots(ctx)
	if err != nil {
		return
	}
	for _, sn := range sns {
		if sn.Kind != model.SnapshotTemplate || sn.Image != img.Name || sn.ID == keep {
			continue
		}
		m, err := decodeManifest(sn)
		if err != nil || m.Machine.VCPUs != vm.Spec.VCPUs || m.Machine.MemoryMiB != vm.Spec.MemoryMiB || m.Machine.DiskSizeBytes != vm.Spec.DiskSizeBytes {
			continue
		}
		if err := d.restoreCheck(ctx, vm, img, m, true); err != nil {
			d.log.InfoContext(ctx, "deleting a warm template this host cannot restore", "snapshot", sn.Name, "why", err.Error())
			_ = d.deleteSnapshot(ctx, sn)
		}
	}
}

// vmForkBegin makes a new VM from a running one: a snapshot of the
// source (paused for as long as that takes), then a create from it. The
// fork's snapshot directory is removed once the new VM runs; the frozen
// disks stay, under both VMs.
func (d *Daemon) vmForkBegin(ctx context.Context, p api.VMForkParams) (api.Operation, error) {
	src, err := d.lookupVM(ctx, p.Source)
	if err != nil {
		return api.Operation{}, err
	}
	if err := d.checkNewName(ctx, p.New); err != nil {
		return api.Operation{}, err
	}
	img, err := d.store.GetImage(ctx, src.Image)
	if err != nil {
		return api.Operation{}, err
	}
	if len(src.Spec.Mounts) > 0 {
		return api.Operation{}, rpc.WithHint(rpc.Errorf(rpc.ErrUnavailable, "vm %s has host folders (--mount %s): qemu 7.2 cannot migrate a virtio-fs device, so it cannot be forked", src.Name, mountList(src)),
			"create a new VM with the same folders: banger vm create --mount ...")
	}
	o := d.ops.start(ctx, "vm.fork", p.New, forkStages)
	var res snapshotResult
	if err := o.stage(ctx, d.log, "snapshot", func() (string, error) {
		unlock := d.lockVM(src.ID)
		defer unlock()
		cur, err := d.store.GetVM(ctx, src.ID)
		if err != nil {
			return "", err
		}
		res, err = d.takeSnapshot(ctx, cur, snapshotReq{kind: model.SnapshotFork, name: "fork-" + p.New + "-" + newVMID()[:6], resume: true})
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("of %s (paused %d ms)", src.Name, res.paused.Milliseconds()), nil
	}); err != nil {
		o.finish(nil, err)
		return api.Operation{}, err
	}
	cp := api.VMCreateParams{Name: p.New, Image: src.Image, VCPUs: src.Spec.VCPUs, MemoryMiB: src.Spec.MemoryMiB, DiskSizeBytes: src.Spec.DiskSizeBytes}
	vm, err := d.allocateStage(ctx, o, cp)
	if err != nil {
		d.deleteSnapshot(context.WithoutCancel(ctx), res.sn)
		o.finish(nil, err)
		return api.Operation{}, err
	}
	bctx := context.WithoutCancel(ctx)
	go func() {
		defer d.deleteSnapshot(bctx, res.sn) // the frozen disks stay: both VMs sit on them
		vm, err := d.createFrom(bctx, o, vm, img, res.sn)
		d.endVMOp(bctx, o, vm, err)
	}()
	return o.snapshot(), nil
}

// vmRestoreBegin rolls a VM back to a snapshot in place: its VMM is
// stopped (what it held since is discarded), its disks made anew over the
// snapshot's, its memory and devices restored, its own identity set again
// (a new entropy seed and the clock, whatever snapshot it came from).
func (d *Daemon) vmRestoreBegin(ctx context.Context, p api.VMRestoreParams) (api.Operation, error) {
	vm, err := d.lookupVM(ctx, p.Name)
	if err != nil {
		return api.Operation{}, err
	}
	sn, err := d.lookupSnapshot(ctx, p.Snapshot)
	if err != nil {
		return api.Operation{}, err
	}
	m, err := decodeManifest(sn)
	if err != nil {
		return api.Operation{}, err
	}
	img, err := d.store.GetImage(ctx, vm.Image)
	if err != nil {
		return api.Operation{}, err
	}
	if err := d.restoreCheck(ctx, vm, img, m, false); err != nil {
		return api.Operation{}, err
	}
	if vm.Runtime.State == model.StateCreating {
		return api.Operation{}, rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "vm %s is being created", vm.Name), "wait for the create to end: banger vm show "+vm.Name)
	}
	o := d.ops.start(ctx, "vm.restore", vm.Name, rollbackStages)
	bctx := context.WithoutCancel(ctx)
	go func() {
		unlock := d.lockVM(vm.ID)
		defer unlock()
		vm, err := d.rollback(bctx, o, vm, img, sn, m)
		if err != nil {
			d.failCreate(bctx, o, vm, err)
			return
		}
		vm = d.rememberBoot(bctx, vm, o)
		d.gcBases(bctx)
		o.finish(d.vmInfo(bctx, vm), nil)
	}()
	return o.snapshot(), nil
}

func (d *Daemon) rollback(ctx context.Context, o *operation, vm model.VM, img model.Image, sn model.Snapshot, m snapshot.Manifest) (model.VM, error) {
	if err := o.stage(ctx, d.log, "stop", func() (string, error) {
		if !d.vmAlive(vm) {
			return "it was not running", nil
		}
		d.releaseRuntime(ctx, vm)
		return "its VMM killed: what it held since the snapshot is discarded", nil
	}); err != nil {
		return vm, err
	}
	var hostKey string
	if err := o.stage(ctx, d.log, "disks", func() (string, error) {
		old := []string{vm.Runtime.OverlayPath, vm.Runtime.WorkDiskPath}
		var err error
		// New files: until the row names them, the old disks stay.
		if vm, hostKey, err = d.cloneDisks(ctx, vm, m); err != nil {
			return "", err
		}
		for _, p := range old {
			if p != vm.Runtime.OverlayPath && p != vm.Runtime.WorkDiskPath && strings.HasPrefix(p, vm.Runtime.VMDir+"/") {
				os.Remove(p)
			}
		}
		return fmt.Sprintf("over snapshot %s's frozen disks; what the VM wrote since is gone", sn.Name), nil
	}); err != nil {
		return vm, err
	}
	return d.restoreVM(ctx, o, vm, img, sn, m, hostKey)
}

// checkNewName refuses a name a new VM cannot take.
func (d *Daemon) checkNewName(ctx context.Context, name string) error {
	if err := model.ValidateName("vm", name); err != nil {
		return fmt.Errorf("%v: %w", err, rpc.ErrBadRequest)
	}
	if _, err := d.store.GetVMByName(ctx, name); err == nil {
		return rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "vm %q already exists", name), "pick another --name, or remove it: banger vm delete "+name)
	} else if !errors.Is(err, rpc.ErrNotFound) {
		return err
	}
	return nil
}

// allocateStage runs the allocate stage of o for a new VM.
// how, when set, says how the VM comes up (a restore of which snapshot, or
// a cold boot and why).
func (d *Daemon) allocateStage(ctx context.Context, o *operation, p api.VMCreateParams, how ...string) (model.VM, error) {
	var vm model.VM
	err := o.stage(ctx, d.log, "allocate", func() (string, error) {
		var err error
		vm, err = d.allocateVM(ctx, p)
		detail := fmt.Sprintf("id %s, ip %s", vm.ID, vm.Runtime.GuestIP)
		if len(how) > 0 && how[0] != "" {
			detail += "; " + how[0]
		}
		return detail, err
	})
	return vm, err
}

// imageWarmBegin makes image p.Name's warm template for a VM spec: a
// VM booted cold (named warm-IMAGE-XXXXXX, gone at the end) and
// snapshotted at agent-ready. An existing matching template is kept,
// unless Force.
func (d *Daemon) imageWarmBegin(ctx context.Context, p api.ImageWarmParams) (api.Operation, error) {
	img, err := d.store.GetImage(ctx, p.Name)
	if err != nil {
		return api.Operation{}, rpc.WithHint(err, "list images: banger image list")
	}
	cp := api.VMCreateParams{Name: "warm-" + img.Name + "-" + newVMID()[:6], Image: img.Name, VCPUs: p.VCPUs, MemoryMiB: p.MemoryMiB, DiskSizeBytes: p.DiskSizeBytes}
	if len(cp.Name) > 63 {
		cp.Name = "warm-" + newVMID()[:12]
	}
	d.createDefaults(&cp)
	probe := d.probeVM(ctx, cp)
	if sn, err := d.warmTemplate(ctx, probe, img); err == nil {
		if !p.Force {
			o := d.ops.start(ctx, "image.warm", img.Name, nil)
			info, _ := d.snapshotInfo(ctx, sn)
			o.finish(info, nil)
			return o.snapshot(), nil
		}
		if err := d.deleteSnapshot(ctx, sn); err != nil {
			return api.Operation{}, err
		}
	}
	o := d.ops.start(ctx, "image.warm", img.Name, append(append([]string{}, createStages...), "template", "discard"))
	vm, err := d.allocateStage(ctx, o, cp)
	if err != nil {
		o.finish(nil, err)
		return api.Operation{}, err
	}
	bctx := context.WithoutCancel(ctx)
	go func() {
		discard := func() error {
			return o.stage(bctx, d.log, "discard", func() (string, error) {
				if _, err := d.vmDelete(bctx, api.VMRef{Name: vm.Name, Force: true}); err != nil {
					return "", err
				}
				return "the VM it was taken from deleted", nil
			})
		}
		vm, err := d.provisionAndBoot(bctx, o, vm, img)
		if err != nil {
			d.failCreate(bctx, o, vm, err)
			_, _ = d.vmDelete(bctx, api.VMRef{Name: vm.Name, Force: true})
			return
		}
		var res snapshotResult
		if err := o.stage(bctx, d.log, "template", func() (string, error) {
			unlock := d.lockVM(vm.ID)
			defer unlock()
			name := fmt.Sprintf("%s%s-%dx%d-%s", templatePrefix, img.Name, vm.Spec.VCPUs, vm.Spec.MemoryMiB, newVMID()[:6])
			res, err = d.takeSnapshot(bctx, vm, snapshotReq{kind: model.SnapshotTemplate, name: name})
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("%s saved (%d MB)", name, res.sn.SizeBytes>>20), nil
		}); err != nil {
			_ = discard()
			o.finish(nil, err)
			return
		}
		if err := discard(); err != nil {
			d.log.WarnContext(bctx, "image warm: deleting its VM", "vm", vm.Name, "error", err.Error())
		}
		info, _ := d.snapshotInfo(bctx, res.sn)
		o.finish(info, nil)
	}()
	return o.snapshot(), nil
}
