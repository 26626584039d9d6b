package daemon

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/hostcheck"
	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/imagebuild"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/vmm/firecracker"
)

// kvmCache remembers the KVM verdict: the API probe is cheap, the kernel
// boot probe costs seconds, and neither changes while bangerd runs.
type kvmCache struct {
	mu     sync.Mutex
	api    *hostcheck.KVMResult
	boot   *hostcheck.KVMResult
	kernel string
	fresh  bool // the next boot probe ignores the record (doctor)
}

// kvmVerdict returns whether KVM can run this host's guests. With a kernel
// to try (an image's vmlinuz), the verdict is that of a real boot under
// qemu (or the one recorded for it, kvmcache.go); without one, the KVM API
// probe's, marked unconfirmed.
func (d *Daemon) kvmVerdict(ctx context.Context, kernel string) (hostcheck.KVMResult, bool) {
	d.kvm.mu.Lock()
	defer d.kvm.mu.Unlock()
	fresh := d.kvm.fresh
	d.kvm.fresh = false
	if d.kvm.api == nil {
		r := hostcheck.ProbeKVM()
		d.kvm.api = &r
		d.log.InfoContext(ctx, "kvm api probe", "usable", r.Usable, "detail", r.Detail)
	}
	if !d.kvm.api.Usable {
		return *d.kvm.api, true
	}
	if kernel == "" {
		// No image to boot: a verdict recorded in this host boot with
		// this qemu, of any kernel, still confirms (or refutes) it.
		if qemu, err := exec.LookPath(d.cfg.Paths.Qemu); err == nil {
			if r, ok := d.recordedHostKVM(qemu); ok {
				r.Detail += " (recorded in this host boot)"
				return r, true
			}
		}
		return *d.kvm.api, false
	}
	if d.kvm.boot == nil || d.kvm.kernel != kernel {
		qemu, err := exec.LookPath(d.cfg.Paths.Qemu)
		if err != nil {
			return *d.kvm.api, false
		}
		key, stable := newKVMKey(qemu, kernel)
		if r, ok := d.rememberedKVM(key); ok && stable && !fresh {
			d.kvm.boot, d.kvm.kernel = &r, kernel
			d.log.InfoContext(ctx, "kvm boot probe: the verdict recorded this host boot", "usable", r.Usable, "detail", r.Detail, "kernel", kernel, "record", d.kvmRecordPath())
			return r, true
		}
		r := hostcheck.ProbeKVMBoot(ctx, qemu, kernel, 8*time.Second)
		if ctx.Err() != nil { // cut short: no verdict
			return *d.kvm.api, false
		}
		d.kvm.boot, d.kvm.kernel = &r, kernel
		d.log.InfoContext(ctx, "kvm boot probe", "usable", r.Usable, "detail", r.Detail, "kernel", kernel)
		if stable {
			d.rememberKVM(key, r)
		}
	}
	return *d.kvm.boot, true
}

// probeKVMEarly makes the first create after a start find the KVM verdict
// made (or recorded): it runs the boot probe in the background when there
// is an image to boot.
func (d *Daemon) probeKVMEarly(ctx context.Context) {
	if k := d.probeKernel(ctx); k != "" {
		go d.kvmVerdict(ctx, k)
	}
}

// probeKernel picks a guest kernel for the KVM boot probe: the default
// image's, else any image's.
func (d *Daemon) probeKernel(ctx context.Context) string {
	imgs, err := d.store.ListImages(ctx)
	if err != nil || len(imgs) == 0 {
		return ""
	}
	pick := imgs[0]
	for _, img := range imgs {
		if img.Name == d.cfg.DefaultImage {
			pick = img
		}
	}
	return pick.KernelPath
}

