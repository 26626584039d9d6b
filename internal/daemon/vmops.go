package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/vmm/firecracker"
	"github.com/banger-dev/banger/internal/vmm/qemu"
)

// handlesFile is the per-VM scratch file of transient handles.
const handlesFile = "handles.json"

// setHandles records a VM's kernel-level handles in memory and in its
// handles.json, so a restarted daemon can find or tear them down.
func (d *Daemon) setHandles(vm model.VM, h *model.VMHandles) {
	d.handlesMu.Lock()
	c := *h
	c.FS = slices.Clone(h.FS)
	d.handles[vm.ID] = &c
	d.handlesMu.Unlock()
	data, _ := json.Marshal(h)
	tmp := filepath.Join(vm.Runtime.VMDir, handlesFile+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err == nil {
		_ = os.Rename(tmp, filepath.Join(vm.Runtime.VMDir, handlesFile))
	}
}

// getHandles returns the VM's handles from memory, else its scratch file.
func (d *Daemon) getHandles(vm model.VM) *model.VMHandles {
	d.handlesMu.Lock()
	defer d.handlesMu.Unlock()
	if h, ok := d.handles[vm.ID]; ok {
		c := *h
		c.FS = slices.Clone(h.FS)
		return &c
	}
	h := readHandlesFile(vm.Runtime.VMDir)
	d.handles[vm.ID] = h
	c := *h
	c.FS = slices.Clone(h.FS)
	return &c
}

func (d *Daemon) dropHandles(vm model.VM) {
	d.handlesMu.Lock()
	delete(d.handles, vm.ID)
	d.handlesMu.Unlock()
	os.Remove(filepath.Join(vm.Runtime.VMDir, handlesFile))
}

// vmAlive is the one answer to "is this VM's VMM running": its recorded
// pid is alive and is the VMM serving this VM's API socket.
func (d *Daemon) vmAlive(vm model.VM) bool {
	h := d.getHandles(vm)
	if !processAlive(h.PID) {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", h.PID))
	return err == nil && strings.Contains(string(cmdline), vm.Runtime.APISockPath)
}

// releaseRuntime kills the VMM if it still runs and removes the TAP.
func (d *Daemon) releaseRuntime(ctx context.Context, vm model.VM) {
	if vm.ID == "" {
		return
	}
	h := d.getHandles(vm)
	if d.vmAlive(vm) {
		_ = syscall.Kill(h.PID, syscall.SIGKILL)
		waitExit(h.PID, 5*time.Second)
	}
	d.agents.drop(vm.ID)
	d.closePorts(vm)
	d.stopFS(vm, h)
	d.returnTap(ctx, h.TapDevice)
	d.dropHandles(vm)
	// A restore's marker belongs to the VMM just released: a later boot
	// must not be stopped for it.
	if vm.Runtime.VMDir != "" {
		os.Remove(filepath.Join(vm.Runtime.VMDir, vmFileRestoring))
	}
}

func waitExit(pid int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if !processAlive(pid) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return !processAlive(pid)
}

// rememberBoot records the stages of a create or start, with their
// durations, in the VM's row (vm show prints them; -o json carries them).
func (d *Daemon) rememberBoot(ctx context.Context, vm model.VM, o *operation) model.VM {
	var stages []model.BootStage
	for _, st := range o.snapshot().Stages {
		stages = append(stages, model.BootStage{Name: st.Name, DurationMS: st.DurationMS, Detail: st.Detail})
	}
	updated, err := d.store.UpdateVMRuntime(ctx, vm.ID, func(r *model.VMRuntime) error {
		r.LastBoot = stages
		return nil
	})
	if err != nil {
		d.log.WarnContext(ctx, "recording boot stages", "vm", vm.Name, "error", err.Error())
		return vm
	}
	return updated
}

func (d *Daemon) vmInfo(ctx context.Context, vm model.VM) api.VMInfo {
	img, _ := d.store.GetImage(ctx, vm.Image)
	return d.vmInfoOf(vm, img)
}

// vmInfoOf is vmInfo with vm's image at hand.
func (d *Daemon) vmInfoOf(vm model.VM, img model.Image) api.VMInfo {
	info := api.VMInfo{VM: vm, Alive: d.vmAlive(vm), Agent: hasAgent(img)}
	if info.Alive {
		info.Handles = d.getHandles(vm)
	}
	info.Mounts, info.Ports = d.shareStates(vm, info.Handles)
	return info
}

func (d *Daemon) lookupVM(ctx context.Context, ref string) (model.VM, error) {
	vm, err := d.store.LookupVM(ctx, ref)
	if errors.Is(err, rpc.ErrNotFound) {
		return vm, rpc.WithHint(err, "list VMs: banger vm list")
	}
	return vm, err
}

func (d *Daemon) vmList(ctx context.Context, _ noParams) ([]api.VMInfo, error) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	imgs, err := d.store.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	byName := map[string]model.Image{}
	for _, img := range imgs {
		byName[img.Name] = img
	}
	out := make([]api.VMInfo, 0, len(vms))
	for _, vm := range vms {
		out = append(out, d.vmInfoOf(vm, byName[vm.Image]))
	}
	return out, nil
}

func (d *Daemon) vmShow(ctx context.Context, p api.VMRef) (api.VMInfo, error) {
	vm, err := d.lookupVM(ctx, p.Name)
	if err != nil {
		return api.VMInfo{}, err
	}
	return d.vmInfo(ctx, vm), nil
}

func (d *Daemon) vmSSHInfo(ctx context.Context, p api.VMRef) (api.SSHInfo, error) {
	vm, err := d.lookupVM(ctx, p.Name)
	if err != nil {
		return api.SSHInfo{}, err
	}
	if !d.vmAlive(vm) {
		return api.SSHInfo{}, rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "vm %s is not running (state %s)", vm.Name, vm.Runtime.State), "start it: banger vm start "+vm.Name)
	}
	// A VM whose create was ready at the agent's answer may still be
	// starting sshd: wait for it, as the user asked for ssh.
	if img, err := d.store.GetImage(ctx, vm.Image); err == nil && hasAgent(img) {
		if err := d.waitPort(ctx, vm, d.getHandles(vm).PID, time.Now().Add(d.cfg.VM.BootTimeout.D())); err != nil {
			return api.SSHInfo{}, rpc.WithHint(fmt.Errorf("sshd of %s: %w", vm.Name, err), "see the VM's console: banger vm logs "+vm.Name)
		}
	}
	return api.SSHInfo{
		Name: vm.Name, User: "root", Host: vm.Runtime.GuestIP, KeyPath: d.layout.SSHKey(),
		KnownHosts: filepath.Join(vm.Runtime.VMDir, vmFileKnownHosts), Alias: vm.Runtime.DNSName,
	}, nil
}

