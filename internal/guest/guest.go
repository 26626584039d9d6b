// Package guest is banger's guest contract as data: what every banger image
// holds besides Debian itself (the unit that applies the per-VM kernel
// parameters, fstab with the work disk at /root, sshd settings, masked
// units, a console getty and a power-button handler that need no udev), the
// packages it is built from, its mini initrd, and the kernel command line
// that carries one VM's settings.
//
// Everything here is pure: the root helper writes Files() into the tree it
// builds (image.configure), the daemon renders KernelCmdline for each boot,
// and tests hash Files() to key cached images. Changing what an image holds
// means changing this package; bump BuilderVersion when the meaning of a
// build changes without Files() changing (a new build step, say).
//
// Facts behind the choices (docs: /work/research/image/REPORT.md, the lean
// variant): a Debian minbase root runs without udev here, so nothing loads
// virtio_net or the ACPI button module and no dev-*.device unit ever
// appears; the cloud kernel has virtio_mmio and virtio_blk as modules, so
// an initrd is required; under TCG the guest's PIT TSC calibration can hang
// the boot unless tsc_early_khz is given.
package guest

import (
	"embed"
	"fmt"
	"io/fs"
	"net/netip"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// BuilderVersion names the image builder's behaviour for cache keys: bump it
// when a build from the same packages and Files() would differ. 5: built by
// mmdebstrap as the daemon's user (internal/imagebuild), not debootstrap in
// the root helper.
const BuilderVersion = "6"

//go:embed files
var embedded embed.FS

func mustRead(name string) []byte {
	b, err := embedded.ReadFile("files/" + name)
	if err != nil {
		panic(err)
	}
	return b
}

// BasePackages are the packages every image is bootstrapped with (debootstrap
// --variant=minbase --include=...): systemd as init, sshd for readiness and
// access, the Debian cloud kernel, the tools banger-init uses, and
// busybox-static for the mini initrd.
var BasePackages = []string{
	"systemd-sysv",
	"openssh-server",
	"linux-image-cloud-amd64",
	"iproute2",
	"kmod",
	"procps",
	"busybox-static",
	"iputils-ping",
	// scp and rsync through `banger vm ssh-config` (rsync needs itself on
	// both ends).
	"rsync",
}

// MaskedUnits are linked to /dev/null in every image. udev is installed (the
// kernel's initramfs-tools depends on it) but masked: without it boot is
// seconds faster, and banger-init loads the few modules a guest needs. The
// rest is what a disposable VM does not need at boot (timers, gettys on
// virtual terminals, logind, pstore, binfmt, ...); serial-getty@ttyS0 waits
// for a device unit that never appears without udev, so banger-console
// replaces it. An empty /etc/machine-id means first boot, hence
// systemd-firstboot (which would prompt on the console) is masked too.
var MaskedUnits = []string{
	"systemd-udevd.service",
	"systemd-udevd-control.socket",
	"systemd-udevd-kernel.socket",
	"systemd-udev-trigger.service",
	"systemd-udev-settle.service",
	"systemd-hwdb-update.service",
	"systemd-timesyncd.service",
	"apt-daily.timer",
	"apt-daily-upgrade.timer",
	"dpkg-db-backup.timer",
	"e2scrub_all.timer",
	"e2scrub_reap.service",
	"fstrim.timer",
	"getty@tty1.service",
	"systemd-logind.service",
	"systemd-pstore.service",
	"systemd-update-utmp.service",
	"systemd-update-utmp-runlevel.service",
	"systemd-journal-flush.service",
	"systemd-random-seed.service",
	"systemd-tmpfiles-clean.timer",
	"sys-kernel-debug.mount",
	"sys-kernel-tracing.mount",
	"dev-mqueue.mount",
	"dev-hugepages.mount",
	"sys-fs-fuse-connections.mount",
	"sys-kernel-config.mount",
	"modprobe@fuse.service",
	"modprobe@drm.service",
	"modprobe@configfs.service",
	"modprobe@efi_pstore.service",
	"modprobe@dm_mod.service",
	"modprobe@loop.service",
	"serial-getty@ttyS0.service",
	"proc-sys-fs-binfmt_misc.automount",
	"systemd-binfmt.service",
	"systemd-pcrphase.service",
	"systemd-pcrphase-sysinit.service",
	"systemd-repart.service",
	"systemd-ask-password-console.path",
	"systemd-ask-password-wall.path",
	"getty-static.service",
	"systemd-firstboot.service",
	// Creates the users of sysusers.d, which a built image already has
	// (package scripts run systemd-sysusers themselves).
	"systemd-sysusers.service",
}

// MaskedGenerators are the systemd generators linked to /dev/null in the
// lean image's /etc/systemd/system-generators. Each is a process systemd
// runs before it loads a single unit, tens of milliseconds apiece under
// TCG, and none has anything to do in a banger VM: no crypttab, integrity
// or verity tables, no GPT root discovery, no hibernation, no offline
// updates, no gettys on consoles (banger-console is the one), no kernel
// command line debugging switches (banger writes the command line), no
// /etc/rc.local or SysV-only init scripts in the image. The fstab
// generator stays: it mounts what users add to /etc/fstab.
var MaskedGenerators = []string{
	"systemd-bless-boot-generator",
	"systemd-cryptsetup-generator",
	"systemd-debug-generator",
	"systemd-getty-generator",
	"systemd-gpt-auto-generator",
	"systemd-hibernate-resume-generator",
	"systemd-integritysetup-generator",
	"systemd-rc-local-generator",
	"systemd-run-generator",
	"systemd-system-update-generator",
	"systemd-sysv-generator",
	"systemd-veritysetup-generator",
}

const generatorDir = "/etc/systemd/system-generators"

// EnabledUnits are banger's own units and the targets that want them
// (enabled with a symlink in TARGET.wants, as systemctl enable would).
var EnabledUnits = []struct{ Unit, WantedBy string }{
	{"banger-init.service", "sysinit.target"},
	{"banger-agent.service", "sysinit.target"},
	{"banger-powerbtn.service", "sysinit.target"},
	{"banger-console.service", "multi-user.target"},
}

// RemovePatterns are removed from the tree after the files are written
// (shell-style patterns on the last element only): host keys made by the
// openssh-server postinst (each VM makes its own at first boot), D-Bus's
// copy of the machine id, apt's caches and lists, logs of the build.
var RemovePatterns = []string{
	"/etc/ssh/ssh_host_*",
	"/var/lib/dbus/machine-id",
	"/var/cache/apt/archives/*.deb",
	"/var/cache/apt/*.bin",
	"/var/lib/apt/lists/*",
	"/var/log/*.log",
	"/tmp/*",
	"/var/tmp/*",
}

// LeanRemovePatterns are removed from the lean image only (after
// RemovePatterns): /etc/update-motd.d, whose scripts Debian's pam_motd runs
// through sh, env and run-parts at every ssh session, `ssh vm true`
// included (five process starts, about 0.2 s under TCG). Without the
// directory pam_motd only prints the static /etc/motd.
var LeanRemovePatterns = []string{"/etc/update-motd.d"}

// RemoveFor returns the patterns removed from an image of variant v.
func RemoveFor(v string) []string {
	if v == VariantStock {
		return RemovePatterns
	}
	return append(slices.Clone(RemovePatterns), LeanRemovePatterns...)
}

// File is one entry written into an image. Mode carries the permission bits
// and, for a directory or a symlink, fs.ModeDir or fs.ModeSymlink. Owner is
// always root.
type File struct {
	// Path is absolute and clean, as seen in the guest.
	Path string
	Mode fs.FileMode
	// Content is a regular file's content.
	Content []byte
	// Target is a symlink's target.
	Target string
}

// IsDir reports whether f is a directory.
func (f File) IsDir() bool { return f.Mode.IsDir() }

// IsSymlink reports whether f is a symlink.
func (f File) IsSymlink() bool { return f.Mode&fs.ModeSymlink != 0 }

const unitDir = "/etc/systemd/system"

// AgentPath is where an image of contract 3 carries banger-agent.
const AgentPath = "/usr/local/libexec/banger/banger-agent"

// InitDone is the file banger-init writes when it has applied the VM's
// settings; banger-agent.service runs the agent with -ready InitDone.
const InitDone = "/run/banger-init.done"

// Files returns every entry banger writes into an image, parents before
// children: configuration, scripts, units, the links that enable banger's
// units and those that mask MaskedUnits. Existing entries at these paths
// are replaced.
func Files() []File {
	reg := func(p string, mode fs.FileMode, name string) File {
		return File{Path: p, Mode: mode, Content: mustRead(name)}
	}
	files := []File{
		reg("/etc/hostname", 0o644, "hostname"),
		reg("/etc/hosts", 0o644, "hosts"),
		reg("/etc/fstab", 0o644, "fstab"),
		// debootstrap leaves the host's resolv.conf; banger-init writes
		// the VM's from banger.dns= at boot.
		{Path: "/etc/resolv.conf", Mode: 0o644, Content: []byte("# written at boot by banger-init from banger.dns=\n")},
		// Empty: each VM makes its own machine id at its first boot.
		{Path: "/etc/machine-id", Mode: 0o444, Content: []byte{}},
		{Path: "/usr/local/sbin", Mode: fs.ModeDir | 0o755},
		reg("/usr/local/sbin/banger-init", 0o755, "banger-init"),
		reg("/usr/local/sbin/banger-powerbtn", 0o755, "banger-powerbtn"),
		reg(unitDir+"/banger-init.service", 0o644, "banger-init.service"),
		reg(unitDir+"/banger-agent.service", 0o644, "banger-agent.service"),
		// banger-agent itself is a build artifact the image builder
		// copies to AgentPath (not an embedded file: it is built with
		// banger, and the image's agent is the one of the banger that
		// built it).
		{Path: "/usr/local/libexec", Mode: fs.ModeDir | 0o755},
		{Path: "/usr/local/libexec/banger", Mode: fs.ModeDir | 0o755},
		reg(unitDir+"/banger-powerbtn.service", 0o644, "banger-powerbtn.service"),
		reg(unitDir+"/banger-console.service", 0o644, "banger-console.service"),
		{Path: unitDir + "/ssh.service.d", Mode: fs.ModeDir | 0o755},
		reg(unitDir+"/ssh.service.d/banger.conf", 0o644, "ssh-banger.conf"),
		{Path: "/etc/ssh/sshd_config.d", Mode: fs.ModeDir | 0o755},
		reg("/etc/ssh/sshd_config.d/banger.conf", 0o644, "sshd-banger.conf"),
		{Path: "/etc/systemd/journald.conf.d", Mode: fs.ModeDir | 0o755},
		reg("/etc/systemd/journald.conf.d/banger.conf", 0o644, "journald-banger.conf"),
		// The initramfs-tools initrd kept in the image's /boot (used when
		// the mini initrd cannot be made, and by update-initramfs in the
		// guest): only what a virtio-mmio block root needs.
		reg("/etc/initramfs-tools/modules", 0o644, "initramfs-modules"),
		{Path: "/etc/initramfs-tools/conf.d", Mode: fs.ModeDir | 0o755},
		reg("/etc/initramfs-tools/conf.d/banger.conf", 0o644, "initramfs-banger.conf"),
		// root's home goes to the work-seed; its .ssh is where banger puts
		// authorized_keys per VM.
		{Path: "/root/.ssh", Mode: fs.ModeDir | 0o700},
	}
	wants := map[string]bool{}
	for _, e := range EnabledUnits {
		dir := unitDir + "/" + e.WantedBy + ".wants"
		if !wants[dir] {
			wants[dir] = true
			files = append(files, File{Path: dir, Mode: fs.ModeDir | 0o755})
		}
		files = append(files, File{Path: dir + "/" + e.Unit, Mode: fs.ModeSymlink | 0o777, Target: unitDir + "/" + e.Unit})
	}
	for _, u := range MaskedUnits {
		files = append(files, File{Path: unitDir + "/" + u, Mode: fs.ModeSymlink | 0o777, Target: "/dev/null"})
	}
	files = append(files, File{Path: generatorDir, Mode: fs.ModeDir | 0o755})
	for _, g := range MaskedGenerators {
		files = append(files, File{Path: generatorDir + "/" + g, Mode: fs.ModeSymlink | 0o777, Target: "/dev/null"})
	}
	return files
}

// Image variants.
const (
	// VariantLean is the default image: udev and the units a disposable VM
	// does not need are masked, the work disk is mounted by banger-init,
	// and the mini initrd boots it.
	VariantLean = "lean"
	// VariantStock is the same Debian minbase system with systemd and sshd
	// as Debian configures them (udev, gettys, timers, fsck at boot, the
	// initramfs-tools initrd), plus only banger-init (the guest contract)
	// and the power button: the reference the lean image is measured
	// against.
	VariantStock = "stock"
)

// ValidVariant reports whether v names an image variant ("" is lean).
func ValidVariant(v string) bool { return v == "" || v == VariantLean || v == VariantStock }

// FilesFor returns the entries of the image variant v: Files() for lean;
// for stock, the same without the masks (of units and generators), the
// console, the journal and ssh drop-ins, and with an fstab that mounts and
// checks both disks at boot, banger-init ordered after it.
func FilesFor(v string) []File {
	if v != VariantStock {
		return Files()
	}
	skip := map[string]bool{
		"/etc/fstab":                        true,
		unitDir + "/banger-console.service": true,
		unitDir + "/multi-user.target.wants/banger-console.service": true,
		"/etc/systemd/journald.conf.d":                              true,
		"/etc/systemd/journald.conf.d/banger.conf":                  true,
		unitDir + "/ssh.service.d":                                  true,
		unitDir + "/ssh.service.d/banger.conf":                      true,
		generatorDir:                                                true,
	}
	for _, u := range MaskedUnits {
		skip[unitDir+"/"+u] = true
	}
	for _, g := range MaskedGenerators {
		skip[generatorDir+"/"+g] = true
	}
	var out []File
	for _, f := range Files() {
		if !skip[f.Path] {
			out = append(out, f)
		}
	}
	return append(out,
		File{Path: "/etc/fstab", Mode: 0o644, Content: mustRead("fstab-stock")},
		File{Path: unitDir + "/banger-init.service.d", Mode: fs.ModeDir | 0o755},
		File{Path: unitDir + "/banger-init.service.d/stock.conf", Mode: 0o644, Content: mustRead("banger-init-stock.conf")},
	)
}

// Embedded returns the embedded source files by name (for tests and
// reviewers: the scripts are shell, checked with sh -n).
func Embedded() map[string][]byte {
	out := map[string][]byte{}
	entries, _ := embedded.ReadDir("files")
	for _, e := range entries {
		out[e.Name()] = mustRead(e.Name())
	}
	return out
}

// Scripts are the embedded files that are shell scripts.
var Scripts = []string{"banger-init", "banger-powerbtn", "initrd-init"}

// noUpdates are suites without -updates and -security suites.
var noUpdates = map[string]bool{"sid": true, "unstable": true, "experimental": true}

// AptSources renders /etc/apt/sources.list for suite from mirror, with the
// suite's -updates and, when security is set, its -security suite. The
// arguments must be validated (helperapi validates mirror URLs and suites):
// they are written as they are.
func AptSources(suite, mirror, security string) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "deb %s %s main\n", mirror, suite)
	if !noUpdates[suite] {
		fmt.Fprintf(&b, "deb %s %s-updates main\n", mirror, suite)
		if security != "" {
			fmt.Fprintf(&b, "deb %s %s-security main\n", security, suite)
		}
	}
	return []byte(b.String())
}

