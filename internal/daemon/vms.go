package daemon

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/runner"
	"github.com/banger-dev/banger/internal/vmm"
	"github.com/banger-dev/banger/internal/vmm/firecracker"
	"github.com/banger-dev/banger/internal/vmm/qemu"
)

// Stages of a VM create; a start runs the last four.
var (
	createStages = []string{"allocate", "system overlay", "work disk", "network", "vmm start", "boot", "agent ready"}
	startStages  = []string{"network", "vmm start", "boot", "agent ready"}
)

// Limits a VM spec must meet.
const (
	minMemoryMiB = 128
	minDiskBytes = 64 << 20
)

// Files of a VM directory.
const (
	vmFileQMP        = "qmp.sock"
	vmFileFCSock     = "firecracker.sock"
	vmFileVMMLog     = "vmm.log"
	vmFileConsole    = "console.log"
	vmFileMetrics    = "metrics.json"
	vmFileVSock      = "vsock.sock"
	vmFileWork       = "work.ext4"
	vmFileKnownHosts = "known_hosts"
)

func newVMID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// macFor derives a locally administered unicast MAC from the VM id.
func macFor(id string) string {
	b, _ := hex.DecodeString(id[:10])
	return fmt.Sprintf("02:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4])
}

// vmCreateBegin validates the request, allocates the VM's identity, address
// and row (state creating), and runs the rest in the background. The
// operation's id is this call's op id.
func (d *Daemon) vmCreateBegin(ctx context.Context, p api.VMCreateParams) (api.Operation, error) {
	if err := model.ValidateName("vm", p.Name); err != nil {
		return api.Operation{}, fmt.Errorf("%v: %w", err, rpc.ErrBadRequest)
	}
	var from model.Snapshot
	if p.From != "" {
		var err error
		if from, err = d.lookupSnapshot(ctx, p.From); err != nil {
			return api.Operation{}, err
		}
		m, err := decodeManifest(from)
		if err != nil {
			return api.Operation{}, err
		}
		// The snapshot's machine: its image, vCPUs, memory and disk.
		if p.Image != "" && p.Image != from.Image {
			return api.Operation{}, rpc.WithHint(rpc.Errorf(rpc.ErrBadRequest, "snapshot %s is of image %s, not %s", from.Name, from.Image, p.Image), "leave out --image with --from")
		}
		p.Image, p.VCPUs, p.MemoryMiB, p.DiskSizeBytes = from.Image, m.Machine.VCPUs, m.Machine.MemoryMiB, m.Machine.DiskSizeBytes
	}
	d.createDefaults(&p)
	switch {
	case p.VCPUs < 1 || p.VCPUs > 64:
		return api.Operation{}, rpc.Errorf(rpc.ErrBadRequest, "vcpus %d: want 1..64", p.VCPUs)
	case p.MemoryMiB < minMemoryMiB:
		return api.Operation{}, rpc.WithHint(rpc.Errorf(rpc.ErrBadRequest, "memory %d MiB is too small", p.MemoryMiB), fmt.Sprintf("give at least %d MiB: --memory %d", minMemoryMiB, minMemoryMiB))
	case p.DiskSizeBytes < minDiskBytes:
		return api.Operation{}, rpc.WithHint(rpc.Errorf(rpc.ErrBadRequest, "disk size %d bytes is too small", p.DiskSizeBytes), "give at least 64M: --disk-size 1G")
	}
	if _, err := d.store.GetVMByName(ctx, p.Name); err == nil {
		return api.Operation{}, rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "vm %q already exists", p.Name), "pick another --name, or remove it: banger vm delete "+p.Name)
	} else if !errors.Is(err, rpc.ErrNotFound) {
		return api.Operation{}, err
	}
	img, err := d.store.GetImage(ctx, p.Image)
	if errors.Is(err, rpc.ErrNotFound) {
		if p.Image != d.cfg.DefaultImage || !p.BuildImage {
			return api.Operation{}, rpc.WithHint(rpc.Errorf(rpc.ErrNotFound, "image %q", p.Image), imageBuildHint(p.Image))
		}
	} else if err != nil {
		return api.Operation{}, err
	}
	if err := d.checkCreateShares(ctx, p, img); err != nil {
		return api.Operation{}, err
	}

	// A snapshot (--from), the image's warm template, or a cold boot (which
	// makes the template, for the default spec).
	stages, why := createStages, ""
	probe := d.probeVM(ctx, p)
	switch {
	case from.ID != "":
		m, _ := decodeManifest(from)
		if err := d.restoreCheck(ctx, probe, img, m, false); err != nil {
			return api.Operation{}, err
		}
		stages = restoreStages
	case img.Name == "" || !hasAgent(img):
	case len(p.Mounts) > 0:
		why = "host folders (a virtio-fs device cannot be restored on qemu 7.2)"
	case p.Cold:
		why = "--cold"
	case !d.cfg.VM.Warm:
		why = "vm.warm is off in the config"
	default:
		sn, err := d.warmTemplate(ctx, probe, img)
		if err == nil {
			from, stages = sn, restoreStages
		} else {
			why = err.Error()
			if d.defaultSpec(p) && len(p.Publish) == 0 {
				stages = templateStages
			}
		}
	}
	how := ""
	switch {
	case from.ID != "" && from.Kind == model.SnapshotTemplate:
		how = "warm: restoring template " + from.Name
	case from.ID != "":
		how = "restoring snapshot " + from.Name
	case why != "":
		how = "cold boot: " + why
	}
	o := d.ops.start(ctx, "vm.create", p.Name, stages)
	bctx := context.WithoutCancel(ctx)
	vm, err := d.allocateStage(ctx, o, p, how)
	if err != nil {
		o.finish(nil, err)
		return api.Operation{}, err
	}
	if from.ID != "" {
		go func() {
			vm, err := d.createFrom(bctx, o, vm, img, from)
			d.endVMOp(bctx, o, vm, err)
		}()
		return o.snapshot(), nil
	}
	if why != "" {
		d.log.InfoContext(ctx, "vm create boots cold", "vm", p.Name, "why", why)
	}
	go func() {
		if img.Name == "" { // default image missing: build it first
			if err := d.buildDefaultImage(bctx, o); err != nil {
				d.failCreate(bctx, o, vm, err)
				return
			}
			var gerr error
			if img, gerr = d.store.GetImage(bctx, p.Image); gerr != nil {
				d.failCreate(bctx, o, vm, gerr)
				return
			}
		}
		vm, err := d.provisionAndBoot(bctx, o, vm, img)
		if err != nil {
			d.failCreate(bctx, o, vm, err)
			return
		}
		if o.hasStage("template") {
			if cur, err := d.store.GetVM(bctx, vm.ID); err == nil {
				_ = d.makeTemplate(bctx, o, cur, img)
				vm, _ = d.store.GetVM(bctx, vm.ID)
			}
		}
		vm = d.rememberBoot(bctx, vm, o)
		o.finish(d.vmInfo(bctx, vm), nil)
	}()
	return o.snapshot(), nil
}

