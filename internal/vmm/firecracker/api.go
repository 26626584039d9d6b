package firecracker

// The request and response bodies banger uses, written from the definitions
// of Firecracker's API spec (src/firecracker/swagger/firecracker.yaml,
// info.version 1.16.1). Field names and JSON types are the spec's; a field
// is omitempty only where the spec does not list it as required. Fields
// banger never sets (rate limiters, vhost-user sockets, deprecated CPU
// templates) are left out: the spec makes them optional.

// Logger is the body of PUT /logger (definition Logger). Every field is
// optional.
type Logger struct {
	// LogPath is a file or named pipe for Firecracker's human-readable log.
	LogPath string `json:"log_path,omitempty"`
	// Level is Error, Warning, Info, Debug, Trace or Off (default Info).
	Level         string `json:"level,omitempty"`
	ShowLevel     bool   `json:"show_level,omitempty"`
	ShowLogOrigin bool   `json:"show_log_origin,omitempty"`
	// Module filters log messages by module path (api_server::request).
	Module string `json:"module,omitempty"`
}

// Metrics is the body of PUT /metrics (definition Metrics).
type Metrics struct {
	MetricsPath string `json:"metrics_path"`
}

// MachineConfiguration is the body of PUT /machine-config (definition
// MachineConfiguration).
type MachineConfiguration struct {
	VCPUCount  int `json:"vcpu_count"` // 1 to 32
	MemSizeMiB int `json:"mem_size_mib"`
	// SMT enables simultaneous multithreading (x86 only; default false).
	SMT             bool `json:"smt,omitempty"`
	TrackDirtyPages bool `json:"track_dirty_pages,omitempty"`
	// HugePages is "None" (default) or "2M".
	HugePages string `json:"huge_pages,omitempty"`
}

