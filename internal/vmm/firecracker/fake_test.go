package firecracker

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unicode"
)

// fakeAPI is a Firecracker API server for tests that answers as
// Firecracker 1.16 does (or an older release, by version): its routing
// (src/firecracker/src/api_server/parsed_request.rs: the path's first
// segment and the method; the path id checked before the body), its
// deserializer (bodyCheck in fcMode: unknown fields refused, `warn` a log
// level, fields of later releases unknown), its state rules (boot
// resources before InstanceStart; a snapshot load only on a fresh process,
// before any boot resource; pause, resume and snapshots only after a
// start; a snapshot only of a paused VM) and its fault messages, word for
// word where they are known, in a {"fault_message": ...} body. It opens the
// files Firecracker opens (the kernel, the initrd and the drives when they
// are configured, a snapshot's drives at a load), resolving relative paths
// in dir, Firecracker's working directory, and binds the vsock socket.
// When strict, every body it receives is also checked against the spec
// (checkBody) and a violation fails the test: the driver's bodies must be
// the spec's, even where Firecracker is lenient. It records every call.
type fakeAPI struct {
	mu      sync.Mutex
	t       *testing.T
	strict  bool
	calls   []string                  // "PUT /drives/rootfs", in order, failed ones too
	bodies  map[string]map[string]any // the last accepted body of each call
	headers map[string]http.Header    // the headers of the last request of each call
	failOn  map[string]string         // "PUT /vsock" -> the fault_message to answer 400 with
	id      string
	version string
	dir     string

	started    bool // InstanceStart or a snapshot load succeeded
	paused     bool
	bootPath   bool // a boot resource is configured: no snapshot load
	bootSource bool
	rootDrive  string
	vcpus, mem int
	drives     map[string]string // drive_id -> path_on_host, as given
	nets       map[string]string // iface_id -> host_dev_name
	vsock      *fakeVsock
	listeners  []net.Listener
	loaded     *fakeState // what a snapshot load restored, overrides applied
}

type fakeVsock struct {
	CID     uint32 `json:"guest_cid"`
	UDSPath string `json:"uds_path"`
}

// fakeState is the content of the fake's snapshot files: what
// Firecracker's records and a restore needs.
type fakeState struct {
	Magic  string            `json:"fake_firecracker_state"`
	VCPUs  int               `json:"vcpu_count"`
	Mem    int               `json:"mem_size_mib"`
	Drives map[string]string `json:"drives"`
	Nets   map[string]string `json:"nets"`
	Vsock  *fakeVsock        `json:"vsock"`
}

func newFakeAPI(id, dir string) *fakeAPI {
	return &fakeAPI{
		id: id, dir: dir, version: "1.16.1", vcpus: 1, mem: 128,
		bodies: map[string]map[string]any{}, headers: map[string]http.Header{}, failOn: map[string]string{},
		drives: map[string]string{}, nets: map[string]string{},
	}
}

// serve listens on the unix socket path until the test ends.
func (f *fakeAPI) serve(t *testing.T, path string) {
	if f.t == nil {
		f.t = t
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Errorf("fake firecracker: %v", err)
		return
	}
	srv := httptest.NewUnstartedServer(f)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(func() {
		srv.Close()
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, l := range f.listeners {
			l.Close()
		}
	})
}

func (f *fakeAPI) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeAPI) Body(call string) map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bodies[call]
}

func (f *fakeAPI) FailOn(call, fault string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failOn[call] = fault
}

// Loaded is what the last snapshot load restored, paths resolved.
func (f *fakeAPI) Loaded() *fakeState {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.loaded == nil {
		return nil
	}
	l := *f.loaded
	l.Drives = map[string]string{}
	for id, p := range f.loaded.Drives {
		l.Drives[id] = f.resolve(p)
	}
	if l.Vsock != nil {
		v := *l.Vsock
		v.UDSPath = f.resolve(v.UDSPath)
		l.Vsock = &v
	}
	return &l
}

func (f *fakeAPI) ver() Version {
	v, err := ParseVersion(f.version)
	if err != nil {
		panic(err)
	}
	return v
}

// resolve is path as Firecracker, running in dir, opens it.
func (f *fakeAPI) resolve(p string) string {
	if filepath.IsAbs(p) || f.dir == "" {
		return p
	}
	return filepath.Join(f.dir, p)
}

// osError words an error of the file system as Rust's io::Error shows it.
func osError(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "No such file or directory (os error 2)"
	case errors.Is(err, fs.ErrPermission):
		return "Permission denied (os error 13)"
	}
	return err.Error()
}

// httpError is an answer other than 204.
type httpError struct {
	status int
	msg    string
}