// chooseVMM resolves config's vmm and accel for this host. Under vmm =
// auto, Firecracker is chosen only where KVM works and Firecracker can
// run banger's VMs: installed, 1.14 or newer, and /dev/net/tun open to
// this user (Firecracker opens its TAP itself; qemu gets its TAP open
// from the root helper, so it does not need that).
func (d *Daemon) chooseVMM(ctx context.Context, kernel string) (vmm, accel, reason string) {
	kvm, confirmed := d.kvmVerdict(ctx, kernel)
	accel = d.cfg.Accel
	if accel == "auto" {
		accel = "tcg"
		if kvm.Usable {
			accel = "kvm"
		}
	}
	switch d.cfg.VMM {
	case "qemu", "firecracker":
		return d.cfg.VMM, accel, "set in config"
	}
	if !kvm.Usable {
		note := ""
		if !confirmed {
			note = " (not yet confirmed by a kernel boot)"
		}
		return "qemu", accel, "auto: KVM cannot run guests here" + note + ": " + kvm.Detail
	}
	fc, why := d.firecrackerUsable(ctx)
	if !fc {
		return "qemu", accel, "auto: " + why
	}
	return "firecracker", "kvm", "auto: KVM works and " + why
}

// tunDevice is the TUN/TAP clone device (a variable for tests).
var tunDevice = "/dev/net/tun"

// fcVersions caches firecracker.CheckVersion by binary and file stamp: a
// create asks chooseVMM, and the binary changes only with an upgrade.
var fcVersions sync.Map

type fcVersion struct {
	path string
	v    firecracker.Version
	err  error
}

// firecrackerUsable reports whether Firecracker can run this user's VMs,
// and says why in words for chooseVMM's reason.
func (d *Daemon) firecrackerUsable(ctx context.Context) (bool, string) {
	bin, err := exec.LookPath(d.cfg.Paths.Firecracker)
	if err != nil {
		return false, "firecracker is not installed"
	}
	key := bin + "\x00" + fileStamp(bin)
	var fv fcVersion
	if c, ok := fcVersions.Load(key); ok {
		fv = c.(fcVersion)
	} else {
		fv.path, fv.v, fv.err = firecracker.CheckVersion(ctx, bin)
		if ctx.Err() != nil {
			return false, "firecracker's version: " + ctx.Err().Error()
		}
		fcVersions.Store(key, fv)
	}
	switch {
	case firecracker.IsTooOld(fv.err):
		return false, fmt.Sprintf("firecracker %s (%s) is older than %d.%d, the oldest banger drives", fv.v, bin, firecracker.MinVersion.Major, firecracker.MinVersion.Minor)
	case fv.err != nil:
		return false, "firecracker's version is unknown: " + fv.err.Error()
	}
	exists, open, _ := hostcheck.CheckDevice(tunDevice)
	switch {
	case !exists:
		return false, fmt.Sprintf("firecracker opens its TAP itself and %s is missing", tunDevice)
	case !open:
		return false, fmt.Sprintf("firecracker opens its TAP itself and this user cannot open %s (qemu gets its TAP open from the root helper)", tunDevice)
	}
	return true, fmt.Sprintf("firecracker %s is installed", fv.v)
}

// vmmChoiceCheck is doctor's vmm line. Before a guest kernel has been
// booted under KVM (no image yet, nothing recorded), a choice that
// depends on KVM is "unconfirmed", with both outcomes, rather than the
// KVM API probe's optimistic one.
func vmmChoiceCheck(cfgVMM, cfgAccel, vmm, accel, reason string, kvm hostcheck.KVMResult, confirmed bool) hostcheck.Check {
	dependsOnKVM := cfgVMM == "auto" && vmm == "firecracker" || vmm == "qemu" && cfgAccel == "auto"
	if kvm.Usable && !confirmed && dependsOnKVM {
		fallback := cfgAccel
		if fallback == "auto" {
			fallback = "tcg"
		}
		return hostcheck.Check{Name: "vmm", Status: hostcheck.Warn,
			Detail: fmt.Sprintf("unconfirmed: %s with %s if a guest kernel boots under KVM, else qemu with %s (the KVM API works, but no guest kernel has been booted under it yet; %s)", vmm, accel, fallback, reason),
			Hint:   "build or import an image (banger image build), then run banger doctor again"}
	}
	return hostcheck.Check{Name: "vmm", Status: hostcheck.OK, Detail: fmt.Sprintf("%s with %s (%s)", vmm, accel, reason)}
}

