package firecracker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/vmm"
)

// Driver is the Firecracker vmm.Driver.
type Driver struct {
	// Binary is firecracker (a path or a name in PATH).
	Binary string
	// LogLevel is the level of Firecracker's own log: Error, Warning,
	// Info, Debug, Trace or Off.
	LogLevel string
	// APITimeout bounds the wait for the API socket to answer after launch.
	APITimeout time.Duration
	// HaltPoll is how often the halt watch of a started or restored VM
	// looks at its console (halt.go); 0 is DefaultHaltPoll, negative
	// turns the watch off.
	HaltPoll time.Duration

	log *slog.Logger
	// startProcess launches argv detached in directory dir with its
	// output appended to logPath. Tests swap it.
	startProcess func(argv []string, dir, logPath string) (*process, error)
}

var (
	_ vmm.Driver      = (*Driver)(nil)
	_ vmm.Snapshotter = (*Driver)(nil)
)

// New returns a Firecracker driver running binary. A nil logger discards.
func New(binary string, logger *slog.Logger) *Driver {
	if logger == nil {
		logger = logging.Discard()
	}
	return &Driver{
		Binary:       binary,
		LogLevel:     "Info",
		APITimeout:   5 * time.Second,
		log:          logger,
		startProcess: launch,
	}
}

// Name implements vmm.Driver.
func (d *Driver) Name() string { return "firecracker" }

// LoggerFile is the name of Firecracker's own log, next to the API socket.
const LoggerFile = "firecracker.log"

// LoggerPath is where Firecracker's logger writes for s.
func LoggerPath(s vmm.Spec) string { return filepath.Join(VMDir(s), LoggerFile) }

// VMDir is the VM's directory, the API socket's: Firecracker runs there.
// The drives and the vsock socket are given to Firecracker by names
// relative to it (DriveLink, inVMDir), so that a snapshot, which records
// those paths as given, restored in another VM's directory opens that
// VM's files.
func VMDir(s vmm.Spec) string { return filepath.Dir(s.APISocket) }

// DriveLink is the name, in the VM directory, of the symbolic link
// through which Firecracker opens drive id: "fc-drive-rootfs" and so on.
// Start and Restore point it at the Spec's disk, whatever the file is
// called, so a snapshot (which records the name) opens the restoring VM's
// own disks even when they are named otherwise than the snapshotted VM's
// (a clone's overlay files carry names of their own); Firecracker's load
// has no override for drives.
func DriveLink(id string) string { return "fc-drive-" + id }

// linkDrives points each disk's DriveLink at its file (absolute), replacing
// an older link; a DriveLink that is not a link is refused.
func linkDrives(s vmm.Spec) error {
	for _, disk := range s.Disks {
		link := filepath.Join(VMDir(s), DriveLink(disk.ID))
		if fi, err := os.Lstat(link); err == nil && fi.Mode().Type() != fs.ModeSymlink {
			return fmt.Errorf("firecracker: %s exists and is not a symbolic link", link)
		}
		tmp := link + ".tmp"
		os.Remove(tmp)
		if err := os.Symlink(disk.Path, tmp); err != nil {
			return fmt.Errorf("firecracker: linking drive %s: %w", disk.ID, err)
		}
		if err := os.Rename(tmp, link); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("firecracker: linking drive %s: %w", disk.ID, err)
		}
	}
	return nil
}

// inVMDir is path relative to s's VM directory when it lies inside it, and
// path as is otherwise.
func inVMDir(s vmm.Spec, path string) string {
	rel, err := filepath.Rel(VMDir(s), path)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return path
	}
	return rel
}

// NetIfaceID is the iface_id of the VM's one network interface.
const NetIfaceID = "eth0"

// Args builds Firecracker's argv for s, binary first. It runs nothing.
func Args(binary string, s vmm.Spec) []string {
	return []string{binary, "--api-sock", s.APISocket, "--id", s.ID}
}

// Request is one PUT of the boot or restore sequence.
type Request struct {
	Step string // for errors and logs: "logger", "drive rootfs", ...
	Path string
	Body any
	// Timeout bounds the request when longer than the client's (a
	// snapshot load).
	Timeout time.Duration
}

