package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/mount"
	"github.com/banger-dev/banger/internal/publish"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/vmm"
)

// A VM's host folders (package mount: one virtiofsd each, owned by the VM
// like its VMM) and published ports (package publish: listeners bangerd
// holds while the VM runs, each connection a stream to the guest agent).
// This file is the orchestration: when they start, stop and are checked.

// fsSocket is the virtiofsd socket of vm's i-th host folder.
func fsSocket(vm model.VM, i int) string {
	return filepath.Join(vm.Runtime.VMDir, "fs"+strconv.Itoa(i)+".sock")
}

// fsLog is its log.
func fsLog(vm model.VM, i int) string {
	return filepath.Join(vm.Runtime.VMDir, "virtiofsd"+strconv.Itoa(i)+".log")
}

// shares are vm's host folders as its guest sees them (the config disk).
func shares(vm model.VM) []guest.Share {
	var s []guest.Share
	for i, m := range vm.Spec.Mounts {
		s = append(s, guest.Share{Tag: mount.Tag(i), Path: m.GuestPath, ReadOnly: m.ReadOnly})
	}
	return s
}

// fsDevices are vm's virtio-fs devices for its VMM.
func fsDevices(vm model.VM) []vmm.FSDevice {
	var fs []vmm.FSDevice
	for i := range vm.Spec.Mounts {
		fs = append(fs, vmm.FSDevice{Tag: mount.Tag(i), Socket: fsSocket(vm, i)})
	}
	return fs
}

// checkCreateShares refuses, before anything is allocated, host folders
// and ports a create cannot have: each with what to do instead.
func (d *Daemon) checkCreateShares(ctx context.Context, p api.VMCreateParams, img model.Image) error {
	if len(p.Mounts) > 0 {
		specs := make([]mount.Spec, len(p.Mounts))
		for i, m := range p.Mounts {
			specs[i] = mount.Spec(m)
		}
		if err := mount.Validate(specs, os.Getuid()); err != nil {
			return err
		}
		if p.From != "" {
			return rpc.WithHint(rpc.Errorf(rpc.ErrBadRequest, "--mount with --from: a VM with a host folder cannot be restored from a snapshot (qemu 7.2 cannot migrate a virtio-fs device)"), "create it cold with its folders, or copy files in with banger vm cp")
		}
		if d.cfg.VMM == "firecracker" {
			return rpc.WithHint(rpc.Errorf(rpc.ErrBadRequest, "--mount: Firecracker has no virtio-fs, so it cannot share a host folder (vmm = \"firecracker\" in the config)"), "set vmm = \"qemu\" (or \"auto\", which picks qemu for a VM with folders), or copy files with banger vm cp")
		}
		if img.Name != "" && img.GuestContract < guest.ContractMounts {
			return rpc.WithHint(rpc.Errorf(rpc.ErrBadRequest, "--mount: image %s (guest contract %d) does not mount host folders (contract %d does)", img.Name, img.GuestContract, guest.ContractMounts), "rebuild the image with this banger: banger image build --name "+img.Name+" --force")
		}
		if _, err := mount.Find(); err != nil {
			return rpc.WithHint(rpc.Errorf(rpc.ErrUnavailable, "--mount: %v", err), "install qemu-system-common (it has virtiofsd)")
		}
	}
	if len(p.Publish) > 0 {
		ports := make([]publish.Port, len(p.Publish))
		for i, q := range p.Publish {
			ports[i] = publish.Port(q)
		}
		if err := publish.Check(ports); err != nil {
			return fmt.Errorf("%w: %w", err, rpc.ErrBadRequest)
		}
		if err := d.publishTaken(ctx, ports); err != nil {
			return err
		}
		// Each port can be bound now: in use, privileged or not on this
		// host is said before anything starts.
		for _, q := range ports {
			l, err := publish.Listen(q)
			if err != nil {
				return publishError(err)
			}
			l.Close()
		}
	}
	return nil
}