// procMisc is the kernel's list of misc devices (a variable for tests).
var procMisc = hostcheck.ProcMisc

// deviceMapperCheck is doctor's device-mapper line, from the kernel's
// misc device list (a stale control node does not count). Nothing of
// banger needs device-mapper (system overlays are reflinks, qcow2 or
// sparse copies), so either answer is ok.
func deviceMapperCheck(misc, control string) hostcheck.Check {
	ok, detail := hostcheck.DeviceMapper(misc, control)
	if !ok {
		detail += "; banger does not need it"
	}
	return hostcheck.Check{Name: "device-mapper", Status: hostcheck.OK, Detail: detail}
}

func (d *Daemon) doctor(ctx context.Context, _ noParams) (api.DoctorReport, error) {
	var checks []hostcheck.Check
	add := func(name string, st hostcheck.Status, detail, hint string) {
		checks = append(checks, hostcheck.Check{Name: name, Status: st, Detail: detail, Hint: hint})
	}

	// KVM, for real: the API probe, then a guest kernel boot.
	d.kvm.mu.Lock()
	d.kvm.api, d.kvm.boot, d.kvm.fresh = nil, nil, true
	d.kvm.mu.Unlock()
	kernel := d.probeKernel(ctx)
	kvm, confirmed := d.kvmVerdict(ctx, kernel)
	switch {
	case !kvm.DeviceExists:
		add("kvm", hostcheck.Warn, kvm.Detail, "without KVM qemu runs guests with tcg (slower) and firecracker cannot run")
	case kvm.Usable && confirmed:
		add("kvm", hostcheck.OK, kvm.Detail, "")
	case kvm.Usable:
		add("kvm", hostcheck.Warn, "the KVM API works ("+kvm.Detail+"), but no guest kernel has been booted to confirm it", "build an image (banger image build), then run banger doctor again")
	default:
		if _, open, _ := hostcheck.CheckDevice("/dev/kvm"); !open && os.Geteuid() != 0 {
			add("kvm", hostcheck.Warn, kvm.Detail, "add your user to the kvm group (sudo usermod -aG kvm $USER) and log in again; until then qemu uses tcg")
		} else {
			add("kvm", hostcheck.Warn, "KVM is present but cannot run an ordinary guest kernel: "+kvm.Detail, "qemu will use tcg (software emulation): VMs work, but boot slower; firecracker cannot run here")
		}
	}
	vmm, accel, reason := d.chooseVMM(ctx, kernel)
	checks = append(checks, vmmChoiceCheck(d.cfg.VMM, d.cfg.Accel, vmm, accel, reason, kvm, confirmed))

	qemuPath, qemuVer, qemuErr := hostcheck.BinaryVersion(ctx, d.cfg.Paths.Qemu)
	if qemuErr != nil {
		add("qemu", hostcheck.Fail, fmt.Sprintf("%s: %v", d.cfg.Paths.Qemu, qemuErr), "apt-get install qemu-system-x86")
	} else {
		add("qemu", hostcheck.OK, qemuPath+": "+qemuVer, "")
	}
	checks = append(checks, firecrackerCheck(ctx, d.cfg.Paths.Firecracker, vmm == "firecracker"))

	if exists, open, _ := hostcheck.CheckDevice(tunDevice); !exists {
		add("tun", hostcheck.Fail, tunDevice+" is missing", "load the tun module: modprobe tun")
	} else if !open {
		st := hostcheck.OK
		if vmm == "firecracker" {
			st = hostcheck.Fail // set in config: its creates would fail
		}
		add("tun", st, tunDevice+" exists but this user cannot open it; the root helper passes qemu its TAP as an open descriptor, and vmm = auto does not choose firecracker",
			"firecracker opens its TAP itself and needs "+tunDevice+" usable by this user")
	} else {
		add("tun", hostcheck.OK, "/dev/net/tun usable", "")
	}
	if ok, detail := hostcheck.NFTablesAvailable(); ok {
		add("nftables", hostcheck.OK, detail, "")
	} else {
		add("nftables", hostcheck.Warn, detail, "guest egress NAT needs nf_tables: modprobe nf_tables")
	}
	checks = append(checks, deviceMapperCheck(procMisc, hostcheck.DeviceMapperControl))

	hs := d.helperStatus(ctx)
	switch {
	case hs.Reachable && hs.Hint == "":
		add("helper", hostcheck.OK, fmt.Sprintf("%s answers, version %s (pid %d)", hs.Socket, hs.Version, hs.PID), "")
	case hs.Reachable:
		add("helper", hostcheck.Warn, fmt.Sprintf("%s answers with version %s", hs.Socket, hs.Version), hs.Hint)
	case os.Geteuid() == 0 && hs.Error == "not running":
		add("helper", hostcheck.OK, hs.Socket+": not running; bangerd runs as root and starts it on demand", "")
	default:
		add("helper", hostcheck.Fail, hs.Socket+": "+hs.Error, hs.Hint)
	}

	n, nerr := d.network(ctx)
	fix := "set network.subnet in " + d.opts.ConfigPath + " to an unused private /24"
	if n.Grant != nil {
		fix = "ask root for another: sudo banger system install --user " + n.Grant.User + " --subnet CIDR"
	}
	if nerr != nil {
		add("network", hostcheck.Fail, "this user's network is unknown: "+nerr.Error(), rpc.HintOf(nerr))
	} else if uses, err := hostnet.List(); err != nil {
		add("subnet", hostcheck.Warn, "reading addresses and routes: "+err.Error(), "")
	} else if clash := hostnet.Clashes(uses, n.Subnet, n.Bridge); len(clash) > 0 {
		var parts []string
		for _, c := range clash {
			parts = append(parts, c.String())
		}
		add("subnet", hostcheck.Fail, fmt.Sprintf("%s overlaps what the host uses: %s", n.Subnet, strings.Join(parts, "; ")), fix)
	} else {
		from := "the config"
		if n.Grant != nil {
			from = "root's grant"
		}
		add("subnet", hostcheck.OK, fmt.Sprintf("%s on %s (from %s, TAPs %s*) overlaps nothing the host uses", n.Subnet, n.Bridge, from, n.TapPrefix), "")
	}

	d.dnsMu.Lock()
	dnsUp, dnsErr := d.dnsServer != nil, d.dnsErr
	d.dnsMu.Unlock()
	switch {
	case dnsUp:
		add("dns", hostcheck.OK, fmt.Sprintf("answering <vm>.%s on %s:53", d.cfg.Network.Domain, n.Gateway()), "")
	case dnsErr != "":
		add("dns", hostcheck.Warn, "the DNS responder could not start: "+dnsErr+"; VMs reach each other by address only",
			"the root helper binds port 53 for an unprivileged bangerd: check it answers (above); or let bangerd bind it: sudo setcap cap_net_bind_service=+ep $(command -v bangerd)")
	default:
		add("dns", hostcheck.OK, "starts with the bridge, on its address, port 53", "")
	}

	if free, err := hostcheck.FreeBytes(d.layout.StateDir); err != nil {
		add("disk", hostcheck.Warn, err.Error(), "")
	} else {
		st, hint := hostcheck.OK, ""
		switch {
		case free < 2<<30:
			st, hint = hostcheck.Fail, "free space under "+d.layout.StateDir+": an image needs about 2 GiB and each VM its work disk"
		case free < 10<<30:
			st, hint = hostcheck.Warn, "little space left for images and VM disks"
		}
		add("disk", st, fmt.Sprintf("%.1f GiB free under %s", float64(free)/(1<<30), d.layout.StateDir), hint)
	}

	// Image builds: mmdebstrap, subordinate ids, user namespaces, keyring.
	checks = append(checks, imagebuild.HostChecks(ctx, d.cfg.Image.Suite)...)

	var missing []string
	for _, tool := range []string{"mke2fs", "e2fsck", "resize2fs", "qemu-img", d.cfg.Paths.SSH} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		add("tools", hostcheck.Fail, "missing: "+strings.Join(missing, ", "), "apt-get install e2fsprogs qemu-utils openssh-client")
	} else {
		add("tools", hostcheck.OK, "mke2fs, e2fsck, resize2fs, qemu-img and ssh found", "")
	}

	imgs, err := d.store.ListImages(ctx)
	if err != nil {
		return api.DoctorReport{}, err
	}
	checks = append(checks, imageChecks(imgs)...)
	return api.DoctorReport{Checks: checks, OK: !hasFail(checks)}, nil
}

