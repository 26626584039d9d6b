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
	"os"
	"path/filepath"
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

	log *slog.Logger
	// startProcess launches argv detached with its output appended to
	// logPath. Tests swap it.
	startProcess func(argv []string, logPath string) (*process, error)
}

var _ vmm.Driver = (*Driver)(nil)

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
func LoggerPath(s vmm.Spec) string { return filepath.Join(filepath.Dir(s.APISocket), LoggerFile) }

// NetIfaceID is the iface_id of the VM's one network interface.
const NetIfaceID = "eth0"

// Args builds Firecracker's argv for s, binary first. It runs nothing.
func Args(binary string, s vmm.Spec) []string {
	return []string{binary, "--api-sock", s.APISocket, "--id", s.ID}
}

// Request is one PUT of the boot sequence.
type Request struct {
	Step string // for errors and logs: "logger", "drive rootfs", ...
	Path string
	Body any
}

// Requests validates s and builds the PUT requests that configure and
// start its guest, in the order they are sent. It runs nothing, so tests
// check it as is. logLevel is Firecracker's log level.
func Requests(s vmm.Spec, logLevel string) ([]Request, error) {
	if err := validate(s); err != nil {
		return nil, err
	}
	reqs := []Request{
		{"logger", "/logger", Logger{LogPath: LoggerPath(s), Level: logLevel, ShowLevel: true}},
	}
	if s.MetricsPath != "" {
		reqs = append(reqs, Request{"metrics", "/metrics", Metrics{MetricsPath: s.MetricsPath}})
	}
	reqs = append(reqs,
		Request{"machine config", "/machine-config", MachineConfiguration{VCPUCount: s.VCPUs, MemSizeMiB: s.MemoryMiB}},
		Request{"boot source", "/boot-source", BootSource{KernelImagePath: s.Kernel, InitrdPath: s.Initrd, BootArgs: s.Cmdline}},
	)
	if s.ConsolePath != "" {
		reqs = append(reqs, Request{"serial console", "/serial", SerialDevice{SerialOutPath: s.ConsolePath}})
	}
	for i, disk := range s.Disks {
		reqs = append(reqs, Request{"drive " + disk.ID, "/drives/" + disk.ID, Drive{
			DriveID:      disk.ID,
			PathOnHost:   disk.Path,
			IsRootDevice: i == 0,
			IsReadOnly:   disk.ReadOnly,
			CacheType:    "Unsafe", // as qemu's cache=unsafe: guest flushes are not forced to disk
		}})
	}
	if s.TapName != "" {
		reqs = append(reqs, Request{"network interface", "/network-interfaces/" + NetIfaceID, NetworkInterface{
			IfaceID: NetIfaceID, HostDevName: s.TapName, GuestMAC: s.MAC,
		}})
	}
	if s.VSockPath != "" {
		reqs = append(reqs, Request{"vsock", "/vsock", Vsock{GuestCID: s.VSockCID, UDSPath: s.VSockPath}})
	}
	reqs = append(reqs, Request{"instance start", "/actions", InstanceActionInfo{ActionType: ActionInstanceStart}})
	return reqs, nil
}

// maxSocketPath is the longest path a unix socket address holds (sun_path
// is 108 bytes with the terminating NUL).
const maxSocketPath = 107

func validate(s vmm.Spec) error {
	if err := checkInstanceID(s.ID); err != nil {
		return err
	}
	if s.TapFile != nil {
		return errors.New("firecracker: the spec passes an open TAP; firecracker opens its TAP by name (TapName)")
	}
	if s.Kernel == "" {
		return errors.New("firecracker: no kernel: firecracker boots the image's ELF vmlinux")
	}
	if s.VCPUs < 1 || s.MemoryMiB < 64 {
		return fmt.Errorf("firecracker: %d vCPUs and %d MiB are not a VM", s.VCPUs, s.MemoryMiB)
	}
	if s.VCPUs > 32 {
		return fmt.Errorf("firecracker: %d vCPUs: firecracker takes at most 32", s.VCPUs)
	}
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
	}
	if s.MAC != "" {
		if hw, err := net.ParseMAC(s.MAC); err != nil || len(hw) != 6 {
			return fmt.Errorf("firecracker: MAC %q is not a 6-byte MAC address", s.MAC)
		}
	}
	if s.APISocket == "" || s.LogPath == "" {
		return errors.New("firecracker: the spec needs an API socket and a log path")
	}
	for _, p := range []string{s.APISocket, s.VSockPath} {
		if len(p) > maxSocketPath {
			return fmt.Errorf("firecracker: socket path %s is %d bytes, longer than a unix socket takes (%d)", p, len(p), maxSocketPath)
		}
	}
	if s.VSockPath != "" && s.VSockCID < 3 {
		return fmt.Errorf("firecracker: vsock CID %d: guest CIDs start at 3", s.VSockCID)
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

// prepareFiles clears stale sockets and creates the files Firecracker
// writes at offset 0 (see the package doc).
func prepareFiles(s vmm.Spec) error {
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
	if err := prepareFiles(s); err != nil {
		return 0, err
	}
	p, err := d.startProcess(Args(d.Binary, s), s.LogPath)
	if err != nil {
		return 0, fmt.Errorf("firecracker: starting %s: %w", d.Binary, err)
	}
	seeLogs := fmt.Sprintf("see %s and %s", s.LogPath, LoggerPath(s))
	fail := func(err error) (int, error) {
		p.kill()
		log.WarnContext(ctx, "firecracker start failed", "pid", p.pid, "error", err.Error())
		return 0, err
	}

	c := NewClient(s.APISocket)
	defer c.Close()
	info, err := d.waitAPI(ctx, c, p)
	if err != nil {
		return fail(fmt.Errorf("firecracker: %w; see %s", err, s.LogPath))
	}
	for _, r := range reqs {
		t := time.Now()
		if err := c.do(ctx, "PUT", r.Path, r.Body, nil); err != nil {
			if p.exited() {
				err = fmt.Errorf("%w (firecracker exited: %s)", err, p.status())
			}
			return fail(fmt.Errorf("firecracker: %s: %w; %s", r.Step, err, seeLogs))
		}
		log.DebugContext(ctx, "firecracker request", "step", r.Step, "path", r.Path, logging.KeyDurationMS, time.Since(t).Milliseconds())
	}
	log.InfoContext(ctx, "firecracker started", "pid", p.pid, "version", info.VMMVersion,
		logging.KeyDurationMS, time.Since(t0).Milliseconds())
	return p.pid, nil
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