// Requests validates s and builds the PUT requests that configure and
// start its guest, in the order they are sent. It runs nothing, so tests
// check it as is. logLevel is Firecracker's log level. Drives are given
// as their DriveLink, and a vsock socket inside the VM directory relative
// to it (see VMDir).
func Requests(s vmm.Spec, logLevel string) ([]Request, error) {
	if err := validate(s); err != nil {
		return nil, err
	}
	reqs := []Request{
		{Step: "logger", Path: "/logger", Body: Logger{LogPath: LoggerPath(s), Level: logLevel, ShowLevel: true}},
	}
	if s.MetricsPath != "" {
		reqs = append(reqs, Request{Step: "metrics", Path: "/metrics", Body: Metrics{MetricsPath: s.MetricsPath}})
	}
	reqs = append(reqs,
		Request{Step: "machine config", Path: "/machine-config", Body: MachineConfiguration{VCPUCount: s.VCPUs, MemSizeMiB: s.MemoryMiB}},
		Request{Step: "boot source", Path: "/boot-source", Body: BootSource{KernelImagePath: s.Kernel, InitrdPath: s.Initrd, BootArgs: s.Cmdline}},
	)
	if s.ConsolePath != "" {
		reqs = append(reqs, Request{Step: "serial console", Path: "/serial", Body: SerialDevice{SerialOutPath: s.ConsolePath}})
	}
	for i, disk := range s.Disks {
		reqs = append(reqs, Request{Step: "drive " + disk.ID, Path: "/drives/" + disk.ID, Body: Drive{
			DriveID:      disk.ID,
			PathOnHost:   DriveLink(disk.ID),
			IsRootDevice: i == 0,
			IsReadOnly:   disk.ReadOnly,
			CacheType:    "Unsafe", // as qemu's cache=unsafe: guest flushes are not forced to disk
		}})
	}
	if s.TapName != "" {
		reqs = append(reqs, Request{Step: "network interface", Path: "/network-interfaces/" + NetIfaceID, Body: NetworkInterface{
			IfaceID: NetIfaceID, HostDevName: s.TapName, GuestMAC: s.MAC,
		}})
	}
	if s.VSockPath != "" {
		reqs = append(reqs, Request{Step: "vsock", Path: "/vsock", Body: Vsock{GuestCID: s.VSockCID, UDSPath: inVMDir(s, s.VSockPath)}})
	}
	reqs = append(reqs, Request{Step: "instance start", Path: "/actions", Body: InstanceActionInfo{ActionType: ActionInstanceStart}})
	return reqs, nil
}

// maxSocketPath is the longest path a unix socket address holds (sun_path
// is 108 bytes with the terminating NUL).
const maxSocketPath = 107

func validate(s vmm.Spec) error {
	if s.Kernel == "" {
		return errors.New("firecracker: no kernel: firecracker boots the image's ELF vmlinux")
	}
	if s.VCPUs < 1 || s.MemoryMiB < 64 {
		return fmt.Errorf("firecracker: %d vCPUs and %d MiB are not a VM", s.VCPUs, s.MemoryMiB)
	}
	if s.VCPUs > 32 {
		return fmt.Errorf("firecracker: %d vCPUs: firecracker takes at most 32", s.VCPUs)
	}
	if err := checkDisks(s); err != nil {
		return err
	}
	if s.MAC != "" {
		if err := checkMAC(s.MAC); err != nil {
			return err
		}
	}
	if s.VSockPath != "" && s.VSockCID < 3 {
		return fmt.Errorf("firecracker: vsock CID %d: guest CIDs start at 3", s.VSockCID)
	}
	paths := []string{s.Kernel, s.Initrd}
	for _, disk := range s.Disks {
		paths = append(paths, disk.Path)
	}
	return validateHost(s, paths...)
}

// checkDisks checks s's disks: at least one, raw, with a path and an id
// Firecracker takes in a path (which also names its DriveLink), each id
// once.
func checkDisks(s vmm.Spec) error {
	if len(s.Disks) == 0 {
		return errors.New("firecracker: no disks")
	}
	seen := map[string]bool{}
	for _, disk := range s.Disks {
		if err := checkPathID("drive_id", disk.ID); err != nil {
			return err
		}
		if seen[disk.ID] {
			return fmt.Errorf("firecracker: two disks are called %q", disk.ID)
		}
		seen[disk.ID] = true
		switch disk.Format {
		case "", "raw":
		case "qcow2":
			return fmt.Errorf("firecracker: disk %s (%s) is qcow2; firecracker takes raw images only", disk.ID, disk.Path)
		default:
			return fmt.Errorf("firecracker: disk %s: format %q", disk.ID, disk.Format)
		}
		if disk.Path == "" {
			return fmt.Errorf("firecracker: disk %s has no path", disk.ID)
		}
		if !filepath.IsAbs(disk.Path) {
			return fmt.Errorf("firecracker: disk %s: path %q is relative; the spec's paths must be absolute", disk.ID, disk.Path)
		}
	}
	return nil
}

