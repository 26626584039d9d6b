package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/vmm"
)

// harness is a driver whose launcher, instead of Firecracker, starts the
// fake API server on the --api-sock path and a `sleep` process whose pid
// it returns, so tests can tell whether the driver killed it.
type harness struct {
	t        *testing.T
	dir      string
	spec     vmm.Spec
	drv      *Driver
	api      *fakeAPI
	proc     *process
	launches int
	noServer bool     // start no API server (a Firecracker that never answers)
	command  []string // the stand-in process; sleep 60 by default
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	// Short, so that socket paths fit in sun_path.
	dir, err := os.MkdirTemp("", "fc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("\x7fELF\x02\x01\x01\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The files Firecracker opens at configuration (the fake opens them
	// too): the initrd and the drives.
	for _, name := range []string{"initrd.img", "root.ext4", "work.ext4", "config.tar"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h := &harness{t: t, dir: dir, command: []string{"sleep", "60"}}
	h.spec = vmm.Spec{
		ID: "0123abcd", Name: "demo", VCPUs: 2, MemoryMiB: 512,
		Kernel: kernel, Initrd: filepath.Join(dir, "initrd.img"),
		Cmdline: "console=ttyS0 reboot=k panic=1",
		Disks: []vmm.Disk{
			{ID: "rootfs", Path: filepath.Join(dir, "root.ext4"), Format: "raw"},
			{ID: "work", Path: filepath.Join(dir, "work.ext4")},
			// banger's config disk (guest.ConfigDisk): read-only.
			{ID: "config", Path: filepath.Join(dir, "config.tar"), ReadOnly: true},
		},
		TapName: "tap-0123", MAC: "02:00:00:00:00:01",
		APISocket:   filepath.Join(dir, "api.sock"),
		LogPath:     filepath.Join(dir, "vmm.log"),
		ConsolePath: filepath.Join(dir, "console.log"),
		MetricsPath: filepath.Join(dir, "metrics.json"),
		VSockPath:   filepath.Join(dir, "vsock.sock"),
		VSockCID:    3,
	}
	h.api = newFakeAPI(h.spec.ID, dir)
	// Every body the driver sends is checked against the spec's schema;
	// a violation fails the test (fakeAPI.strict).
	h.api.strict = true
	h.drv = New("/usr/bin/firecracker", logging.Discard())
	h.drv.APITimeout = 2 * time.Second
	h.drv.startProcess = h.launch
	return h
}

func (h *harness) launch(argv []string, dir, logPath string) (*process, error) {
	h.launches++
	if want := Args(h.drv.Binary, h.spec); !slices.Equal(argv, want) {
		h.t.Errorf("argv %q, want %q", argv, want)
	}
	if dir != h.dir {
		h.t.Errorf("runs in %s, want the VM directory %s", dir, h.dir)
	}
	if logPath != h.spec.LogPath {
		h.t.Errorf("output to %s, want %s", logPath, h.spec.LogPath)
	}
	if _, err := os.Lstat(h.spec.APISocket); !errors.Is(err, fs.ErrNotExist) {
		h.t.Errorf("API socket still there at launch: %v", err)
	}
	if !h.noServer {
		h.api.serve(h.t, h.spec.APISocket)
	}
	cmd := exec.Command(h.command[0], h.command[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	h.proc = p
	h.t.Cleanup(p.kill)
	return p, nil
}

// assertKilled checks the stand-in process died of SIGKILL.
func (h *harness) assertKilled() {
	h.t.Helper()
	if h.proc == nil {
		h.t.Fatal("nothing was launched")
	}
	select {
	case <-h.proc.done:
	case <-time.After(5 * time.Second):
		h.t.Fatal("the process is still running")
	}
	var ee *exec.ExitError
	if !errors.As(h.proc.err, &ee) {
		h.t.Fatalf("process exit: %v, want killed", h.proc.err)
	}
	if ws := ee.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		h.t.Fatalf("process exit: %v, want killed by SIGKILL", h.proc.err)
	}
}

// bootCalls is the full sequence for the harness's spec.
var bootCalls = []string{
	"GET /",
	"GET /version",
	"PUT /logger",
	"PUT /metrics",
	"PUT /machine-config",
	"PUT /boot-source",
	"PUT /serial",
	"PUT /drives/rootfs",
	"PUT /drives/work",
	"PUT /drives/config",
	"PUT /network-interfaces/eth0",
	"PUT /vsock",
	"PUT /actions",
}

func TestStartConfiguresInOrder(t *testing.T) {
	h := newHarness(t)
	// Leftovers of a previous run: a dead API socket, a console and a
	// Firecracker log with old contents.
	l, err := net.Listen("unix", h.spec.APISocket)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	for _, p := range []string{h.spec.ConsolePath, LoggerPath(h.spec)} {
		if err := os.WriteFile(p, []byte("old boot\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	pid, err := h.drv.Start(context.Background(), h.spec)
	if err != nil {
		t.Fatal(err)
	}
	if pid != h.proc.pid || h.proc.exited() {
		t.Fatalf("pid %d, want the running %d", pid, h.proc.pid)
	}
	if got := h.api.Calls(); !slices.Equal(got, bootCalls) {
		t.Fatalf("calls\n got %q\nwant %q", got, bootCalls)
	}

	want := map[string]map[string]any{
		"PUT /logger":         {"log_path": filepath.Join(h.dir, "firecracker.log"), "level": "Info", "show_level": true},
		"PUT /metrics":        {"metrics_path": h.spec.MetricsPath},
		"PUT /machine-config": {"vcpu_count": 2.0, "mem_size_mib": 512.0},
		"PUT /boot-source":    {"kernel_image_path": h.spec.Kernel, "initrd_path": h.spec.Initrd, "boot_args": "console=ttyS0 reboot=k panic=1"},
		"PUT /serial":         {"serial_out_path": h.spec.ConsolePath},
		// Links in the VM directory, relative to it (Firecracker runs
		// there): a snapshot records the names, and a restore elsewhere
		// opens that VM's disks through its own links.
		"PUT /drives/rootfs": {"drive_id": "rootfs", "path_on_host": "fc-drive-rootfs",
			"is_root_device": true, "is_read_only": false, "cache_type": "Unsafe"},
		"PUT /drives/work": {"drive_id": "work", "path_on_host": "fc-drive-work",
			"is_root_device": false, "is_read_only": false, "cache_type": "Unsafe"},
		"PUT /drives/config": {"drive_id": "config", "path_on_host": "fc-drive-config",
			"is_root_device": false, "is_read_only": true, "cache_type": "Unsafe"},
		"PUT /network-interfaces/eth0": {"iface_id": "eth0", "host_dev_name": "tap-0123", "guest_mac": "02:00:00:00:00:01"},
		"PUT /vsock":                   {"guest_cid": 3.0, "uds_path": "vsock.sock"},
		"PUT /actions":                 {"action_type": "InstanceStart"},
	}
	for call, body := range want {
		if got := h.api.Body(call); !reflect.DeepEqual(got, body) {
			t.Errorf("%s body\n got %v\nwant %v", call, got, body)
		}
	}

	for _, d := range h.spec.Disks {
		if target, err := os.Readlink(filepath.Join(h.dir, DriveLink(d.ID))); err != nil || target != d.Path {
			t.Errorf("drive link %s -> %q (%v), want %s", DriveLink(d.ID), target, err, d.Path)
		}
	}
	// The files Firecracker writes at offset 0 are there and empty.
	for _, p := range []string{h.spec.ConsolePath, LoggerPath(h.spec), h.spec.MetricsPath} {
		fi, err := os.Stat(p)
		if err != nil || !fi.Mode().IsRegular() || fi.Size() != 0 {
			t.Errorf("%s: want an empty regular file (%v)", p, err)
		}
	}
}

func TestStartMinimalSpec(t *testing.T) {
	h := newHarness(t)
	h.spec.MetricsPath, h.spec.ConsolePath, h.spec.VSockPath, h.spec.TapName, h.spec.MAC = "", "", "", "", ""
	h.spec.Initrd = ""
	h.spec.Disks = h.spec.Disks[:1]
	h.spec.Disks[0].ReadOnly = true
	if _, err := h.drv.Start(context.Background(), h.spec); err != nil {
		t.Fatal(err)
	}
	want := []string{"GET /", "GET /version", "PUT /logger", "PUT /machine-config", "PUT /boot-source", "PUT /drives/rootfs", "PUT /actions"}
	if got := h.api.Calls(); !slices.Equal(got, want) {
		t.Fatalf("calls\n got %q\nwant %q", got, want)
	}
	if b := h.api.Body("PUT /boot-source"); b["initrd_path"] != nil {
		t.Errorf("boot source without an initrd sends initrd_path: %v", b)
	}
	if b := h.api.Body("PUT /drives/rootfs"); b["is_read_only"] != true {
		t.Errorf("read-only root: %v", b)
	}
}

// A 400 from any endpoint fails Start with the step, the endpoint, the
// fault message and the log paths, kills Firecracker, and sends nothing more.
func TestStartFailureKillsFirecracker(t *testing.T) {
	steps := map[string]string{
		"PUT /logger":                  "logger",
		"PUT /metrics":                 "metrics",
		"PUT /machine-config":          "machine config",
		"PUT /boot-source":             "boot source",
		"PUT /serial":                  "serial console",
		"PUT /drives/rootfs":           "drive rootfs",
		"PUT /drives/work":             "drive work",
		"PUT /drives/config":           "drive config",
		"PUT /network-interfaces/eth0": "network interface",
		"PUT /vsock":                   "vsock",
		"PUT /actions":                 "instance start",
	}
	for i, call := range bootCalls[2:] {
		t.Run(strings.ReplaceAll(steps[call], " ", "_"), func(t *testing.T) {
			h := newHarness(t)
			h.api.FailOn(call, "injected fault for "+call)
			_, err := h.drv.Start(context.Background(), h.spec)
			if err == nil {
				t.Fatal("Start succeeded")
			}
			t.Log(err)
			msg := err.Error()
			for _, want := range []string{
				"firecracker: " + steps[call] + ": ",
				call + ": 400 Bad Request: injected fault for " + call,
				h.spec.LogPath, LoggerPath(h.spec),
			} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q lacks %q", msg, want)
				}
			}
			var apiErr *APIError
			if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 {
				t.Errorf("error %v does not carry the APIError", err)
			}
			h.assertKilled()
			if got, want := h.api.Calls(), bootCalls[:i+3]; !slices.Equal(got, want) {
				t.Errorf("calls\n got %q\nwant %q", got, want)
			}
		})
	}
}

func TestStartAPINeverAnswers(t *testing.T) {
	h := newHarness(t)
	h.noServer = true
	h.drv.APITimeout = 300 * time.Millisecond
	_, err := h.drv.Start(context.Background(), h.spec)
	if err == nil || !strings.Contains(err.Error(), "did not answer within 300ms") || !strings.Contains(err.Error(), h.spec.LogPath) {
		t.Fatalf("err = %v", err)
	}
	h.assertKilled()
}

func TestStartFirecrackerExits(t *testing.T) {
	h := newHarness(t)
	h.noServer = true
	h.command = []string{"sh", "-c", "exit 3"}
	t0 := time.Now()
	_, err := h.drv.Start(context.Background(), h.spec)
	if err == nil || !strings.Contains(err.Error(), "exited before its API answered") ||
		!strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), h.spec.LogPath) {
		t.Fatalf("err = %v", err)
	}
	t.Log(err)
	if time.Since(t0) > time.Second {
		t.Errorf("took %s to notice the exit", time.Since(t0))
	}
}

func TestStartCanceled(t *testing.T) {
	h := newHarness(t)
	h.noServer = true
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := h.drv.Start(ctx, h.spec); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's", err)
	}
	h.assertKilled()
}

// launch, the real launcher: own session, stdin from /dev/null, stdout
// and stderr appended to the log after a line naming the command.
func TestLaunch(t *testing.T) {
	log := filepath.Join(t.TempDir(), "vmm.log")
	if err := os.WriteFile(log, []byte("earlier run\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	script := `read x; echo "stdin:[$x]"; echo err >&2; echo "sid:$(cut -d' ' -f6 /proc/$$/stat)"; exit 4`
	p, err := launch([]string{"sh", "-c", script}, filepath.Dir(log), log)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.kill()
		t.Fatal("the process did not exit")
	}
	if p.status() != "exit status 4" {
		t.Errorf("status %q", p.status())
	}
	b, _ := os.ReadFile(log)
	got := string(b)
	for _, want := range []string{"earlier run\n==> ", " sh -c ", "stdin:[]\n", "err\n", "sid:" + strconv.Itoa(p.pid) + "\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("log lacks %q:\n%s", want, got)
		}
	}
	if _, err := launch([]string{filepath.Join(t.TempDir(), "no-firecracker")}, filepath.Dir(log), log); err == nil {
		t.Error("launch of a missing binary succeeded")
	}
}

func TestStartRefusesBeforeLaunch(t *testing.T) {
	for name, mut := range map[string]func(h *harness){
		"tap file":     func(h *harness) { h.spec.TapFile = os.Stdin },
		"qcow2 disk":   func(h *harness) { h.spec.Disks[1].Format = "qcow2" },
		"no kernel":    func(h *harness) { h.spec.Kernel = "" },
		"bzImage":      func(h *harness) { _ = os.WriteFile(h.spec.Kernel, []byte("MZ\x00\x00HdrS"), 0o644) },
		"missing":      func(h *harness) { h.spec.Kernel = filepath.Join(h.dir, "nope") },
		"no disks":     func(h *harness) { h.spec.Disks = nil },
		"disk id":      func(h *harness) { h.spec.Disks[1].ID = "../logger" },
		"same disk id": func(h *harness) { h.spec.Disks[1].ID = "rootfs" },
		"instance id":  func(h *harness) { h.spec.ID = "a b" },
		"vcpus":        func(h *harness) { h.spec.VCPUs = 33 },
		"memory":       func(h *harness) { h.spec.MemoryMiB = 0 },
		"vsock cid":    func(h *harness) { h.spec.VSockCID = 2 },
		"mac":          func(h *harness) { h.spec.MAC = "02:00:00:00:01" },
		// net.ParseMAC takes these; Firecracker's MacAddr does not.
		"mac dashes":    func(h *harness) { h.spec.MAC = "02-00-00-00-00-01" },
		"mac dots":      func(h *harness) { h.spec.MAC = "0200.0000.0001" },
		"mac eui64":     func(h *harness) { h.spec.MAC = "02:00:00:00:00:00:00:01" },
		"mac short":     func(h *harness) { h.spec.MAC = "2:0:0:0:0:1" },
		"tap 16 bytes":  func(h *harness) { h.spec.TapName = "tap-0123456789ab" },
		"tap slash":     func(h *harness) { h.spec.TapName = "tap/0" },
		"tap space":     func(h *harness) { h.spec.TapName = "tap 0" },
		"no log":        func(h *harness) { h.spec.LogPath = "" },
		"long socket":   func(h *harness) { h.spec.APISocket = "/" + strings.Repeat("s", 120) },
		"not a socket":  func(h *harness) { _ = os.WriteFile(h.spec.APISocket, nil, 0o600) },
		"relative disk": func(h *harness) { h.spec.Disks[1].Path = "work.ext4" },
		"drive link is a file": func(h *harness) {
			_ = os.WriteFile(filepath.Join(h.dir, DriveLink("work")), nil, 0o600)
		},
		"live socket": func(h *harness) {
			l, err := net.Listen("unix", h.spec.APISocket)
			if err != nil {
				h.t.Fatal(err)
			}
			h.t.Cleanup(func() { l.Close() })
		},
	} {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			mut(h)
			_, err := h.drv.Start(context.Background(), h.spec)
			if err == nil {
				t.Fatal("Start accepted the spec")
			}
			t.Log(err)
			if h.launches != 0 {
				t.Fatal("Start launched firecracker")
			}
		})
	}
}