// BootSource is the body of PUT /boot-source (definition BootSource).
type BootSource struct {
	// KernelImagePath is the uncompressed ELF vmlinux on x86_64.
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// SerialDevice is the body of PUT /serial (definition SerialDevice).
type SerialDevice struct {
	// SerialOutPath receives the guest's serial console instead of
	// Firecracker's stdout.
	SerialOutPath string `json:"serial_out_path,omitempty"`
}

// Drive is the body of PUT /drives/{drive_id} (definition Drive), for a
// virtio-block drive.
type Drive struct {
	DriveID string `json:"drive_id"`
	// PathOnHost and IsReadOnly are optional in the schema only because a
	// vhost-user drive omits them; the spec requires them for virtio-block,
	// the only kind banger uses, so they are always sent.
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
	// Partuuid selects the root partition (root devices only).
	Partuuid string `json:"partuuid,omitempty"`
	// CacheType is "Unsafe" (default: flushes are ignored) or "Writeback".
	CacheType string `json:"cache_type,omitempty"`
	// IOEngine is "Sync" (default) or "Async".
	IOEngine string `json:"io_engine,omitempty"`
}

// NetworkInterface is the body of PUT /network-interfaces/{iface_id}
// (definition NetworkInterface).
type NetworkInterface struct {
	IfaceID string `json:"iface_id"`
	// HostDevName is the name of the TAP device, which Firecracker opens.
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

// Vsock is the body of PUT /vsock (definition Vsock).
type Vsock struct {
	GuestCID uint32 `json:"guest_cid"` // at least 3
	// UDSPath is the unix socket Firecracker binds for host-initiated
	// connections ("CONNECT <port>\n"); guest-initiated ones go to
	// UDSPath_<port>.
	UDSPath string `json:"uds_path"`
}

// ActionType is the action_type of an InstanceActionInfo.
type ActionType string

// The actions of PUT /actions.
const (
	ActionInstanceStart  ActionType = "InstanceStart"
	ActionSendCtrlAltDel ActionType = "SendCtrlAltDel"
	ActionFlushMetrics   ActionType = "FlushMetrics"
)

// InstanceActionInfo is the body of PUT /actions (definition
// InstanceActionInfo).
type InstanceActionInfo struct {
	ActionType ActionType `json:"action_type"`
}

// InstanceInfo is the answer to GET / (definition InstanceInfo).
type InstanceInfo struct {
	AppName string `json:"app_name"`
	ID      string `json:"id"`
	// State is "Not started", "Running" or "Paused".
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
}

// The states of InstanceInfo.State.
const (
	StateNotStarted = "Not started"
	StateRunning    = "Running"
	StatePaused     = "Paused"
)

// FirecrackerVersion is the answer to GET /version (definition
// FirecrackerVersion).
type FirecrackerVersion struct {
	FirecrackerVersion string `json:"firecracker_version"`
}

// apiError is the body of every error answer (definition Error).
type apiError struct {
	FaultMessage string `json:"fault_message,omitempty"`
}

// VMState is the state of a Vm body.
type VMState string

// The states PATCH /vm sets.
const (
	VMPaused  VMState = "Paused"
	VMResumed VMState = "Resumed"
)

// VM is the body of PATCH /vm (definition Vm).
type VM struct {
	State VMState `json:"state"`
}

// SnapshotType is the snapshot_type of a SnapshotCreateParams.
type SnapshotType string

// The snapshot types. banger takes Full snapshots only: a Diff needs
// track_dirty_pages and a chain of files to restore from.
const (
	SnapshotFull SnapshotType = "Full"
	SnapshotDiff SnapshotType = "Diff"
)

// SnapshotCreateParams is the body of PUT /snapshot/create (definition
// SnapshotCreateParams).
type SnapshotCreateParams struct {
	// MemFilePath receives the guest memory (created or truncated).
	MemFilePath string `json:"mem_file_path"`
	// SnapshotPath receives the device and vCPU state (created or truncated).
	SnapshotPath string `json:"snapshot_path"`
	// SnapshotType is Full (the default) or Diff.
	SnapshotType SnapshotType `json:"snapshot_type,omitempty"`
}

// MemoryBackendType is the backend_type of a MemoryBackend.
type MemoryBackendType string

// The memory backends of PUT /snapshot/load.
const (
	// MemoryBackendFile maps the memory file MAP_PRIVATE: pages are read
	// through the page cache on first touch and copied on first write, so
	// the untouched pages of clones of one snapshot are shared.
	MemoryBackendFile MemoryBackendType = "File"
	// MemoryBackendUffd hands page faults to a process on a unix socket.
	MemoryBackendUffd MemoryBackendType = "Uffd"
)

// MemoryBackend is the mem_backend of a SnapshotLoadParams (definition
// MemoryBackend).
type MemoryBackend struct {
	BackendType MemoryBackendType `json:"backend_type"`
	// BackendPath is the memory file (File) or the handler's socket (Uffd).
	BackendPath string `json:"backend_path"`
}

// NetworkOverride replaces the TAP of one network interface of a snapshot
// (definition NetworkOverride).
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// VsockOverride replaces the unix socket of the snapshot's vsock device
// (definition VsockOverride; Firecracker 1.16 and newer).
type VsockOverride struct {
	UDSPath string `json:"uds_path"`
}

// SnapshotLoadParams is the body of PUT /snapshot/load (definition
// SnapshotLoadParams). The deprecated mem_file_path and
// enable_diff_snapshots are left out: mem_backend replaces them.
type SnapshotLoadParams struct {
	SnapshotPath string `json:"snapshot_path"`
	// MemBackend is required in practice: the spec wants exactly one of
	// mem_backend and the deprecated mem_file_path.
	MemBackend       *MemoryBackend    `json:"mem_backend,omitempty"`
	TrackDirtyPages  bool              `json:"track_dirty_pages,omitempty"`
	ResumeVM         bool              `json:"resume_vm,omitempty"`
	NetworkOverrides []NetworkOverride `json:"network_overrides,omitempty"`
	// VsockOverride is Firecracker 1.16's; older releases refuse the field.
	VsockOverride *VsockOverride `json:"vsock_override,omitempty"`
	// ClockRealtime advances kvmclock by the time since the snapshot (x86,
	// Firecracker 1.16, host kernel 5.16 or newer).
	ClockRealtime bool `json:"clock_realtime,omitempty"`
}