// Settings are one VM's kernel command line settings.
type Settings struct {
	// IP is the guest's address with its subnet's prefix length
	// (banger.ip=); invalid (zero) leaves the network unconfigured.
	IP netip.Prefix
	// Gateway is the default route (banger.gw=), DNS the nameserver
	// (banger.dns=); zero values are left out.
	Gateway netip.Addr
	DNS     netip.Addr
	// Hostname is an RFC 1123 label (banger.hostname=); "" keeps "banger".
	Hostname string
	// Console is the kernel console, default ttyS0.
	Console string
	// TSCKHz is the host's TSC frequency in kHz (tsc_early_khz=): under TCG
	// the guest's TSC is the host's, and the guest's own calibration
	// against the PIT can fail and hang the boot on a loaded host. 0 leaves
	// it out (fine under KVM). See ParseTSCKHz.
	TSCKHz uint32
	// Verbose drops "quiet loglevel=3", so every kernel message reaches
	// the console log.
	Verbose bool
}

// BaseCmdline is the fixed part of every command line: the console, the
// system disk vda read-write, eth0 as the NIC name whatever udev would say,
// reboot on panic (the VMM then exits), and what REPORT.md measured to help
// boot under TCG: a trusted TSC (TCG vCPUs fail the sync check and fall back
// to jiffies) and one 8250 UART to probe. cryptomgr.notests skips the crypto
// self-tests Debian's kernel runs as each algorithm registers (upstream's
// default is to build them out, CRYPTO_MANAGER_DISABLE_TESTS=y): measured
// with initcall_debug, crypto_algapi_init alone took 0.22 to 0.34 s of a
// 1 s initcall total under TCG.
const BaseCmdline = "root=/dev/vda rw net.ifnames=0 panic=-1 tsc=reliable 8250.nr_uarts=1 cryptomgr.notests"