// What Firecracker takes at the edge of the driver's rules: a TAP name of
// 15 bytes (IFNAMSIZ less its NUL), upper-case hex in a MAC.
func TestStartAcceptsLimits(t *testing.T) {
	h := newHarness(t)
	h.spec.TapName, h.spec.MAC = "tap-0123456789a", "02:AB:cd:EF:00:01"
	if _, err := h.drv.Start(context.Background(), h.spec); err != nil {
		t.Fatal(err)
	}
	if b := h.api.Body("PUT /network-interfaces/eth0"); b["host_dev_name"] != "tap-0123456789a" || b["guest_mac"] != "02:AB:cd:EF:00:01" {
		t.Fatalf("body %v", b)
	}
}

func TestShutdownSendsCtrlAltDel(t *testing.T) {
	h := newHarness(t)
	if _, err := h.drv.Start(context.Background(), h.spec); err != nil {
		t.Fatal(err)
	}
	if err := h.drv.Shutdown(context.Background(), h.spec); err != nil {
		t.Fatal(err)
	}
	calls := h.api.Calls()
	if got := calls[len(calls)-1]; got != "PUT /actions" {
		t.Fatalf("last call %s", got)
	}
	if b := h.api.Body("PUT /actions"); b["action_type"] != "SendCtrlAltDel" {
		t.Fatalf("action %v", b)
	}
}