// vmStop asks the guest to power off and waits stop_timeout, then kills
// the VMM; either way the TAP is released and the VM is stopped.
func (d *Daemon) vmStop(ctx context.Context, p api.VMRef) (api.VMInfo, error) {
	vm, err := d.lookupVM(ctx, p.Name)
	if err != nil {
		return api.VMInfo{}, err
	}
	unlock := d.lockVM(vm.ID)
	defer unlock()
	if err := d.stopVM(ctx, vm, p.Force); err != nil {
		return api.VMInfo{}, err
	}
	vm, err = d.store.UpdateVMRuntime(ctx, vm.ID, func(r *model.VMRuntime) error {
		r.State = model.StateStopped
		return nil
	})
	if err != nil {
		return api.VMInfo{}, err
	}
	return d.vmInfo(ctx, vm), nil
}

func (d *Daemon) stopVM(ctx context.Context, vm model.VM, force bool) error {
	if d.vmAlive(vm) {
		h := d.getHandles(vm)
		graceful := false
		if vm.Runtime.State == model.StatePaused && !force {
			// A paused guest cannot power itself off: run it again first.
			if s, err := d.snapshotter(vm); err == nil {
				if err := s.Resume(ctx, d.liveSpec(vm)); err != nil {
					d.log.WarnContext(ctx, "resuming a paused vm to stop it", "vm", vm.Name, "error", err.Error())
				}
			}
		}
		if !force {
			start := time.Now()
			if err := d.shutdownVMM(ctx, vm); err != nil {
				d.log.WarnContext(ctx, "graceful shutdown request failed", "vm", vm.Name, "error", err.Error())
			} else if waitExit(h.PID, d.cfg.VM.StopTimeout.D()) {
				graceful = true
				d.log.InfoContext(ctx, "vm powered off", "vm", vm.Name, "duration_ms", time.Since(start).Milliseconds())
			} else {
				d.log.WarnContext(ctx, "vm did not power off in time; killing it", "vm", vm.Name, "timeout", d.cfg.VM.StopTimeout.String())
			}
		}
		if !graceful {
			_ = syscall.Kill(h.PID, syscall.SIGKILL)
			if !waitExit(h.PID, 5*time.Second) {
				return vmError(vm, fmt.Errorf("VMM pid %d survived SIGKILL", h.PID))
			}
		}
	}
	d.releaseRuntime(ctx, vm)
	return nil
}