// endVMOp ends an operation that made or booted vm: failed with err, or
// finished with the VM and its boot's stages recorded.
func (d *Daemon) endVMOp(ctx context.Context, o *operation, vm model.VM, err error) {
	if err != nil {
		d.failCreate(ctx, o, vm, err)
		return
	}
	vm = d.rememberBoot(ctx, vm, o)
	o.finish(d.vmInfo(ctx, vm), nil)
}

// createDefaults fills a create's zero values from the config.
func (d *Daemon) createDefaults(p *api.VMCreateParams) {
	if p.Image == "" {
		p.Image = d.cfg.DefaultImage
	}
	if p.VCPUs == 0 {
		p.VCPUs = d.cfg.VM.VCPUs
	}
	if p.MemoryMiB == 0 {
		p.MemoryMiB = d.cfg.VM.MemoryMiB
	}
	if p.DiskSizeBytes == 0 {
		p.DiskSizeBytes = int64(d.cfg.VM.DiskSize)
	}
}

// defaultSpec reports whether p asks for the config's VM spec: the one a
// cold create makes a warm template for.
func (d *Daemon) defaultSpec(p api.VMCreateParams) bool {
	return p.VCPUs == d.cfg.VM.VCPUs && p.MemoryMiB == d.cfg.VM.MemoryMiB && p.DiskSizeBytes == int64(d.cfg.VM.DiskSize)
}

