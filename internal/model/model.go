// Package model holds banger's domain types: images, VMs, the durable part
// of a VM's state (VMRuntime, kept in SQLite) and the transient part
// (VMHandles, kept only in memory and in a per-VM scratch file).
package model

import "time"

// VMState is the last known state of a VM.
type VMState string

const (
	// StateCreating: create has begun and not yet finished.
	StateCreating VMState = "creating"
	// StateRunning: the VMM process is up.
	StateRunning VMState = "running"
	// StateStopped: no VMM process; disks and identity kept.
	StateStopped VMState = "stopped"
	// StateFailed: create or start failed; LastError says why.
	StateFailed VMState = "failed"
	// StatePaused: the VMM process is up, the guest's vCPUs stopped
	// (vm pause); it stays paused across a daemon restart.
	StatePaused VMState = "paused"
)

// Valid reports whether s is one of the known states.
func (s VMState) Valid() bool {
	switch s {
	case StateCreating, StateRunning, StateStopped, StateFailed, StatePaused:
		return true
	}
	return false
}

// Live reports whether a VM in state s has a VMM process: running or
// paused.
func (s VMState) Live() bool { return s == StateRunning || s == StatePaused }

// VMSpec is what the user asked for.
type VMSpec struct {
	VCPUs         int   `json:"vcpus"`
	MemoryMiB     int   `json:"memory_mib"`
	DiskSizeBytes int64 `json:"disk_size_bytes"`
	// Mounts are the VM's host folders (virtio-fs, package mount), kept
	// across stop and start.
	Mounts []Mount `json:"mounts,omitempty"`
	// Publish are its published ports (package publish), listened on by
	// bangerd while the VM runs.
	Publish []Publish `json:"publish,omitempty"`
}

// Mount is a host folder in a VM: mount.Spec as the store keeps it.
type Mount struct {
	HostDir   string `json:"host_dir"`
	GuestPath string `json:"guest_path"`
	ReadOnly  bool   `json:"read_only,omitempty"`
}

// Publish is a published port: publish.Port as the store keeps it.
type Publish struct {
	HostAddr  string `json:"host_addr"`
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
	Proto     string `json:"proto"`
}