// validateHost checks what Start and Restore share: the TAP's name, the
// files and sockets. Paths must be absolute: Firecracker runs in the VM
// directory, not in bangerd's.
func validateHost(s vmm.Spec, more ...string) error {
	if err := checkInstanceID(s.ID); err != nil {
		return err
	}
	if s.TapFile != nil {
		return errors.New("firecracker: the spec passes an open TAP; firecracker opens its TAP by name (TapName)")
	}
	if s.TapName != "" {
		if err := checkTapName(s.TapName); err != nil {
			return err
		}
	}
	if s.APISocket == "" || s.LogPath == "" {
		return errors.New("firecracker: the spec needs an API socket and a log path")
	}
	for _, p := range append([]string{s.APISocket, s.LogPath, s.ConsolePath, s.MetricsPath, s.VSockPath}, more...) {
		if p != "" && !filepath.IsAbs(p) {
			return fmt.Errorf("firecracker: path %q is relative; the spec's paths must be absolute", p)
		}
	}
	for _, p := range []string{s.APISocket, s.VSockPath} {
		if len(p) > maxSocketPath {
			return fmt.Errorf("firecracker: socket path %s is %d bytes, longer than a unix socket takes (%d)", p, len(p), maxSocketPath)
		}
	}
	return nil
}

// checkMAC applies the rule of Firecracker's guest_mac parser: six
// colon-separated pairs of hex digits. (net.ParseMAC also takes dashes,
// dots and 8- or 20-byte addresses, which Firecracker refuses.)
func checkMAC(mac string) error {
	parts := strings.Split(mac, ":")
	ok := len(parts) == 6
	for _, p := range parts {
		if len(p) != 2 || !isHex(p[0]) || !isHex(p[1]) {
			ok = false
		}
	}
	if !ok {
		return fmt.Errorf("firecracker: MAC %q: want six pairs of hex digits separated by ':' (02:ab:cd:ef:01:23), the only form firecracker takes", mac)
	}
	return nil
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// ifNameSize is the kernel's IFNAMSIZ: an interface name and its NUL.
const ifNameSize = 16

// checkTapName applies the kernel's rules for an interface name, which
// Firecracker opens the TAP by: under IFNAMSIZ bytes, not "." or "..",
// no '/', ':' or white space.
func checkTapName(name string) error {
	if len(name) >= ifNameSize {
		return fmt.Errorf("firecracker: TAP name %q is %d bytes: an interface name has at most %d (IFNAMSIZ %d, with its NUL)", name, len(name), ifNameSize-1, ifNameSize)
	}
	if name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n\r\v\f") {
		return fmt.Errorf("firecracker: TAP name %q: an interface name is not . or .. and has no '/', ':' or white space", name)
	}
	return nil
}

// checkInstanceID applies Firecracker's rule for --id: 1 to 64 letters,
// digits and '-'.
func checkInstanceID(id string) error {
	ok := id != "" && len(id) <= 64
	for _, r := range id {
		if !(r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			ok = false
		}
	}
	if !ok {
		return fmt.Errorf("firecracker: instance id %q: want 1 to 64 letters, digits and '-'", id)
	}
	return nil
}

// checkVmlinux refuses a kernel that is not an ELF file: Firecracker loads
// the uncompressed vmlinux, not the bzImage qemu boots.
func checkVmlinux(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("firecracker: kernel: %w", err)
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err != nil || !bytes.Equal(magic, []byte("\x7fELF")) {
		return fmt.Errorf("firecracker: kernel %s is not an ELF vmlinux (a bzImage?); firecracker boots the vmlinux extracted from the image's kernel", path)
	}
	return nil
}

// prepareFiles clears stale sockets, creates the files Firecracker writes
// at offset 0 (see the package doc) and links the drives (DriveLink).
func prepareFiles(s vmm.Spec) error {
	if err := linkDrives(s); err != nil {
		return err
	}
	for _, sock := range []string{s.APISocket, s.VSockPath} {
		if err := removeStaleSocket(sock); err != nil {
			return err
		}
	}
	for _, p := range []string{LoggerPath(s), s.ConsolePath} {
		if err := createEmpty(p); err != nil {
			return err
		}
	}
	if s.MetricsPath != "" {
		fi, err := os.Stat(s.MetricsPath)
		if err != nil || fi.Mode().IsRegular() { // a FIFO stays a FIFO
			if err := createEmpty(s.MetricsPath); err != nil {
				return err
			}
		}
	}
	return nil
}

func createEmpty(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("firecracker: %w", err)
	}
	return f.Close()
}