// probeVM is a VM of p's spec as allocateVM would make it, to compare
// with a snapshot's machine before anything is allocated.
func (d *Daemon) probeVM(ctx context.Context, p api.VMCreateParams) model.VM {
	vm := model.VM{ID: "probe", Name: p.Name, Image: p.Image, VMM: d.vmmFor(ctx),
		Spec: model.VMSpec{VCPUs: p.VCPUs, MemoryMiB: p.MemoryMiB, DiskSizeBytes: p.DiskSizeBytes}}
	dir := d.layout.VMDir("probe")
	ip := "10.0.0.2"
	if n, ok := d.cachedNetwork(); ok {
		ip = n.Gateway().Next().String()
	}
	apiSock := filepath.Join(dir, vmFileQMP)
	if vm.VMM == "firecracker" {
		apiSock = filepath.Join(dir, vmFileFCSock)
	}
	vm.Runtime = model.VMRuntime{GuestIP: ip, MAC: "02:00:00:00:00:02", VSockCID: 3, VMDir: dir,
		APISockPath: apiSock, VSockPath: filepath.Join(dir, vmFileVSock), LogPath: filepath.Join(dir, vmFileVMMLog),
		ConsolePath: filepath.Join(dir, vmFileConsole), MetricsPath: filepath.Join(dir, vmFileMetrics),
		WorkDiskPath: filepath.Join(dir, vmFileWork), OverlayPath: filepath.Join(dir, "rootfs.qcow2"), SystemOverlay: "qcow2"}
	return vm
}

// vmmFor is the VMM a new VM gets.
func (d *Daemon) vmmFor(ctx context.Context) string {
	name, _, _ := d.chooseVMM(ctx, "")
	return name
}

// buildDefaultImage builds the default image inside a VM create: its
// stages ("image bootstrap", ...) are the create's, under the create's op
// id, and the build log is the progress note meanwhile.
func (d *Daemon) buildDefaultImage(ctx context.Context, o *operation) error {
	b, err := d.prepareImageBuild(ctx, api.ImageBuildParams{Name: d.cfg.DefaultImage})
	if err != nil {
		return err
	}
	o.mu.Lock()
	o.progress = func() string { return "building image " + d.cfg.DefaultImage + ": " + lastLine(b.logPath) }
	o.mu.Unlock()
	_, err = d.runBuild(ctx, o, b, "image ")
	o.mu.Lock()
	o.progress = nil
	o.mu.Unlock()
	return err
}

// allocateVM picks the id, address, MAC and CID and inserts the row. The
// allocation lock makes concurrent creates take distinct addresses; the
// unique index on guest_ip is the backstop.
func (d *Daemon) allocateVM(ctx context.Context, p api.VMCreateParams) (model.VM, error) {
	d.allocMu.Lock()
	defer d.allocMu.Unlock()
	ip, err := d.freeIP(ctx)
	if err != nil {
		return model.VM{}, err
	}
	cids, err := d.store.UsedVSockCIDs(ctx)
	if err != nil {
		return model.VM{}, err
	}
	cid := uint32(3)
	for _, c := range cids {
		if c >= cid {
			cid = c + 1
		}
	}
	id := newVMID()
	dir := d.layout.VMDir(id)
	vmmName, _, _ := d.chooseVMM(ctx, "")
	if len(p.Mounts) > 0 {
		vmmName = "qemu" // Firecracker has no virtio-fs (a config's vmm = firecracker was refused)
	}
	apiSock := filepath.Join(dir, vmFileQMP)
	if vmmName == "firecracker" {
		apiSock = filepath.Join(dir, vmFileFCSock)
	}
	vm := model.VM{
		ID: id, Name: p.Name, Image: p.Image, VMM: vmmName,
		Spec: model.VMSpec{VCPUs: p.VCPUs, MemoryMiB: p.MemoryMiB, DiskSizeBytes: p.DiskSizeBytes, Mounts: p.Mounts, Publish: p.Publish},
		Runtime: model.VMRuntime{
			State:        model.StateCreating,
			GuestIP:      ip.String(),
			MAC:          macFor(id),
			DNSName:      p.Name + "." + d.cfg.Network.Domain,
			VSockCID:     cid,
			VMDir:        dir,
			APISockPath:  apiSock,
			VSockPath:    filepath.Join(dir, vmFileVSock),
			LogPath:      filepath.Join(dir, vmFileVMMLog),
			ConsolePath:  filepath.Join(dir, vmFileConsole),
			MetricsPath:  filepath.Join(dir, vmFileMetrics),
			WorkDiskPath: filepath.Join(dir, vmFileWork),
		},
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return vm, err
	}
	if err := d.store.CreateVM(ctx, &vm); err != nil {
		os.RemoveAll(dir)
		return vm, err
	}
	return vm, nil
}

