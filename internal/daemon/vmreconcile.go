package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/banger-dev/banger/internal/model"
)

// monitorInterval is how often the daemon checks that running VMs' VMMs
// are still there.
const monitorInterval = time.Second

// findVMMByAPISocket scans /proc for the process whose command line names
// the VM's API socket: the VMM, found again without trusting a pid.
func findVMMByAPISocket(sock string) int {
	if sock == "" {
		return 0
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, arg := range strings.Split(string(b), "\x00") {
			if strings.Contains(arg, sock) && processAlive(pid) {
				return pid
			}
		}
	}
	return 0
}

// rediscover returns the VM's handles: the scratch file's, with the pid
// replaced by the live VMM found by its API socket when there is one (the
// live process wins over the file); when none runs, the file's contents
// come back as they are, so cleanup can tear down what they name.
func (d *Daemon) rediscover(vm model.VM) *model.VMHandles {
	h := readHandlesFile(vm.Runtime.VMDir)
	if pid := findVMMByAPISocket(vm.Runtime.APISockPath); pid > 0 {
		h.PID = pid
	}
	return h
}

func readHandlesFile(dir string) *model.VMHandles {
	var h model.VMHandles
	data, err := os.ReadFile(filepath.Join(dir, handlesFile))
	if err != nil {
		return &h
	}
	if err := json.Unmarshal(data, &h); err != nil {
		return &model.VMHandles{}
	}
	return &h
}

// reconcileVMs runs at start: a VM recorded running whose VMM lives is
// kept (its handles re-adopted); one whose VMM is gone is torn down and
// stopped; a create a crash interrupted is rolled back to failed.
func (d *Daemon) reconcileVMs(ctx context.Context) {
	d.reconcileSnapshotDirs(ctx)
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		d.log.ErrorContext(ctx, "reconcile vms: listing", "error", err.Error())
		return
	}
	for _, vm := range vms {
		switch vm.Runtime.State {
		case model.StateRunning, model.StatePaused, model.StateCreating:
		default:
			continue
		}
		h := d.rediscover(vm)
		d.setHandlesMem(vm, h)
		alive := d.vmAlive(vm)
		switch {
		case vm.Runtime.State.Live() && alive && fileExists(filepath.Join(vm.Runtime.VMDir, vmFileRestoring)):
			// Restored, not yet re-identified: it must not run on.
			d.setHandles(vm, h)
			d.releaseRuntime(ctx, vm) // and its marker
			d.markStopped(ctx, vm, "a restore was cut short by a bangerd restart before the VM had its identity; start it (banger vm start "+vm.Name+") or restore it again")
			d.log.WarnContext(ctx, "reconcile: stopped a vm restored without its identity", "vm", vm.Name)
		case vm.Runtime.State.Live() && alive:
			d.setHandles(vm, h)
			d.reconcileRunState(ctx, vm)
			d.log.InfoContext(ctx, "reconcile: re-adopted running vm", "vm", vm.Name, "pid", h.PID, "tap", h.TapDevice)
		case vm.Runtime.State.Live():
			d.releaseRuntime(ctx, vm)
			d.markStopped(ctx, vm, "the VMM exited while bangerd was not running")
			d.log.WarnContext(ctx, "reconcile: vm's VMM is gone; stopped it", "vm", vm.Name)
		default: // creating
			d.releaseRuntime(ctx, vm)
			d.releaseVMTap(ctx, vm)
			_, _ = d.store.UpdateVMRuntime(ctx, vm.ID, func(r *model.VMRuntime) error {
				r.State, r.LastError = model.StateFailed, "create interrupted by a bangerd restart; delete it and create it again"
				return nil
			})
			d.log.WarnContext(ctx, "reconcile: rolled back an interrupted create", "vm", vm.Name)
		}
	}
}

func (d *Daemon) markStopped(ctx context.Context, vm model.VM, reason string) {
	_, err := d.store.UpdateVMRuntime(ctx, vm.ID, func(r *model.VMRuntime) error {
		r.State, r.LastError = model.StateStopped, reason
		return nil
	})
	if err != nil {
		d.log.ErrorContext(ctx, "recording a stopped vm", "vm", vm.Name, "error", err.Error())
	}
}

// monitor notices VMMs that exit on their own (a guest poweroff, a crash,
// kill -9) and stops their VMs with the reason, releasing the TAP.
func (d *Daemon) monitor(ctx context.Context) {
	t := time.NewTicker(monitorInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		vms, err := d.store.ListVMs(ctx)
		if err != nil {
			continue
		}
		for _, vm := range vms {
			if !vm.Runtime.State.Live() {
				continue
			}
			if d.vmAlive(vm) {
				d.checkFS(ctx, vm)
				d.checkPorts(ctx, vm)
				continue
			}
			d.handleVMMExit(ctx, vm)
		}
	}
}

func (d *Daemon) handleVMMExit(ctx context.Context, vm model.VM) {
	unlock := d.lockVM(vm.ID)
	defer unlock()
	cur, err := d.store.GetVM(ctx, vm.ID)
	if err != nil || !cur.Runtime.State.Live() || d.vmAlive(cur) {
		return // stopped, deleted or restarted meanwhile
	}
	h := d.getHandles(cur)
	reason := fmt.Sprintf("the VMM (pid %d) exited on its own at %s; see %s", h.PID, time.Now().UTC().Format(time.RFC3339), cur.Runtime.ConsolePath)
	d.releaseRuntime(ctx, cur)
	d.markStopped(ctx, cur, reason)
	d.log.WarnContext(ctx, "vm stopped: its VMM exited", "vm", cur.Name, "pid", h.PID)
}

// setHandlesMem seeds the in-memory cache only.
func (d *Daemon) setHandlesMem(vm model.VM, h *model.VMHandles) {
	d.handlesMu.Lock()
	c := *h
	d.handles[vm.ID] = &c
	d.handlesMu.Unlock()
}

// releaseVMTap deletes the per-VM TAP of a create a crash cut short
// between the TAP's creation and the handles that name it.
func (d *Daemon) releaseVMTap(ctx context.Context, vm model.VM) {
	n, err := d.network(ctx)
	if err != nil {
		return
	}
	tap := n.vmTap(vm.ID)
	if _, err := netlink.LinkByName(tap); err == nil {
		d.returnTap(ctx, tap)
		d.log.InfoContext(ctx, "reconcile: deleted the TAP of an interrupted create", "vm", vm.Name, "tap", tap)
	}
}