func badRequest(format string, args ...any) *httpError {
	return &httpError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

// The fault messages of Firecracker's VmmActionError that the fake gives.
const (
	notPostBoot = "The requested operation is not supported after starting the microVM."
	notPreBoot  = "The requested operation is not supported before starting the microVM."
)

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	path := r.URL.EscapedPath() // micro_http does not decode the path
	call := r.Method + " " + path
	f.calls = append(f.calls, call)
	f.headers[call] = r.Header.Clone()

	// micro_http skips Accept and Content-Type values it does not know
	// (an UnsupportedValue is not an error) and reads a body only by its
	// Content-Length: a chunked PUT has no body.
	var raw []byte
	if r.ContentLength > 0 {
		var err error
		if raw, err = io.ReadAll(r.Body); err != nil {
			fault(w, badRequest("%v", err))
			return
		}
	}
	out, herr := f.route(r.Method, path, raw)
	if herr != nil {
		fault(w, herr)
		return
	}
	if out != nil {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
		return
	}
	if raw != nil {
		var body map[string]any
		_ = json.Unmarshal(raw, &body)
		f.bodies[call] = body
	}
	w.WriteHeader(http.StatusNoContent)
}

func fault(w http.ResponseWriter, e *httpError) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.status)
	_ = json.NewEncoder(w).Encode(map[string]string{"fault_message": e.msg})
}

// route is parsed_request.rs's match for the calls the fake knows, then the
// action. It returns the answer's body (nil: 204) or the error.
func (f *fakeAPI) route(method, path string, raw []byte) (any, *httpError) {
	tokens := strings.Split(strings.TrimLeft(path, "/"), "/")
	for len(tokens) > 1 && tokens[len(tokens)-1] == "" { // split_terminator
		tokens = tokens[:len(tokens)-1]
	}
	first, rest := tokens[0], tokens[1:]
	next := func() (string, bool) {
		if len(rest) == 0 || rest[0] == "" {
			return "", false
		}
		return rest[0], true
	}
	hasBody := raw != nil
	invalid := badRequest("Invalid request method and/or path: %s %s.", method, first)
	switch method {
	case http.MethodGet:
		if hasBody {
			return nil, badRequest("GET request cannot have a body.")
		}
		switch first {
		case "":
			return InstanceInfo{AppName: "Firecracker", ID: f.id, State: f.state(), VMMVersion: f.version}, nil
		case "version":
			return FirecrackerVersion{FirecrackerVersion: f.version}, nil
		case "machine-config":
			return MachineConfiguration{VCPUCount: f.vcpus, MemSizeMiB: f.mem, HugePages: "None"}, nil
		}
		return nil, invalid
	case http.MethodPut:
		if !hasBody {
			return nil, badRequest("Empty PUT request.")
		}
		switch first {
		case "actions", "balloon", "boot-source", "logger", "serial", "machine-config", "metrics", "vsock":
			return nil, f.act(method, "/"+first, "", raw)
		case "drives", "network-interfaces":
			id, ok := next()
			if !ok {
				return nil, badRequest("The ID cannot be empty.")
			}
			if !firecrackerID(id) {
				return nil, badRequest("API Resource IDs can only contain alphanumeric characters and underscores.")
			}
			return nil, f.act(method, "/"+first+"/", id, raw)
		case "snapshot":
			op, ok := next()
			if !ok {
				return nil, badRequest("Missing snapshot operation type.")
			}
			if op != "create" && op != "load" {
				return nil, badRequest("Invalid request method and/or path: PUT /snapshot/%s.", op)
			}
			return nil, f.act(method, "/snapshot/"+op, "", raw)
		}
		return nil, invalid
	case http.MethodPatch:
		if !hasBody {
			return nil, badRequest("Empty PATCH request.")
		}
		if first == "vm" {
			return nil, f.act(method, "/vm", "", raw)
		}
		return nil, invalid
	}
	return nil, invalid
}

// firecrackerID is checked_id: alphanumeric (Unicode's) or '_'.
func firecrackerID(id string) bool {
	for _, r := range id {
		if r != '_' && !unicode.IsLetter(r) && !unicode.IsNumber(r) {
			return false
		}
	}
	return id != ""
}

func (f *fakeAPI) state() string {
	switch {
	case !f.started:
		return StateNotStarted
	case f.paused:
		return StatePaused
	}
	return StateRunning
}