var (
	hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	consoleRE  = regexp.MustCompile(`^[A-Za-z]{3,8}[0-9]{1,3}(,[0-9]{3,7}(n8)?)?$`)
)

// ValidateHostname accepts an RFC 1123 label: 1-63 of [A-Za-z0-9-], not
// starting or ending with '-'. Nothing else can reach the kernel command
// line, so a hostname cannot smuggle in another parameter.
func ValidateHostname(name string) error {
	if !hostnameRE.MatchString(name) {
		return fmt.Errorf("hostname %q: want 1-63 letters, digits and '-', not starting or ending with '-'", trunc(name))
	}
	return nil
}

// Validate checks s.
func (s Settings) Validate() error {
	if s.IP.IsValid() {
		a := s.IP.Addr()
		if a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
			return fmt.Errorf("guest address %s: want a unicast address with its prefix length", s.IP)
		}
		if a.Is4In6() {
			return fmt.Errorf("guest address %s: an IPv4-mapped IPv6 address", s.IP)
		}
	}
	for _, x := range []struct {
		name string
		a    netip.Addr
	}{{"gateway", s.Gateway}, {"dns", s.DNS}} {
		if !x.a.IsValid() {
			continue
		}
		if x.a.Zone() != "" || x.a.IsUnspecified() || x.a.IsMulticast() || x.a.Is4In6() {
			return fmt.Errorf("%s %s: want a unicast address", x.name, x.a)
		}
	}
	if s.Gateway.IsValid() {
		if !s.IP.IsValid() {
			return fmt.Errorf("gateway %s without a guest address", s.Gateway)
		}
		if s.Gateway.Is4() != s.IP.Addr().Is4() {
			return fmt.Errorf("gateway %s and guest address %s are of different families", s.Gateway, s.IP)
		}
		if s.Gateway == s.IP.Addr() {
			return fmt.Errorf("gateway %s is the guest's own address", s.Gateway)
		}
	}
	if s.Hostname != "" {
		if err := ValidateHostname(s.Hostname); err != nil {
			return err
		}
	}
	if s.Console != "" && !consoleRE.MatchString(s.Console) {
		return fmt.Errorf("console %q: want a device name such as ttyS0 (optionally ,115200n8)", trunc(s.Console))
	}
	if s.TSCKHz != 0 && (s.TSCKHz < 1000 || s.TSCKHz > 100_000_000) {
		return fmt.Errorf("tsc_early_khz %d: outside 1 MHz..100 GHz", s.TSCKHz)
	}
	return nil
}