// VM is one row of the vms table: identity, spec and durable runtime.
type VM struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Image     string    `json:"image"`
	VMM       string    `json:"vmm"`
	Spec      VMSpec    `json:"spec"`
	Runtime   VMRuntime `json:"runtime"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// VMRuntime is the durable or deterministic part of a VM's state: what
// survives a daemon crash because it is in SQLite. Nothing kernel-level and
// transient (PIDs, TAP names, loop devices) belongs here; see VMHandles.
type VMRuntime struct {
	State         VMState `json:"state"`
	GuestIP       string  `json:"guest_ip,omitempty"`
	MAC           string  `json:"mac,omitempty"`
	DNSName       string  `json:"dns_name,omitempty"`
	VSockCID      uint32  `json:"vsock_cid,omitempty"`
	VMDir         string  `json:"vm_dir,omitempty"`
	APISockPath   string  `json:"api_sock_path,omitempty"`
	VSockPath     string  `json:"vsock_path,omitempty"`
	LogPath       string  `json:"log_path,omitempty"`
	ConsolePath   string  `json:"console_path,omitempty"`
	MetricsPath   string  `json:"metrics_path,omitempty"`
	SystemOverlay string  `json:"system_overlay,omitempty"` // strategy: reflink, qcow2, sparse-copy
	OverlayPath   string  `json:"overlay_path,omitempty"`
	WorkDiskPath  string  `json:"work_disk_path,omitempty"`
	// WorkDiskFormat is "raw" (made from the seed) or "qcow2" (an overlay
	// over a frozen base: after a snapshot, or in a clone); "" is raw.
	WorkDiskFormat string `json:"work_disk_format,omitempty"`
	// Bases are the frozen disk files (model.Base ids) the VM's disks
	// sit on directly: a snapshot's, or its own frozen at a snapshot.
	Bases []string `json:"bases,omitempty"`
	// Origin is the snapshot a VM was made from ("" for a cold boot).
	Origin    string `json:"origin,omitempty"`
	LastError string `json:"last_error,omitempty"`
	// LastBoot is the stages of the last create or start with their
	// durations: a fact about the VM kept across daemon restarts.
	LastBoot []BootStage `json:"last_boot,omitempty"`
}

// BootStage is one timed stage of a create or start.
type BootStage struct {
	Name       string `json:"name"`
	DurationMS int64  `json:"duration_ms"`
	Detail     string `json:"detail,omitempty"`
}

// VMHandles is what is true now at kernel level for a running VM. It is
// never stored in SQLite: the daemon keeps it in memory and in the VM
// directory's handles.json so a restarted daemon can find or tear it down.
type VMHandles struct {
	PID       int    `json:"pid,omitempty"`
	TapDevice string `json:"tap_device,omitempty"`
	// Memory is where the guest's RAM lives: "memfd" (a snapshot copies
	// it), "snapshot" (a snapshot's memory file mapped copy-on-write: a
	// snapshot streams it) or "" (anonymous, or a VMM of its own).
	Memory string `json:"memory,omitempty"`
	// FS are the pids of the VM's virtiofsds, one a host folder, in the
	// order of its Spec.Mounts.
	FS []int `json:"fs_pids,omitempty"`
}

// Image is one row of the images table.
type Image struct {
	Name          string    `json:"name"`
	Dir           string    `json:"dir"`
	Source        string    `json:"source"` // "built" or "imported"
	Suite         string    `json:"suite,omitempty"`
	KernelVersion string    `json:"kernel_version,omitempty"`
	RootfsPath    string    `json:"rootfs_path"`
	RootfsSize    int64     `json:"rootfs_size"`
	RootfsSHA256  string    `json:"rootfs_sha256,omitempty"`
	WorkSeedPath  string    `json:"work_seed_path,omitempty"`
	WorkSeedSize  int64     `json:"work_seed_size,omitempty"`
	WorkSeedSHA   string    `json:"work_seed_sha256,omitempty"`
	KernelPath    string    `json:"kernel_path"` // vmlinuz (bzImage)
	VmlinuxPath   string    `json:"vmlinux_path,omitempty"`
	InitrdPath    string    `json:"initrd_path,omitempty"`
	BuildLogPath  string    `json:"build_log_path,omitempty"`
	GuestContract int       `json:"guest_contract"` // how its VMs get their host key (guest.Contract*), read from banger-init at registration
	CreatedAt     time.Time `json:"created_at"`
}

// HasWorkSeed reports whether VM creation can clone the work disk.
func (i Image) HasWorkSeed() bool { return i.WorkSeedPath != "" }

// Snapshot is one row of the snapshots table: a saved VM state (device
// state, memory and frozen disks) in its directory, with the manifest a
// restore must match.
type Snapshot struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Kind is "vm" (banger vm snapshot), "template" (an image's warm
	// template) or "fork" (made for one vm fork, gone with it).
	Kind      string    `json:"kind"`
	VMID      string    `json:"vm_id,omitempty"`
	VMName    string    `json:"vm_name,omitempty"`
	Image     string    `json:"image"`
	Dir       string    `json:"dir"`
	SizeBytes int64     `json:"size_bytes"`
	Manifest  string    `json:"-"` // snapshot.Manifest as JSON (api.SnapshotInfo.Details)
	CreatedAt time.Time `json:"created_at"`
}

// Snapshot kinds.
const (
	SnapshotVM       = "vm"
	SnapshotTemplate = "template"
	SnapshotFork     = "fork"
)

// Base is one row of the bases table: a frozen, read-only disk file that
// overlays (of VMs, of other bases) sit on. Backing is the base it sits on
// in turn ("" when that is an image's rootfs or nothing).
type Base struct {
	ID        string    `json:"id"`
	Path      string    `json:"path"`
	Format    string    `json:"format"` // raw or qcow2
	Backing   string    `json:"backing,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}