// freeIP returns the lowest address of the subnet held by no VM: not the
// network, the gateway (first host) or the broadcast address.
func (d *Daemon) freeIP(ctx context.Context) (netip.Addr, error) {
	used, err := d.store.UsedGuestIPs(ctx)
	if err != nil {
		return netip.Addr{}, err
	}
	taken := map[string]bool{}
	for _, u := range used {
		taken[u] = true
	}
	n, err := d.network(ctx)
	if err != nil {
		return netip.Addr{}, err
	}
	p := n.Subnet
	gw := n.Gateway()
	for a := gw.Next(); p.Contains(a); a = a.Next() {
		if !p.Contains(a.Next()) { // broadcast
			break
		}
		if !taken[a.String()] {
			return a, nil
		}
	}
	return netip.Addr{}, rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "no free address left in %s", p), "delete VMs you no longer need, or use a larger network.subnet")
}

// provisionAndBoot makes the VM's disks and boots it.
func (d *Daemon) provisionAndBoot(ctx context.Context, o *operation, vm model.VM, img model.Image) (model.VM, error) {
	r := &runner.Exec{}
	if err := o.stage(ctx, d.log, "system overlay", func() (string, error) {
		strategy, path, err := d.makeOverlay(ctx, r, vm, img)
		if err != nil {
			return "", err
		}
		vm.Runtime.SystemOverlay, vm.Runtime.OverlayPath = strategy, path
		return strategy, d.store.UpdateVM(ctx, &vm)
	}); err != nil {
		return vm, err
	}
	if err := o.stage(ctx, d.log, "work disk", func() (string, error) {
		if err := d.ensureSSHKey(ctx); err != nil {
			return "", err
		}
		if !img.HasWorkSeed() {
			d.log.WarnContext(ctx, "image has no work-seed: building the work disk from scratch (slow path)", "vm", vm.Name, "image", img.Name)
		}
		hostKey, err := d.makeHostKey(ctx, vm)
		if err != nil {
			return "", err
		}
		keys := disk.Keys{AuthorizedKey: d.layout.SSHKey() + ".pub"}
		keyOn := "host key on the config disk"
		if img.GuestContract >= guest.ContractConfigDisk {
			if err := disk.WriteConfigDisk(filepath.Join(vm.Runtime.VMDir, guest.ConfigDiskName), hostKey, shares(vm)); err != nil {
				return "", err
			}
		} else {
			// An image built by an older banger: its banger-init reads
			// the host key from the work disk.
			keys.HostKey, keyOn = hostKey, "host key on the work disk"
		}
		fromSeed, err := disk.WorkDiskCached(ctx, r, img.WorkSeedPath, img.RootfsPath, img.Dir, vm.Runtime.WorkDiskPath, vm.Spec.DiskSizeBytes, keys)
		if err != nil {
			return "", err
		}
		if fromSeed {
			return fmt.Sprintf("cloned from the work-seed, grown to %d MiB; %s", vm.Spec.DiskSizeBytes>>20, keyOn), nil
		}
		return fmt.Sprintf("built from scratch (no work-seed), %d MiB; %s", vm.Spec.DiskSizeBytes>>20, keyOn), nil
	}); err != nil {
		return vm, err
	}
	return d.bootVM(ctx, o, vm, img)
}