// act deserializes the body of endpoint (its id already checked) and runs
// the action.
func (f *fakeAPI) act(method, endpoint, id string, raw []byte) *httpError {
	e, ok := specEndpoints[method+" "+endpoint]
	if !ok {
		panic("fake: no endpoint " + method + " " + endpoint)
	}
	if f.strict {
		if err := checkBody(e.def, raw); err != nil {
			f.t.Errorf("the driver sent %s %s%s %s, which breaks the spec: %v", method, endpoint, id, raw, err)
		}
	}
	if err := (bodyCheck{fcMode: true, version: f.ver()}).check(e.def, raw); err != nil {
		if strings.Contains(err.Error(), "for `level`") {
			err = deserializeFault("Invalid LevelFilter")
		}
		return badRequest("%s", err.Error())
	}
	var body map[string]any
	_ = json.Unmarshal(raw, &body)
	if e.idField != "" && body[e.idField] != id {
		if e.def == "NetworkInterface" {
			return badRequest("The id from the path [%s] does not match the id from the body [%v]!", id, body[e.idField])
		}
		return badRequest("The id from the path does not match the id from the body!")
	}
	call := method + " " + endpoint + id
	if msg, ok := f.failOn[call]; ok {
		return badRequest("%s", msg)
	}
	str := func(k string) string { s, _ := body[k].(string); return s }
	num := func(k string) int { n, _ := body[k].(float64); return int(n) }

	// Which controller takes the action: the pre-boot one until a start
	// or a load, then the runtime one.
	switch e.def {
	case "Logger", "Metrics", "SerialDevice":
		if f.started {
			return badRequest(notPostBoot)
		}
		return nil // no boot resource: a load may follow
	case "Vm":
		if !f.started {
			return badRequest(notPreBoot)
		}
		f.paused = str("state") == string(VMPaused)
		return nil
	case "SnapshotCreateParams":
		if !f.started {
			return badRequest(notPreBoot)
		}
		return f.createSnapshot(str("snapshot_path"), str("mem_file_path"))
	case "SnapshotLoadParams":
		if f.started {
			return badRequest(notPostBoot)
		}
		if f.bootPath {
			return badRequest("Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.")
		}
		return f.loadSnapshot(body)
	case "InstanceActionInfo":
		switch str("action_type") {
		case string(ActionInstanceStart):
			if f.started {
				return badRequest(notPostBoot)
			}
			if !f.bootSource {
				return badRequest("Start microvm error: Cannot start microvm without kernel configuration.")
			}
			f.started = true
		default: // SendCtrlAltDel, FlushMetrics
			if !f.started {
				return badRequest(notPreBoot)
			}
		}
		return nil
	}

	// Boot resources.
	if f.started {
		if (e.def == "Drive" || e.def == "NetworkInterface") && !f.ver().Less(v116) {
			return badRequest("PCI is not enabled") // 1.16 hot-plugs, on PCI only
		}
		return badRequest(notPostBoot)
	}
	f.bootPath = true
	switch e.def {
	case "MachineConfiguration":
		if n := num("vcpu_count"); n < 1 || n > 32 {
			return badRequest("Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled.")
		}
		if num("mem_size_mib") <= 0 {
			return badRequest("Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size.")
		}
		f.vcpus, f.mem = num("vcpu_count"), num("mem_size_mib")
	case "BootSource":
		if _, err := os.Stat(f.resolve(str("kernel_image_path"))); err != nil {
			return badRequest("Boot source error: The kernel file cannot be opened: %s", osError(err))
		}
		if p := str("initrd_path"); p != "" {
			if _, err := os.Stat(f.resolve(p)); err != nil {
				return badRequest("Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions. %s", osError(err))
			}
		}
		f.bootSource = true
	case "Drive":
		p := str("path_on_host")
		if _, err := os.Stat(f.resolve(p)); err != nil {
			return badRequest("Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: %s %s", osError(err), p)
		}
		if body["is_root_device"] == true {
			if f.rootDrive != "" && f.rootDrive != id {
				return badRequest("Drive config error: A root block device already exists!")
			}
			f.rootDrive = id
		}
		f.drives[id] = p
	case "NetworkInterface":
		if mac := str("guest_mac"); mac != "" && !firecrackerMAC(mac) {
			return badRequest("%s", deserializeFault("The provided MAC address is invalid").Error())
		}
		if len(str("host_dev_name")) >= 16 {
			return badRequest("Network config error: Could not create the network device: Open tap device failed: Invalid interface name")
		}
		f.nets[id] = str("host_dev_name")
	case "Vsock":
		v := &fakeVsock{CID: uint32(num("guest_cid")), UDSPath: str("uds_path")}
		if err := f.bindVsock(v.UDSPath); err != nil {
			return err
		}
		f.vsock = v
	}
	return nil
}