// KernelCmdline renders the command line for s, for example
//
//	console=ttyS0 root=/dev/vda rw net.ifnames=0 panic=-1 tsc=reliable 8250.nr_uarts=1 cryptomgr.notests quiet loglevel=3
//	tsc_early_khz=2596150 banger.ip=10.77.0.2/24 banger.gw=10.77.0.1 banger.dns=10.77.0.1 banger.hostname=demo
//
// (one line). Every value is typed or validated, so nothing in s can add a
// parameter of its own.
func KernelCmdline(s Settings) (string, error) {
	if err := s.Validate(); err != nil {
		return "", err
	}
	console := s.Console
	if console == "" {
		console = "ttyS0"
	}
	parts := []string{"console=" + console, BaseCmdline}
	if !s.Verbose {
		parts = append(parts, "quiet loglevel=3")
	}
	if s.TSCKHz != 0 {
		parts = append(parts, "tsc_early_khz="+strconv.FormatUint(uint64(s.TSCKHz), 10))
	}
	if s.IP.IsValid() {
		parts = append(parts, "banger.ip="+s.IP.String())
	}
	if s.Gateway.IsValid() {
		parts = append(parts, "banger.gw="+s.Gateway.String())
	}
	if s.DNS.IsValid() {
		parts = append(parts, "banger.dns="+s.DNS.String())
	}
	if s.Hostname != "" {
		parts = append(parts, "banger.hostname="+s.Hostname)
	}
	return strings.Join(parts, " "), nil
}