// removeStaleSocket removes a socket nothing answers on. It refuses a live
// one (a VMM still running with this spec) and anything not a socket.
func removeStaleSocket(path string) error {
	if path == "" {
		return nil
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("firecracker: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("firecracker: %s exists and is not a socket", path)
	}
	if conn, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		conn.Close()
		return fmt.Errorf("firecracker: something still answers on %s: is the VM already running?", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("firecracker: removing the stale socket: %w", err)
	}
	return nil
}

// Start implements vmm.Driver. See the package doc for the sequence and
// the files.
func (d *Driver) Start(ctx context.Context, s vmm.Spec) (int, error) {
	t0 := time.Now()
	log := d.log.With(logging.KeyVM, vmName(s))
	reqs, err := Requests(s, d.LogLevel)
	if err != nil {
		return 0, err
	}
	if err := checkVmlinux(s.Kernel); err != nil {
		return 0, err
	}
	p, c, v, err := d.launchAPI(ctx, s)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	for _, r := range reqs {
		if err := d.put(ctx, c, p, s, r); err != nil {
			return 0, err
		}
	}
	d.watch(s, p)
	log.InfoContext(ctx, "firecracker started", "pid", p.pid, "version", v.String(),
		logging.KeyDurationMS, time.Since(t0).Milliseconds())
	return p.pid, nil
}

// launchAPI prepares s's files, launches Firecracker in the VM directory,
// waits for its API and checks its version. On an error it has killed the
// process.
func (d *Driver) launchAPI(ctx context.Context, s vmm.Spec) (*process, *Client, Version, error) {
	if err := prepareFiles(s); err != nil {
		return nil, nil, Version{}, err
	}
	p, err := d.startProcess(Args(d.Binary, s), VMDir(s), s.LogPath)
	if err != nil {
		return nil, nil, Version{}, fmt.Errorf("firecracker: starting %s: %w", d.Binary, err)
	}
	c := NewClient(s.APISocket)
	if _, err := d.waitAPI(ctx, c, p); err != nil {
		c.Close()
		return nil, nil, Version{}, d.failed(ctx, s, p, fmt.Errorf("firecracker: %w; see %s", err, s.LogPath))
	}
	v, err := apiVersion(ctx, c, d.Binary)
	if err != nil {
		c.Close()
		return nil, nil, Version{}, d.failed(ctx, s, p, fmt.Errorf("firecracker: %w", err))
	}
	return p, c, v, nil
}

// put sends one configuration request; on an error it kills p and says
// which step failed, how, and where the logs are.
func (d *Driver) put(ctx context.Context, c *Client, p *process, s vmm.Spec, r Request) error {
	t := time.Now()
	if err := c.longer(r.Timeout).do(ctx, http.MethodPut, r.Path, r.Body, nil); err != nil {
		if p.exited() {
			err = fmt.Errorf("%w (firecracker exited: %s)", err, p.status())
		}
		return d.failed(ctx, s, p, fmt.Errorf("firecracker: %s: %w; see %s and %s", r.Step, err, s.LogPath, LoggerPath(s)))
	}
	d.log.DebugContext(ctx, "firecracker request", logging.KeyVM, vmName(s), "step", r.Step, "path", r.Path, logging.KeyDurationMS, time.Since(t).Milliseconds())
	return nil
}

// failed kills p and logs err, which it returns.
func (d *Driver) failed(ctx context.Context, s vmm.Spec, p *process, err error) error {
	p.kill()
	d.log.WarnContext(ctx, "firecracker start failed", logging.KeyVM, vmName(s), "pid", p.pid, "error", err.Error())
	return err
}

// waitAPI polls GET / until Firecracker answers, it exits, or APITimeout
// passes.
func (d *Driver) waitAPI(ctx context.Context, c *Client, p *process) (InstanceInfo, error) {
	timeout := d.APITimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	deadline := time.Now().Add(timeout)
	probe := &Client{Timeout: time.Second, socket: c.socket, hc: c.hc}
	for {
		info, err := probe.Describe(ctx)
		if err == nil {
			return info, nil
		}
		var apiErr *APIError
		if errors.As(err, &apiErr) {
			return InstanceInfo{}, err // it answers, and says no
		}
		if p.exited() {
			return InstanceInfo{}, fmt.Errorf("it exited before its API answered (%s)", p.status())
		}
		if time.Now().After(deadline) {
			return InstanceInfo{}, fmt.Errorf("the API socket %s did not answer within %s: %w", c.socket, timeout, err)
		}
		select {
		case <-ctx.Done():
			return InstanceInfo{}, ctx.Err()
		case <-p.done:
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Shutdown implements vmm.Driver: Ctrl-Alt-Del, which the guest turns into
// a reboot, on which Firecracker exits.
func (d *Driver) Shutdown(ctx context.Context, s vmm.Spec) error {
	c := NewClient(s.APISocket)
	defer c.Close()
	if err := c.Action(ctx, ActionSendCtrlAltDel); err != nil {
		return fmt.Errorf("firecracker: shutdown: %w", err)
	}
	d.log.InfoContext(ctx, "firecracker: sent Ctrl-Alt-Del", logging.KeyVM, vmName(s))
	return nil
}

func vmName(s vmm.Spec) string {
	if s.Name != "" {
		return s.Name
	}
	return s.ID
}
