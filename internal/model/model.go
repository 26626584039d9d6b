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
)

// Valid reports whether s is one of the known states.
func (s VMState) Valid() bool {
	switch s {
	case StateCreating, StateRunning, StateStopped, StateFailed:
		return true
	}
	return false
}

// VMSpec is what the user asked for.
type VMSpec struct {
	VCPUs         int   `json:"vcpus"`
	MemoryMiB     int   `json:"memory_mib"`
	DiskSizeBytes int64 `json:"disk_size_bytes"`
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
	LastError     string  `json:"last_error,omitempty"`
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