// firecrackerCheck is doctor's firecracker line: the binary and its
// version, which must be firecracker.MinVersion or newer. A problem fails
// the report when the config chose firecracker (needed), and only warns
// otherwise.
func firecrackerCheck(ctx context.Context, binary string, needed bool) hostcheck.Check {
	c := hostcheck.Check{Name: "firecracker", Status: hostcheck.Warn}
	if needed {
		c.Status = hostcheck.Fail
	}
	p, v, err := firecracker.CheckVersion(ctx, binary)
	switch {
	case err == nil:
		return hostcheck.Check{Name: "firecracker", Status: hostcheck.OK, Detail: fmt.Sprintf("%s: Firecracker %s", p, v)}
	case firecracker.IsTooOld(err):
		c.Detail, c.Hint = err.Error(), rpc.HintOf(err)
	case p == "": // not found; the error names the binary
		c.Detail = err.Error()
		c.Hint = fmt.Sprintf("optional: install Firecracker %d.%d or newer on a host where KVM works; qemu is used meanwhile", firecracker.MinVersion.Major, firecracker.MinVersion.Minor)
	default:
		c.Detail = err.Error()
		c.Hint = "check that " + p + " is Firecracker (its --version prints \"Firecracker vX.Y.Z\")"
	}
	return c
}