// makeOverlay picks the best strategy this host and VMM support and makes
// the system disk.
func (d *Daemon) makeOverlay(ctx context.Context, r runner.Runner, vm model.VM, img model.Image) (strategy, path string, err error) {
	strategies := []string{disk.StrategyReflink}
	if vm.VMM == "qemu" {
		strategies = append(strategies, disk.StrategyQcow2)
	}
	strategies = append(strategies, disk.StrategySparseCopy)
	var errs []error
	for _, s := range strategies {
		p, _, err := disk.Overlay(ctx, r, s, img.RootfsPath, vm.Runtime.VMDir)
		if err == nil {
			return s, p, nil
		}
		errs = append(errs, err)
		if !errors.Is(err, disk.ErrUnsupported) {
			break
		}
	}
	return "", "", fmt.Errorf("system overlay for %s: %w", vm.Name, errors.Join(errs...))
}

func (d *Daemon) ensureSSHKey(ctx context.Context) error {
	d.keyMu.Lock()
	defer d.keyMu.Unlock()
	key := d.layout.SSHKey()
	if _, err := os.Stat(key + ".pub"); err == nil {
		return nil
	}
	os.Remove(key)
	if _, err := (&runner.Exec{}).Run(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "banger", "-f", key); err != nil {
		return rpc.WithHint(fmt.Errorf("generating the install's SSH key: %w", err), "install openssh-client")
	}
	return nil
}

// bootVM sets up the network, starts the VMM and waits for SSH.
func (d *Daemon) bootVM(ctx context.Context, o *operation, vm model.VM, img model.Image) (model.VM, error) {
	h := &model.VMHandles{}
	var spec vmm.Spec
	var driver vmm.Driver
	if err := o.stage(ctx, d.log, "network", func() (string, error) {
		net, err := d.ensureNetwork(ctx)
		if err != nil {
			return "", err
		}
		tapStart := time.Now()
		n, err := d.network(ctx)
		if err != nil {
			return "", err
		}
		tap, pooled, err := d.takeTap(ctx, vm, n)
		if err != nil {
			return "", err
		}
		tapTook := time.Since(tapStart)
		h.TapDevice = tap
		d.setHandles(vm, h)
		from := "new"
		if pooled {
			from = "from the pool"
		}
		return fmt.Sprintf("%s (%s, %.2f ms) on %s, %s", tap, from, float64(tapTook.Microseconds())/1000, net.Bridge, vm.Runtime.GuestIP), nil
	}); err != nil {
		return vm, err
	}
	if err := o.stage(ctx, d.log, "vmm start", func() (string, error) {
		var accel string
		var err error
		driver, accel, err = d.driverFor(ctx, vm, img)
		if err != nil {
			return "", err
		}
		spec, err = d.vmSpec(vm, img, accel)
		if spec.AgentSocket != "" {
			os.Remove(spec.AgentSocket) // a stale one of a VMM that died
		}
		if err != nil {
			return "", err
		}
		if os.Geteuid() != 0 && driver.Name() == "qemu" {
			// An unprivileged qemu cannot open a TAP by name where
			// /dev/net/tun is root's; the helper passes it open.
			hc, err := d.helperClient(ctx)
			if err != nil {
				return "", err
			}
			f, _, err := hc.OpenTap(ctx, h.TapDevice)
			if err != nil {
				return "", fmt.Errorf("opening TAP %s: %w", h.TapDevice, err)
			}
			defer f.Close()
			spec.TapFile = f
		}
		fsNote, err := d.startFS(ctx, vm, h)
		if err != nil {
			return "", err
		}
		pid, err := driver.Start(ctx, spec)
		if err != nil {
			d.stopFS(vm, h)
			d.setHandles(vm, h)
			return "", vmError(vm, err)
		}
		h.PID = pid
		if spec.SharedMemory {
			h.Memory = "memfd"
		}
		d.setHandles(vm, h)
		vm.Runtime.State, vm.Runtime.LastError = model.StateRunning, ""
		if err := d.store.UpdateVM(ctx, &vm); err != nil {
			return "", err
		}
		return fmt.Sprintf("%s (%s), pid %d, kernel %s%s", driver.Name(), accel, pid, kernelKind(driver.Name(), spec.Kernel, img), fsNote), nil
	}); err != nil {
		return vm, err
	}
	deadline := time.Now().Add(d.cfg.VM.BootTimeout.D())
	if !hasAgent(img) {
		// Images before the guest agent (contract < 3): ready is SSH's.
		o.renameStage("agent ready", "ssh ready")
		if err := o.stage(ctx, d.log, "boot", func() (string, error) {
			return "sshd listening", d.waitPort(ctx, vm, h.PID, deadline)
		}); err != nil {
			return vm, err
		}
		err := o.stage(ctx, d.log, "ssh ready", func() (string, error) {
			return fmt.Sprintf("authenticated with the install's key (image of guest contract %d: no agent)", img.GuestContract), d.waitSSH(ctx, vm, h.PID, deadline)
		})
		return vm, err
	}
	if err := o.stage(ctx, d.log, "boot", func() (string, error) {
		bctx, cancel := context.WithDeadline(ctx, deadline)
		defer cancel()
		_, err := d.agentSession(bctx, vm)
		for err != nil {
			if berr := d.checkBooting(ctx, vm, h.PID, deadline); berr != nil {
				return "", fmt.Errorf("%w (the agent: %v)", berr, err)
			}
			time.Sleep(20 * time.Millisecond)
			_, err = d.agentSession(bctx, vm)
		}
		return "the guest agent answered on " + agentChannel(vm), nil
	}); err != nil {
		return vm, err
	}
	err := o.stage(ctx, d.log, "agent ready", func() (string, error) {
		h, err := d.waitAgent(ctx, vm, h.PID, deadline)
		if err != nil {
			return "", err
		}
		note, err := d.readyShares(ctx, vm)
		return fmt.Sprintf("banger-agent %s, guest up %.2f s (sshd starts beside)%s", h.Release, float64(h.UptimeMS)/1000, note), err
	})
	return vm, err
}