// firecrackerMAC is MacAddr's parser: six ':'-separated fields of two
// characters, each a u8 in hex (Rust's from_str_radix takes a '+').
func firecrackerMAC(s string) bool {
	parts := strings.Split(s, ":")
	if len(parts) != 6 {
		return false
	}
	for _, p := range parts {
		if len(p) != 2 {
			return false
		}
		if _, err := strconv.ParseUint(strings.TrimPrefix(p, "+"), 16, 8); err != nil {
			return false
		}
	}
	return true
}

// bindVsock binds the vsock device's socket, as Firecracker does when it
// creates the device.
func (f *fakeAPI) bindVsock(p string) *httpError {
	l, err := net.Listen("unix", f.resolve(p))
	if err != nil {
		return badRequest("Vsock config error: Cannot create backend for vsock device: Error binding to the host-side Unix socket: %v", err)
	}
	f.listeners = append(f.listeners, l)
	return nil
}

func (f *fakeAPI) createSnapshot(statePath, memPath string) *httpError {
	if !f.paused {
		return badRequest("Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running")
	}
	st := fakeState{Magic: "v1", VCPUs: f.vcpus, Mem: f.mem, Drives: f.drives, Nets: f.nets, Vsock: f.vsock}
	if f.loaded != nil {
		st.Drives, st.Nets, st.Vsock = f.loaded.Drives, f.loaded.Nets, f.loaded.Vsock
	}
	b, _ := json.Marshal(st)
	if err := os.WriteFile(f.resolve(statePath), b, 0o600); err != nil {
		return badRequest("Create snapshot error: Cannot perform open on the snapshot backing file: %s", osError(err))
	}
	mem := fmt.Sprintf("fake guest memory, %d MiB\n", f.mem)
	if err := os.WriteFile(f.resolve(memPath), []byte(mem), 0o600); err != nil {
		return badRequest("Create snapshot error: Cannot write memory file: %s", osError(err))
	}
	return nil
}

func (f *fakeAPI) loadSnapshot(body map[string]any) *httpError {
	const pre = "Load snapshot error: Failed to restore from snapshot: "
	b, err := os.ReadFile(f.resolve(body["snapshot_path"].(string)))
	if err != nil {
		return badRequest(pre+"Failed to get snapshot state from file: Failed to open snapshot file: %s", osError(err))
	}
	var st fakeState
	if json.Unmarshal(b, &st) != nil || st.Magic == "" {
		return badRequest(pre + "Failed to get snapshot state from file: Failed to load snapshot state from file: Snapshot file is smaller than CRC length.")
	}
	if ovs, ok := body["network_overrides"].([]any); ok {
		for _, o := range ovs {
			o := o.(map[string]any)
			iface := o["iface_id"].(string)
			if _, ok := st.Nets[iface]; !ok {
				return badRequest(pre + "Failed to get snapshot state from file: Unknown Network Device.")
			}
			st.Nets[iface] = o["host_dev_name"].(string)
		}
	}
	if o, ok := body["vsock_override"].(map[string]any); ok {
		if st.Vsock == nil {
			return badRequest(pre + "Failed to get snapshot state from file: Unknown Vsock Device.")
		}
		st.Vsock.UDSPath = o["uds_path"].(string)
	}
	mb, _ := body["mem_backend"].(map[string]any)
	memPath, _ := body["mem_file_path"].(string)
	if mb != nil {
		if mb["backend_type"] != string(MemoryBackendFile) {
			return badRequest(pre + "Failed to load guest memory: Error creating guest memory from uffd: Failed to connect to UDS Unix stream: No such file or directory (os error 2)")
		}
		memPath = mb["backend_path"].(string)
	}
	if _, err := os.Stat(f.resolve(memPath)); err != nil {
		return badRequest(pre+"Failed to load guest memory: Error creating guest memory from file: Failed to load guest memory: %s", osError(err))
	}
	for _, p := range st.Drives {
		if _, err := os.Stat(f.resolve(p)); err != nil {
			return badRequest(pre+"Failed to build microVM from snapshot: Cannot restore devices: Block: Virtio backend error: Error manipulating the backing file: %s %s", osError(err), p)
		}
	}
	for _, tap := range st.Nets {
		if len(tap) >= 16 {
			return badRequest(pre + "Failed to build microVM from snapshot: Cannot restore devices: Net: Open tap device failed: Invalid interface name")
		}
	}
	if st.Vsock != nil {
		if err := f.bindVsock(st.Vsock.UDSPath); err != nil {
			return badRequest(pre+"Failed to build microVM from snapshot: Cannot restore devices: %s", err.msg)
		}
	}
	f.vcpus, f.mem = st.VCPUs, st.Mem
	f.started, f.paused = true, body["resume_vm"] != true
	f.loaded = &st
	return nil
}