// publishError gives a port that cannot be bound its code and hint.
func publishError(err error) error {
	switch {
	case errors.Is(err, publish.ErrInUse):
		return rpc.WithHint(fmt.Errorf("%w: %w", err, rpc.ErrConflict), "choose another host port: --publish HOSTPORT:GUESTPORT")
	case errors.Is(err, publish.ErrPrivileged):
		return rpc.WithHint(fmt.Errorf("%w: %w", err, rpc.ErrForbidden), "publish on a port of 1024 or more")
	case errors.Is(err, publish.ErrNoAddress):
		return rpc.WithHint(fmt.Errorf("%w: %w", err, rpc.ErrBadRequest), "use 127.0.0.1 (the default) or one of this host's addresses")
	}
	return err
}

// publishTaken refuses a port another VM of this daemon has published
// (it may be stopped, and so not bound now).
func (d *Daemon) publishTaken(ctx context.Context, ports []publish.Port) error {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return err
	}
	for _, vm := range vms {
		for _, q := range vm.Spec.Publish {
			for _, p := range ports {
				if publish.Check([]publish.Port{publish.Port(q), p}) != nil {
					return rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "host port %s is published by vm %s", p, vm.Name), "choose another host port, or delete that VM: banger vm delete "+vm.Name)
				}
			}
		}
	}
	return nil
}

// startFS starts vm's virtiofsds, before its VMM, recording their pids in
// h: a failure stops the ones started.
func (d *Daemon) startFS(ctx context.Context, vm model.VM, h *model.VMHandles) (string, error) {
	if len(vm.Spec.Mounts) == 0 {
		return "", nil
	}
	bin, err := mount.Find()
	if err != nil {
		return "", err
	}
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	h.FS = nil
	for i, m := range vm.Spec.Mounts {
		sock := fsSocket(vm, i)
		os.Remove(sock) // a stale one
		pid, err := mount.Start(ctx, mount.Options{Binary: bin, Self: self, Spec: mount.Spec(m), Socket: sock, LogPath: fsLog(vm, i),
			Cache: d.cfg.VM.MountCache, ThreadPoolSize: d.cfg.VM.MountThreads})
		if err != nil {
			d.stopFS(vm, h)
			return "", vmError(vm, fmt.Errorf("host folder %s: %w", m.HostDir, err))
		}
		h.FS = append(h.FS, pid)
		d.setHandles(vm, h)
	}
	return fmt.Sprintf("; %d host folder(s), virtiofsd pid %v", len(h.FS), h.FS), nil
}

// stopFS stops vm's virtiofsds that still run (they exit with their VMM
// too).
func (d *Daemon) stopFS(vm model.VM, h *model.VMHandles) {
	for i, pid := range h.FS {
		if err := mount.Stop(pid, fsSocket(vm, i)); err != nil {
			d.log.Warn("stopping virtiofsd", "vm", vm.Name, "pid", pid, "error", err.Error())
		}
		os.Remove(fsSocket(vm, i))
	}
	h.FS = nil
}

// checkFS is the monitor's look at a live VM's host folders: a virtiofsd
// that died is recorded on the VM once (vm show says so) and logged.
func (d *Daemon) checkFS(ctx context.Context, vm model.VM) {
	if len(vm.Spec.Mounts) == 0 {
		return
	}
	h := d.getHandles(vm)
	for i, pid := range h.FS {
		if pid == 0 || mount.Alive(pid, fsSocket(vm, i)) {
			continue
		}
		m := vm.Spec.Mounts[i]
		reason := fmt.Sprintf("host folder %s on %s: its virtiofsd (pid %d) exited at %s (see %s); the guest gets I/O errors there until the VM restarts: banger vm stop %s && banger vm start %s",
			m.HostDir, m.GuestPath, pid, time.Now().UTC().Format(time.RFC3339), fsLog(vm, i), vm.Name, vm.Name)
		d.log.WarnContext(ctx, "virtiofsd exited", "vm", vm.Name, "pid", pid, "guest_path", m.GuestPath)
		h.FS[i] = 0
		d.setHandles(vm, h)
		_, _ = d.store.UpdateVMRuntime(ctx, vm.ID, func(r *model.VMRuntime) error {
			r.LastError = reason
			return nil
		})
	}
}