// agentChannel says how the host reaches vm's agent.
func agentChannel(vm model.VM) string {
	if vm.VMM == "firecracker" {
		return "vsock"
	}
	return "virtio-serial"
}

func (d *Daemon) driverFor(ctx context.Context, vm model.VM, img model.Image) (vmm.Driver, string, error) {
	_, accel, _ := d.chooseVMM(ctx, img.KernelPath)
	switch vm.VMM {
	case "qemu":
		return qemu.New(d.cfg.Paths.Qemu), accel, nil
	case "firecracker":
		if img.VmlinuxPath == "" {
			return nil, "", rpc.WithHint(rpc.Errorf(rpc.ErrUnavailable, "image %s has no ELF vmlinux for firecracker", img.Name), "rebuild the image, or set vmm = \"qemu\"")
		}
		return firecracker.New(d.cfg.Paths.Firecracker, d.log), "kvm", nil
	}
	return nil, "", rpc.WithHint(rpc.Errorf(rpc.ErrUnavailable, "vmm %q is not available on this host", vm.VMM), "set vmm = \"qemu\" in the config")
}

func (d *Daemon) vmSpec(vm model.VM, img model.Image, accel string) (vmm.Spec, error) {
	ip := netip.MustParseAddr(vm.Runtime.GuestIP)
	n, ok := d.cachedNetwork()
	if !ok {
		return vmm.Spec{}, rpc.Errorf(rpc.ErrUnavailable, "the network of this daemon is not known yet (no answer from the root helper)")
	}
	gw := n.Gateway()
	settings := guest.Settings{
		IP: netip.PrefixFrom(ip, n.Subnet.Bits()), Gateway: gw, DNS: gw, Hostname: vm.Name,
	}
	if accel == "tcg" {
		settings.TSCKHz = hostTSCKHz()
	}
	cmdline, err := guest.KernelCmdline(settings)
	if err != nil {
		return vmm.Spec{}, err
	}
	kernel := img.KernelPath
	if vm.VMM == "qemu" && img.VmlinuxPath != "" && image.HasPVHEntry(img.VmlinuxPath) {
		// The ELF kernel through its PVH entry: no self-decompression
		// in the guest (0.3 to 0.5 s under TCG).
		kernel = img.VmlinuxPath
	}
	if vm.VMM == "firecracker" {
		// Firecracker boots the ELF kernel, and exits when the guest
		// reboots: Ctrl-Alt-Del is its graceful stop.
		kernel, cmdline = img.VmlinuxPath, cmdline+" reboot=k"
	}
	rootFormat := "raw"
	if vm.Runtime.SystemOverlay == "qcow2" {
		rootFormat = "qcow2"
	}
	dir := vm.Runtime.VMDir
	s := vmm.Spec{
		ID: vm.ID, Name: vm.Name, VCPUs: vm.Spec.VCPUs, MemoryMiB: vm.Spec.MemoryMiB,
		Kernel: kernel, Initrd: img.InitrdPath, Cmdline: cmdline,
		Disks: []vmm.Disk{
			{ID: "rootfs", Path: vm.Runtime.OverlayPath, Format: rootFormat},
			{ID: "work", Path: vm.Runtime.WorkDiskPath, Format: workFormat(vm)},
		},
		// qemu's RAM in a memfd: a snapshot saves the device state alone
		// and copies the memory.
		SharedMemory: vm.VMM == "qemu",
		FS:           fsDevices(vm),
		TapName:      d.getHandles(vm).TapDevice, MAC: vm.Runtime.MAC, Accel: accel,
		APISocket: vm.Runtime.APISockPath, LogPath: vm.Runtime.LogPath, ConsolePath: vm.Runtime.ConsolePath,
		MetricsPath: vm.Runtime.MetricsPath, VSockPath: vm.Runtime.VSockPath, VSockCID: vm.Runtime.VSockCID,
	}
	if cfg := filepath.Join(dir, guest.ConfigDiskName); img.GuestContract >= guest.ContractConfigDisk || fileExists(cfg) {
		s.Disks = append(s.Disks, vmm.Disk{ID: "config", Path: cfg, Format: "raw", ReadOnly: true})
	}
	if hasAgent(img) && vm.VMM == "qemu" {
		s.AgentSocket = agentSocketPath(vm)
	}
	if s.APISocket == "" {
		s.APISocket = filepath.Join(dir, vmFileQMP)
	}
	return s, nil
}

