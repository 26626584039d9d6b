package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/vmm"
)

// Pause implements vmm.Snapshotter: PATCH /vm {"state": "Paused"}. Pausing
// a paused VM is a no-op, as in Firecracker.
func (d *Driver) Pause(ctx context.Context, s vmm.Spec) error {
	return d.patchVM(ctx, s, VMPaused, "pause")
}

// Resume implements vmm.Snapshotter: PATCH /vm {"state": "Resumed"}.
func (d *Driver) Resume(ctx context.Context, s vmm.Spec) error {
	return d.patchVM(ctx, s, VMResumed, "resume")
}

func (d *Driver) patchVM(ctx context.Context, s vmm.Spec, state VMState, verb string) error {
	t := time.Now()
	c := NewClient(s.APISocket)
	defer c.Close()
	if err := c.PatchVM(ctx, state); err != nil {
		return fmt.Errorf("firecracker: %s %s: %w", verb, vmName(s), err)
	}
	d.log.InfoContext(ctx, "firecracker: vm "+string(state), logging.KeyVM, vmName(s), logging.KeyDurationMS, time.Since(t).Milliseconds())
	return nil
}

// Snapshot implements vmm.Snapshotter: a Full PUT /snapshot/create of the
// paused VM into dst.State (the device and vCPU state) and dst.Memory (all
// of the guest's memory). It refuses a VM that is not paused, as
// Firecracker does, before asking. The guest stays paused.
func (d *Driver) Snapshot(ctx context.Context, s vmm.Spec, dst vmm.SnapshotFiles) error {
	t := time.Now()
	if err := checkSnapshotFiles(dst); err != nil {
		return err
	}
	c := NewClient(s.APISocket)
	defer c.Close()
	info, err := c.Describe(ctx)
	if err != nil {
		return fmt.Errorf("firecracker: snapshot of %s: %w", vmName(s), err)
	}
	if info.State != StatePaused {
		return fmt.Errorf("firecracker: snapshot of %s: the VM is %q; pause it first: firecracker snapshots only a paused VM", vmName(s), info.State)
	}
	if err := c.CreateSnapshot(ctx, SnapshotCreateParams{
		SnapshotType: SnapshotFull, SnapshotPath: dst.State, MemFilePath: dst.Memory,
	}); err != nil {
		return fmt.Errorf("firecracker: snapshot of %s: %w; see %s", vmName(s), err, LoggerPath(s))
	}
	for _, p := range []string{dst.State, dst.Memory} {
		if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() {
			return fmt.Errorf("firecracker: snapshot of %s: firecracker answered, but %s is not a file (%v); see %s", vmName(s), p, err, LoggerPath(s))
		}
	}
	d.log.InfoContext(ctx, "firecracker snapshot", logging.KeyVM, vmName(s), "state", dst.State, "memory", dst.Memory,
		logging.KeyDurationMS, time.Since(t).Milliseconds())
	return nil
}

// checkSnapshotFiles refuses what Firecracker cannot take: no memory file
// (Firecracker's memory is never in its state file), relative paths
// (Firecracker runs in the VM directory) and one file for both.
func checkSnapshotFiles(f vmm.SnapshotFiles) error {
	if f.State == "" || f.Memory == "" {
		return fmt.Errorf("firecracker: a snapshot is two files, the state and the memory (got state %q, memory %q)", f.State, f.Memory)
	}
	for _, p := range []string{f.State, f.Memory} {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("firecracker: snapshot file %q is relative; give an absolute path", p)
		}
	}
	if filepath.Clean(f.State) == filepath.Clean(f.Memory) {
		return fmt.Errorf("firecracker: the snapshot's state and memory are one file, %s", f.State)
	}
	return nil
}

// RestoreRequests validates s and src and builds the requests that load
// src's snapshot into a fresh Firecracker of version v, in the order they
// are sent: the logger, the metrics and the serial console (which
// Firecracker takes before a load: they are no boot resource), then
// PUT /snapshot/load with the memory file as a File backend, the VM's own
// TAP as the network override of eth0, from 1.16 its own vsock socket as
// the vsock override, and resume_vm false: Restore checks the loaded
// machine before its vCPUs run (and resumes it with PATCH /vm). It runs
// nothing.
func RestoreRequests(s vmm.Spec, src vmm.SnapshotFiles, logLevel string, v Version) ([]Request, error) {
	if err := validateHost(s); err != nil {
		return nil, err
	}
	if err := checkDisks(s); err != nil {
		return nil, err
	}
	if err := checkSnapshotFiles(src); err != nil {
		return nil, err
	}
	reqs := []Request{
		{Step: "logger", Path: "/logger", Body: Logger{LogPath: LoggerPath(s), Level: logLevel, ShowLevel: true}},
	}
	if s.MetricsPath != "" {
		reqs = append(reqs, Request{Step: "metrics", Path: "/metrics", Body: Metrics{MetricsPath: s.MetricsPath}})
	}
	if s.ConsolePath != "" {
		reqs = append(reqs, Request{Step: "serial console", Path: "/serial", Body: SerialDevice{SerialOutPath: s.ConsolePath}})
	}
	load := SnapshotLoadParams{
		SnapshotPath: src.State,
		MemBackend:   &MemoryBackend{BackendType: MemoryBackendFile, BackendPath: src.Memory},
		ResumeVM:     false,
	}
	if s.TapName != "" {
		load.NetworkOverrides = []NetworkOverride{{IfaceID: NetIfaceID, HostDevName: s.TapName}}
	}
	if s.VSockPath != "" && !v.Less(VsockOverrideVersion) {
		load.VsockOverride = &VsockOverride{UDSPath: inVMDir(s, s.VSockPath)}
	}
	reqs = append(reqs, Request{Step: "snapshot load", Path: "/snapshot/load", Body: load, Timeout: SnapshotTimeout})
	return reqs, nil
}