func TestShutdownNotRunning(t *testing.T) {
	h := newHarness(t)
	err := h.drv.Shutdown(context.Background(), h.spec)
	if !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("err = %v, want ErrNotRunning", err)
	}
	if !strings.Contains(err.Error(), "PUT /actions") {
		t.Errorf("error %q does not name the endpoint", err)
	}
}

// Each request type marshals to exactly the field names of its spec
// definition: every field it has is in the spec, every required field is
// sent even when zero, and an optional one is left out when zero (except
// the few the spec requires for virtio-block).
func TestJSONFieldNamesMatchSpec(t *testing.T) {
	for _, c := range []struct {
		def        string
		zero, full any
		alwaysSent []string
	}{
		{"Logger", Logger{}, Logger{LogPath: "/l", Level: "Debug", ShowLevel: true, ShowLogOrigin: true, Module: "api_server::request"}, nil},
		{"Metrics", Metrics{}, Metrics{MetricsPath: "/m"}, nil},
		{"MachineConfiguration", MachineConfiguration{}, MachineConfiguration{VCPUCount: 2, MemSizeMiB: 512, SMT: true, TrackDirtyPages: true, HugePages: "2M"}, nil},
		{"BootSource", BootSource{}, BootSource{KernelImagePath: "/k", BootArgs: "console=ttyS0", InitrdPath: "/i"}, nil},
		{"SerialDevice", SerialDevice{}, SerialDevice{SerialOutPath: "/c"}, nil},
		{"Drive", Drive{}, Drive{DriveID: "rootfs", PathOnHost: "/r", IsRootDevice: true, IsReadOnly: true, Partuuid: "0eaa91a0-01", CacheType: "Writeback", IOEngine: "Async"}, []string{"path_on_host", "is_read_only"}},
		{"NetworkInterface", NetworkInterface{}, NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "02:00:00:00:00:01"}, nil},
		{"Vsock", Vsock{}, Vsock{GuestCID: 3, UDSPath: "/v"}, nil},
		{"InstanceActionInfo", InstanceActionInfo{}, InstanceActionInfo{ActionType: ActionSendCtrlAltDel}, nil},
		{"Vm", VM{}, VM{State: VMPaused}, nil},
		{"SnapshotCreateParams", SnapshotCreateParams{}, SnapshotCreateParams{MemFilePath: "/m", SnapshotPath: "/s", SnapshotType: SnapshotFull}, nil},
		{"MemoryBackend", MemoryBackend{}, MemoryBackend{BackendType: MemoryBackendFile, BackendPath: "/m"}, nil},
		{"NetworkOverride", NetworkOverride{}, NetworkOverride{IfaceID: "eth0", HostDevName: "tap0"}, nil},
		{"VsockOverride", VsockOverride{}, VsockOverride{UDSPath: "v.sock"}, nil},
		{"SnapshotLoadParams", SnapshotLoadParams{}, SnapshotLoadParams{
			SnapshotPath: "/s", MemBackend: &MemoryBackend{BackendType: MemoryBackendFile, BackendPath: "/m"},
			TrackDirtyPages: true, ResumeVM: true, NetworkOverrides: []NetworkOverride{{IfaceID: "eth0", HostDevName: "tap0"}},
			VsockOverride: &VsockOverride{UDSPath: "v.sock"}, ClockRealtime: true,
		}, nil},
		{"InstanceInfo", InstanceInfo{}, InstanceInfo{AppName: "Firecracker", ID: "x", State: StateRunning, VMMVersion: "1.16.1"}, nil},
		{"FirecrackerVersion", FirecrackerVersion{}, FirecrackerVersion{FirecrackerVersion: "1.16.1"}, nil},
		{"Error", apiError{}, apiError{FaultMessage: "no"}, nil},
	} {
		sc := specSchemas[c.def]
		full := marshalKeys(t, c.full)
		if tags := jsonTags(c.full); !slices.Equal(full, tags) {
			t.Errorf("%s: the full example sets %q, the type has %q", c.def, full, tags)
		}
		for _, k := range full {
			if _, ok := sc.props[k]; !ok {
				t.Errorf("%s: field %q is not in the spec", c.def, k)
			}
		}
		b, _ := json.Marshal(c.full)
		if err := checkBody(c.def, b); err != nil {
			t.Errorf("%s: %s does not pass the spec: %v", c.def, b, err)
		}
		wantZero := append(append([]string(nil), sc.required...), c.alwaysSent...)
		sort.Strings(wantZero)
		if zero := marshalKeys(t, c.zero); !slices.Equal(zero, wantZero) {
			t.Errorf("%s: the zero value sends %q, want the required fields %q", c.def, zero, wantZero)
		}
	}
}