// workFormat is the format of vm's work disk: raw from the seed, qcow2
// once frozen or in a clone.
func workFormat(vm model.VM) string {
	if vm.Runtime.WorkDiskFormat == "" {
		return "raw"
	}
	return vm.Runtime.WorkDiskFormat
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// kernelKind names the kernel file a VM boots, for the vmm start stage.
// qemu gets the vmlinux only through its PVH entry (vmSpec checked it).
func kernelKind(driver, kernel string, img model.Image) string {
	switch {
	case kernel == img.VmlinuxPath && driver == "qemu":
		return "vmlinux (PVH entry)"
	case kernel == img.VmlinuxPath:
		return "vmlinux"
	}
	return "bzImage"
}

func hostTSCKHz() uint32 {
	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	khz, _ := guest.ParseTSCKHz(nil, cpuinfo)
	return khz
}

// vmError names the VM's logs in an error about it.
func vmError(vm model.VM, err error) error {
	return rpc.WithHint(fmt.Errorf("vm %s: %w", vm.Name, err),
		fmt.Sprintf("see the console log %s and the VMM log %s", vm.Runtime.ConsolePath, vm.Runtime.LogPath))
}

// waitPort waits for the guest's sshd to accept TCP connections.
func (d *Daemon) waitPort(ctx context.Context, vm model.VM, pid int, deadline time.Time) error {
	addr := net.JoinHostPort(vm.Runtime.GuestIP, "22")
	for {
		c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if err := d.checkBooting(ctx, vm, pid, deadline); err != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitSSH waits for an SSH session with the install's key to succeed,
// checking the VM's host key against the one pinned at create.
func (d *Daemon) waitSSH(ctx context.Context, vm model.VM, pid int, deadline time.Time) error {
	ip, err := netip.ParseAddr(vm.Runtime.GuestIP)
	if err != nil || !ip.Is4() {
		return vmError(vm, fmt.Errorf("guest address %q is not an IPv4 address", vm.Runtime.GuestIP))
	}
	for {
		// "--" ends ssh's options: nothing after it is read as one.
		args := append(sshArgs(d.layout.SSHKey(), filepath.Join(vm.Runtime.VMDir, vmFileKnownHosts), "yes", 2), "--", "root@"+ip.String(), "true")
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := (&runner.Exec{}).Run(cctx, d.cfg.Paths.SSH, args...)
		cancel()
		if err == nil {
			return nil
		}
		if err := d.checkBooting(ctx, vm, pid, deadline); err != nil {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (d *Daemon) checkBooting(ctx context.Context, vm model.VM, pid int, deadline time.Time) error {
	if !processAlive(pid) {
		return vmError(vm, fmt.Errorf("the VMM (pid %d) exited during boot", pid))
	}
	if time.Now().After(deadline) {
		return vmError(vm, fmt.Errorf("not ready within %s: %w", d.cfg.VM.BootTimeout, rpc.ErrTimeout))
	}
	return ctx.Err()
}

// sshArgs are the ssh options banger uses: its key only, the VM's own
// known_hosts, no agent, no password prompts.
func sshArgs(key, knownHosts, strict string, connectTimeout int) []string {
	return []string{
		"-i", key, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
		"-o", "UserKnownHostsFile=" + knownHosts, "-o", "StrictHostKeyChecking=" + strict,
		"-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
		"-o", fmt.Sprintf("ConnectTimeout=%d", connectTimeout),
	}
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return !(i > 0 && len(s) > i+2 && s[i+2] == 'Z')
}

// failCreate records a failed create: the VM is marked failed with the
// error, and what it holds at kernel level (process, TAP) is released. Its
// disks stay for inspection until vm delete.
func (d *Daemon) failCreate(ctx context.Context, o *operation, vm model.VM, err error) {
	d.log.ErrorContext(ctx, "vm create failed", "vm", vm.Name, "error", err.Error())
	d.releaseRuntime(ctx, vm)
	if vm.ID != "" {
		_, _ = d.store.UpdateVMRuntime(ctx, vm.ID, func(r *model.VMRuntime) error {
			r.State, r.LastError = model.StateFailed, err.Error()
			return nil
		})
	}
	o.finish(nil, err)
}

// vmmSpecFor is the part of a spec shutdown and status need.
func vmmSpecFor(vm model.VM) vmm.Spec {
	return vmm.Spec{ID: vm.ID, Name: vm.Name, APISocket: vm.Runtime.APISockPath, LogPath: vm.Runtime.LogPath, ConsolePath: vm.Runtime.ConsolePath}
}

// makeHostKey makes the VM's SSH host key on the host (fast, unlike key
// generation in a TCG guest) and pins it in the VM's known_hosts under its
// address, so the very first connection is checked: no trust on first use.
// The guest installs the key from its config disk (or, for images of the
// older contract, its work disk) at boot.
func (d *Daemon) makeHostKey(ctx context.Context, vm model.VM) (string, error) {
	key := filepath.Join(vm.Runtime.VMDir, "ssh_host_ed25519_key")
	os.Remove(key)
	os.Remove(key + ".pub")
	if _, err := (&runner.Exec{}).Run(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "banger-"+vm.Name, "-f", key); err != nil {
		return "", fmt.Errorf("making the VM's host key: %w", err)
	}
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		return "", err
	}
	f := strings.Fields(string(pub))
	if len(f) < 2 {
		return "", fmt.Errorf("host key %s.pub: unexpected content", key)
	}
	line := vm.Runtime.GuestIP + " " + f[0] + " " + f[1] + "\n"
	if err := os.WriteFile(filepath.Join(vm.Runtime.VMDir, vmFileKnownHosts), []byte(line), 0o600); err != nil {
		return "", err
	}
	return key, nil
}