// imageChecks warns about images that make creates slower than they need
// be: no work-seed, or built by a banger older than the config disk.
func imageChecks(imgs []model.Image) []hostcheck.Check {
	var checks []hostcheck.Check
	for _, img := range imgs {
		name := "image " + img.Name
		if !img.HasWorkSeed() {
			checks = append(checks, hostcheck.Check{Name: name, Status: hostcheck.Warn,
				Detail: "has no work-seed: each VM's work disk is built the slow way", Hint: "banger image rebuild-seed " + img.Name})
		}
		if img.Source == "built" && img.GuestContract < guest.Contract {
			lacks := "no guest agent: its creates wait for SSH, and vm exec, vm cp and vm port-forward do not work"
			if img.GuestContract < guest.ContractConfigDisk {
				lacks += "; its VMs get their host key written into the work disk, a slower create"
			}
			checks = append(checks, hostcheck.Check{Name: name, Status: hostcheck.Warn,
				Detail: fmt.Sprintf("built by an older banger (guest contract %d, this one builds %d): %s", img.GuestContract, guest.Contract, lacks),
				Hint:   "build a new one (banger image build --name NEW) and create VMs with --image NEW, or delete this one when no VM uses it and build it again"})
		}
	}
	return checks
}

func hasFail(cs []hostcheck.Check) bool {
	for _, c := range cs {
		if c.Status == hostcheck.Fail {
			return true
		}
	}
	return false
}