// Restore implements vmm.Snapshotter. It starts Firecracker as Start does
// (its own session, the VM directory, the log, a fresh API socket), checks
// its version, sends RestoreRequests, checks the loaded guest (GET / says
// Paused; GET /machine-config gives s's vCPUs and memory, when s gives
// them) and only then resumes it (PATCH /vm Resumed): a snapshot of
// another machine never runs. It returns the pid once GET / says Running,
// and watches the guest for a halt as Start does. See the package doc for
// what a snapshot keeps.
func (d *Driver) Restore(ctx context.Context, s vmm.Spec, src vmm.SnapshotFiles) (int, error) {
	t0 := time.Now()
	// Validated before launch; built again below for the version found.
	if _, err := RestoreRequests(s, src, d.LogLevel, MinVersion); err != nil {
		return 0, err
	}
	for _, p := range []string{src.State, src.Memory} {
		if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() {
			if err == nil {
				err = errors.New("not a regular file")
			}
			return 0, fmt.Errorf("firecracker: restore of %s: snapshot file %s: %w", vmName(s), p, err)
		}
	}
	for _, disk := range s.Disks {
		if _, err := os.Stat(disk.Path); err != nil {
			return 0, fmt.Errorf("firecracker: restore of %s: disk %s: %w (the snapshot opens each drive it recorded)", vmName(s), disk.ID, err)
		}
	}
	p, c, v, err := d.launchAPI(ctx, s)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	reqs, _ := RestoreRequests(s, src, d.LogLevel, v)
	for _, r := range reqs {
		if err := d.put(ctx, c, p, s, r); err != nil {
			return 0, err
		}
	}
	if err := checkLoaded(ctx, c, s); err != nil {
		return 0, d.failed(ctx, s, p, fmt.Errorf("firecracker: restore of %s: %w; see %s", vmName(s), err, LoggerPath(s)))
	}
	if err := c.PatchVM(ctx, VMResumed); err != nil {
		return 0, d.failed(ctx, s, p, fmt.Errorf("firecracker: restore of %s: resuming the loaded guest: %w; see %s", vmName(s), err, LoggerPath(s)))
	}
	info, err := c.Describe(ctx)
	if err == nil && info.State != StateRunning {
		err = fmt.Errorf("the guest is %q after the resume, not %q", info.State, StateRunning)
	}
	if err != nil {
		return 0, d.failed(ctx, s, p, fmt.Errorf("firecracker: restore of %s: %w; see %s", vmName(s), err, LoggerPath(s)))
	}
	d.watch(s, p)
	d.log.InfoContext(ctx, "firecracker restored", logging.KeyVM, vmName(s), "pid", p.pid, "version", v.String(),
		"state", src.State, "vsock_override", s.VSockPath != "" && !v.Less(VsockOverrideVersion),
		logging.KeyDurationMS, time.Since(t0).Milliseconds())
	return p.pid, nil
}

// checkLoaded checks what a load (resume_vm false) left: a paused guest
// with s's vCPUs and memory, when s gives them.
func checkLoaded(ctx context.Context, c *Client, s vmm.Spec) error {
	info, err := c.Describe(ctx)
	if err != nil {
		return err
	}
	if info.State != StatePaused {
		return fmt.Errorf("the guest is %q after the load, not %q", info.State, StatePaused)
	}
	if s.VCPUs <= 0 && s.MemoryMiB <= 0 {
		return nil
	}
	m, err := c.MachineConfig(ctx)
	if err != nil {
		return err
	}
	if s.VCPUs > 0 && m.VCPUCount != s.VCPUs || s.MemoryMiB > 0 && m.MemSizeMiB != s.MemoryMiB {
		return fmt.Errorf("the snapshot's guest has %d vCPUs and %d MiB, the VM %d and %d", m.VCPUCount, m.MemSizeMiB, s.VCPUs, s.MemoryMiB)
	}
	return nil
}

// SetLink implements vmm.Snapshotter. Firecracker has no control of the
// guest's link (1.16's API can change a network interface's TAP only at a
// load and its rate limiters after boot, not its link state), so it does
// nothing and returns nil: a restored guest's link is up from the load, with
// the snapshot's MAC, until it is given its own. To keep a clone's first
// frames off the bridge, its TAP must be kept from the bridge (or down) on
// the host until then.
func (d *Driver) SetLink(ctx context.Context, s vmm.Spec, up bool) error {
	d.log.DebugContext(ctx, "firecracker has no link control", logging.KeyVM, vmName(s), "up", up)
	return nil
}