var (
	tscDetectedRE = regexp.MustCompile(`tsc: Detected ([0-9]+)\.([0-9]{3}) MHz`)
	cpuMHzRE      = regexp.MustCompile(`(?m)^cpu MHz\s*:\s*([0-9]+)(?:\.([0-9]+))?`)
)

// ParseTSCKHz finds the host's TSC frequency in kHz for Settings.TSCKHz: the
// kernel's "tsc: Detected N.NNN MHz" line in dmesg (which may be unreadable
// to users: pass nil), else the first "cpu MHz" of /proc/cpuinfo (the TSC
// rate on VMs and hosts with a constant TSC; on others only roughly it,
// which is enough). ok is false when neither has it.
func ParseTSCKHz(dmesg, cpuinfo []byte) (khz uint32, ok bool) {
	if m := tscDetectedRE.FindSubmatch(dmesg); m != nil {
		v, err := strconv.ParseUint(string(m[1])+string(m[2]), 10, 32)
		if err == nil && v > 0 {
			return uint32(v), true
		}
	}
	if m := cpuMHzRE.FindSubmatch(cpuinfo); m != nil {
		frac := string(m[2]) + "000"
		v, err := strconv.ParseUint(string(m[1])+frac[:3], 10, 32)
		if err == nil && v > 0 {
			return uint32(v), true
		}
	}
	return 0, false
}

// CheckPath reports whether p is an absolute, clean path other than "/".
func CheckPath(p string) error {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
		return fmt.Errorf("path %q: want an absolute, clean path below /", p)
	}
	return nil
}

func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