// ports holds the published ports' listeners of running VMs.
type ports struct {
	mu sync.Mutex
	m  map[string]*vmPorts // by VM id
}

type vmPorts struct {
	cancel    context.CancelFunc
	listeners []*publish.Listener
	errs      []string
}

// openPorts binds vm's published ports and serves them; a port that
// cannot be bound fails it (the ones bound are closed). Opening ports
// already open is a no-op.
func (d *Daemon) openPorts(ctx context.Context, vm model.VM) error {
	if len(vm.Spec.Publish) == 0 {
		return nil
	}
	d.ports.mu.Lock()
	defer d.ports.mu.Unlock()
	if d.ports.m == nil {
		d.ports.m = map[string]*vmPorts{}
	}
	if _, ok := d.ports.m[vm.ID]; ok {
		return nil
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	vp := &vmPorts{cancel: cancel}
	for _, q := range vm.Spec.Publish {
		l, err := publish.Listen(publish.Port(q))
		if err != nil {
			cancel()
			for _, l := range vp.listeners {
				l.Close()
			}
			return publishError(err)
		}
		l.Logf = func(format string, args ...any) {
			d.log.InfoContext(sctx, "published port: "+fmt.Sprintf(format, args...), "vm", vm.Name)
		}
		vp.listeners = append(vp.listeners, l)
	}
	id := vm.ID
	for _, l := range vp.listeners {
		go l.Serve(sctx, func(ctx context.Context, p publish.Port) (io.ReadWriteCloser, error) {
			return d.dialGuestPort(ctx, id, p)
		})
	}
	d.ports.m[vm.ID] = vp
	d.log.InfoContext(ctx, "published ports open", "vm", vm.Name, "ports", len(vp.listeners))
	return nil
}

// dialGuestPort is a published port's connection: a stream to the guest
// agent, connected to the guest's port.
func (d *Daemon) dialGuestPort(ctx context.Context, id string, p publish.Port) (io.ReadWriteCloser, error) {
	vm, err := d.store.GetVM(ctx, id)
	if err != nil {
		return nil, err
	}
	if vm.Runtime.State != model.StateRunning {
		return nil, fmt.Errorf("vm %s is %s", vm.Name, vm.Runtime.State)
	}
	st, err := d.agentStream(ctx, vm)
	if err != nil {
		return nil, err
	}
	if p.Proto == "udp" {
		err = agent.ConnectUDP(ctx, st, p.GuestPort)
	} else {
		err = agent.Connect(ctx, st, p.GuestPort)
	}
	if err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// closePorts stops serving vm's published ports and frees them.
func (d *Daemon) closePorts(vm model.VM) {
	d.ports.mu.Lock()
	vp := d.ports.m[vm.ID]
	delete(d.ports.m, vm.ID)
	d.ports.mu.Unlock()
	if vp == nil {
		return
	}
	vp.cancel()
	for _, l := range vp.listeners {
		l.Close()
	}
}

// checkPorts is the monitor's look at a running VM's published ports:
// they are open (after a bangerd restart, the first look opens them); a
// port that cannot be bound is recorded on the VM.
func (d *Daemon) checkPorts(ctx context.Context, vm model.VM) {
	if len(vm.Spec.Publish) == 0 || vm.Runtime.State != model.StateRunning {
		return
	}
	d.ports.mu.Lock()
	_, open := d.ports.m[vm.ID]
	d.ports.mu.Unlock()
	if open {
		return
	}
	if err := d.openPorts(ctx, vm); err != nil {
		msg := "published ports: " + err.Error()
		if vm.Runtime.LastError != msg {
			d.log.WarnContext(ctx, "published ports cannot be opened", "vm", vm.Name, "error", err.Error())
			_, _ = d.store.UpdateVMRuntime(ctx, vm.ID, func(r *model.VMRuntime) error {
				r.LastError = msg
				return nil
			})
		}
	}
}

// shareStates are vm's host folders and ports as vm show reports them.
func (d *Daemon) shareStates(vm model.VM, h *model.VMHandles) ([]api.MountState, []api.PortState) {
	var ms []api.MountState
	for i, m := range vm.Spec.Mounts {
		s := api.MountState{Mount: m, Tag: mount.Tag(i)}
		if h != nil && i < len(h.FS) && h.FS[i] > 0 {
			s.PID, s.Alive = h.FS[i], mount.Alive(h.FS[i], fsSocket(vm, i))
		}
		ms = append(ms, s)
	}
	var ps []api.PortState
	d.ports.mu.Lock()
	vp := d.ports.m[vm.ID]
	d.ports.mu.Unlock()
	for i, q := range vm.Spec.Publish {
		s := api.PortState{Publish: q}
		if vp != nil && i < len(vp.listeners) {
			s.Listening, s.Connections = true, vp.listeners[i].Connections()
		} else if vm.Runtime.State == model.StateRunning && strings.HasPrefix(vm.Runtime.LastError, "published ports: ") {
			s.Error = vm.Runtime.LastError
		}
		ps = append(ps, s)
	}
	return ms, ps
}

// mountList is vm's host folders as --mount flags would give them.
func mountList(vm model.VM) string {
	var s []string
	for _, m := range vm.Spec.Mounts {
		s = append(s, mount.Spec(m).String())
	}
	return strings.Join(s, ", ")
}

// readyShares ends a boot of a VM with host folders or ports: the guest
// mounted every folder (one look at its /proc/mounts through the agent),
// and the ports are open.
func (d *Daemon) readyShares(ctx context.Context, vm model.VM) (string, error) {
	note := ""
	if len(vm.Spec.Mounts) > 0 {
		res, out, err := d.agentExec(ctx, vm, []string{"cat", "/proc/self/mounts"})
		if err != nil {
			return "", fmt.Errorf("checking the guest's host folders: %w", err)
		}
		if res != 0 {
			return "", fmt.Errorf("checking the guest's host folders: cat /proc/self/mounts exited %d", res)
		}
		for i, m := range vm.Spec.Mounts {
			if !guestMounted(out, mount.Tag(i), m.GuestPath) {
				return "", rpc.WithHint(rpc.Errorf(rpc.ErrUnavailable, "host folder %s: the guest did not mount it on %s", m.HostDir, m.GuestPath),
					"see banger-init's lines in "+vm.Runtime.ConsolePath+" and the virtiofsd log "+fsLog(vm, i))
			}
		}
		note += fmt.Sprintf("; %d host folder(s) mounted", len(vm.Spec.Mounts))
	}
	if err := d.openPorts(ctx, vm); err != nil {
		return "", err
	}
	if len(vm.Spec.Publish) > 0 {
		note += fmt.Sprintf("; %d port(s) published", len(vm.Spec.Publish))
	}
	return note, nil
}

// guestMounted reports whether a /proc/mounts text has tag mounted as
// virtiofs on path.
func guestMounted(mounts []byte, tag, path string) bool {
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == tag && f[1] == path && f[2] == "virtiofs" {
			return true
		}
	}
	return false
}

// agentExec runs argv in vm's guest through its agent and returns its exit
// code and output.
func (d *Daemon) agentExec(ctx context.Context, vm model.VM, argv []string) (int, []byte, error) {
	st, err := d.agentStream(ctx, vm)
	if err != nil {
		return 0, nil, err
	}
	defer st.Close()
	var out bytes.Buffer
	es, err := agent.Exec(ctx, st, agent.ExecRequest{Argv: argv, Timeout: 10 * time.Second}, agent.ExecIO{Stdout: &out})
	if err != nil {
		return 0, nil, err
	}
	if es.Signal != 0 {
		return 128 + es.Signal, out.Bytes(), nil
	}
	return es.Code, out.Bytes(), nil
}