func marshalKeys(t *testing.T, v any) []string {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func jsonTags(v any) []string {
	var tags []string
	rt := reflect.TypeOf(v)
	for i := range rt.NumField() {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		tags = append(tags, name)
	}
	sort.Strings(tags)
	return tags
}

func TestClientErrors(t *testing.T) {
	dir, err := os.MkdirTemp("", "fc")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/version":
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte("not json\n"))
		case "/":
			_, _ = w.Write([]byte(`{"app_name":"Firecracker","id":"x","state":"Running","vmm_version":"1.16.1"}`))
		case "/logger":
			time.Sleep(500 * time.Millisecond)
		}
	}))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	defer srv.Close()

	c := NewClient(sock)
	defer c.Close()
	ctx := context.Background()
	info, err := c.Describe(ctx)
	if err != nil || info != (InstanceInfo{AppName: "Firecracker", ID: "x", State: StateRunning, VMMVersion: "1.16.1"}) {
		t.Fatalf("Describe = %+v, %v", info, err)
	}
	_, err = c.Version(ctx)
	if err == nil || err.Error() != "GET /version: 500 Internal Server Error: not json" {
		t.Fatalf("Version err = %v", err)
	}
	c.Timeout = 100 * time.Millisecond
	err = c.PutLogger(ctx, Logger{Level: "Info"})
	if err == nil || errors.Is(err, vmm.ErrNotRunning) || !strings.Contains(err.Error(), "PUT /logger") {
		t.Fatalf("slow answer: err = %v", err)
	}
	if err := c.PutDrive(ctx, Drive{DriveID: "a/b"}); err == nil {
		t.Fatal("PutDrive took an id with a '/'")
	}
}