// shutdownVMM asks the guest to power off: through its agent when the
// image has one, else (or when the agent does not answer) with the VMM's
// power button (qemu's ACPI, Firecracker's Ctrl-Alt-Del).
func (d *Daemon) shutdownVMM(ctx context.Context, vm model.VM) error {
	if img, err := d.store.GetImage(ctx, vm.Image); err == nil && hasAgent(img) {
		err := d.agentShutdown(ctx, vm)
		if err == nil {
			d.log.InfoContext(ctx, "vm powering off through its agent", "vm", vm.Name)
			return nil
		}
		d.log.WarnContext(ctx, "the agent's poweroff failed; pressing the power button", "vm", vm.Name, "error", err.Error())
	}
	switch vm.VMM {
	case "qemu":
		return qemu.New(d.cfg.Paths.Qemu).Shutdown(ctx, vmmSpecFor(vm))
	case "firecracker":
		return firecracker.New(d.cfg.Paths.Firecracker, d.log).Shutdown(ctx, vmmSpecFor(vm))
	}
	return fmt.Errorf("no graceful shutdown for vmm %q", vm.VMM)
}

// vmStartBegin boots a stopped VM; like create, it is an operation.
func (d *Daemon) vmStartBegin(ctx context.Context, p api.VMRef) (api.Operation, error) {
	vm, err := d.lookupVM(ctx, p.Name)
	if err != nil {
		return api.Operation{}, err
	}
	if d.vmAlive(vm) {
		return api.Operation{}, rpc.Errorf(rpc.ErrConflict, "vm %s is already running", vm.Name)
	}
	if vm.Runtime.State == model.StateCreating {
		return api.Operation{}, rpc.Errorf(rpc.ErrConflict, "vm %s is still being created", vm.Name)
	}
	if vm.Runtime.OverlayPath == "" {
		return api.Operation{}, rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "vm %s never got its disks (state %s)", vm.Name, vm.Runtime.State), "delete and create it again: banger vm delete "+vm.Name)
	}
	img, err := d.getImage(ctx, vm.Image)
	if err != nil {
		return api.Operation{}, err
	}
	o := d.ops.start(ctx, "vm.start", vm.Name, startStages)
	bctx := context.WithoutCancel(ctx)
	go func() {
		unlock := d.lockVM(vm.ID)
		defer unlock()
		d.releaseRuntime(bctx, vm) // anything a dead VMM left
		vm, err := d.bootVM(bctx, o, vm, img)
		d.endVMOp(bctx, o, vm, err)
	}()
	return o.snapshot(), nil
}

// vmDelete stops the VM (gracefully unless forced), removes its TAP, its
// directory and its row; its address is free again.
func (d *Daemon) vmDelete(ctx context.Context, p api.VMRef) (api.VMInfo, error) {
	vm, err := d.lookupVM(ctx, p.Name)
	if err != nil {
		return api.VMInfo{}, err
	}
	unlock := d.lockVM(vm.ID)
	defer unlock()
	if vm.Runtime.State == model.StateCreating && d.createRunning(vm.Name) {
		return api.VMInfo{}, rpc.Errorf(rpc.ErrConflict, "vm %s is being created; wait for it to finish", vm.Name)
	}
	if err := d.stopVM(ctx, vm, p.Force); err != nil {
		return api.VMInfo{}, err
	}
	if err := os.RemoveAll(vm.Runtime.VMDir); err != nil {
		return api.VMInfo{}, fmt.Errorf("removing %s: %w", vm.Runtime.VMDir, err)
	}
	if err := d.store.DeleteVM(ctx, vm.ID); err != nil {
		return api.VMInfo{}, err
	}
	d.log.InfoContext(ctx, "vm deleted", "vm", vm.Name, "id", vm.ID)
	if len(vm.Runtime.Bases) > 0 {
		d.gcBases(ctx) // the frozen disks only it sat on
	}
	vm.Runtime.State = model.StateStopped
	return api.VMInfo{VM: vm}, nil
}

func (d *Daemon) createRunning(name string) bool {
	d.ops.mu.Lock()
	defer d.ops.mu.Unlock()
	for _, o := range d.ops.ops {
		o.mu.Lock()
		busy := o.st.Kind == "vm.create" && o.st.Target == name && o.st.State == api.OpRunning
		o.mu.Unlock()
		if busy {
			return true
		}
	}
	return false
}

// lockVM serialises lifecycle changes of one VM.
func (d *Daemon) lockVM(id string) func() {
	d.handlesMu.Lock()
	m, ok := d.vmLocks[id]
	if !ok {
		m = &vmLock{}
		d.vmLocks[id] = m
	}
	d.handlesMu.Unlock()
	m.Lock()
	return m.Unlock
}

func (d *Daemon) operationStatus(ctx context.Context, p api.OperationStatusParams) (api.Operation, error) {
	return d.ops.status(ctx, p)
}
