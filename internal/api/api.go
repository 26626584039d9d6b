// Package api holds the method names and the param and result types of
// bangerd's RPC surface, shared by the daemon (server) and the CLI (client).
package api

import (
	"encoding/json"
	"time"

	"github.com/banger-dev/banger/internal/hostcheck"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/rpc"
)

// Daemon methods.
const (
	MethodDaemonStatus = "daemon.status"
	MethodDaemonStop   = "daemon.stop"
	MethodDaemonPing   = "daemon.ping"
)

// DaemonStatus is the result of daemon.status.
type DaemonStatus struct {
	PID           int          `json:"pid"`
	UID           int          `json:"uid"`
	Version       string       `json:"version"`
	StartedAt     time.Time    `json:"started_at"`
	UptimeSeconds float64      `json:"uptime_seconds"`
	Socket        string       `json:"socket"`
	LogPath       string       `json:"log_path"`
	LogLevel      string       `json:"log_level"`
	StateDir      string       `json:"state_dir"`
	DatabasePath  string       `json:"database_path"`
	SchemaVersion int          `json:"schema_version"`
	ConfigPath    string       `json:"config_path"`
	VMM           string       `json:"vmm"`
	VMMReason     string       `json:"vmm_reason,omitempty"`
	Helper        HelperStatus `json:"helper"`
	Layout        paths.Layout `json:"layout"`
	Counts        ObjectCounts `json:"counts"`
}

// HelperStatus is what bangerd knows of the root helper.
type HelperStatus struct {
	Socket    string `json:"socket"`
	Reachable bool   `json:"reachable"`
	Version   string `json:"version,omitempty"`
	PID       int    `json:"pid,omitempty"`
	Error     string `json:"error,omitempty"`
	Hint      string `json:"hint,omitempty"`
}

// ObjectCounts summarises the store.
type ObjectCounts struct {
	Images     int `json:"images"`
	VMs        int `json:"vms"`
	VMsRunning int `json:"vms_running"`
}

// Ping is the result of daemon.ping.
type Ping struct {
	PID     int    `json:"pid"`
	Version string `json:"version"`
}

// Network methods.
const (
	MethodNetworkUp   = "network.up"
	MethodNetworkDown = "network.down"
)

// NetworkStatus describes the host side of the guests' network.
type NetworkStatus struct {
	Bridge   string `json:"bridge"`
	Subnet   string `json:"subnet"`
	Gateway  string `json:"gateway"`
	Domain   string `json:"domain"`
	NAT      bool   `json:"nat"`
	BridgeUp bool   `json:"bridge_up"`
	NATTable string `json:"nat_table,omitempty"`
}

// MethodDoctor runs the host checks.
const MethodDoctor = "daemon.doctor"

// DoctorReport is the result of daemon.doctor.
type DoctorReport struct {
	OK     bool              `json:"ok"`
	Checks []hostcheck.Check `json:"checks"`
}

// Operation states.
const (
	OpRunning   = "running"
	OpSucceeded = "succeeded"
	OpFailed    = "failed"
)

// Stage states.
const (
	StagePending = "pending"
	StageRunning = "running"
	StageDone    = "done"
	StageFailed  = "failed"
)

// Operation is a long-running job (an image build, a VM create). Its ID is
// the op id dispatch minted for the call that began it, so the daemon's and
// the helper's log lines of the whole job carry it.
type Operation struct {
	ID        string             `json:"id"`
	Kind      string             `json:"kind"`
	Target    string             `json:"target"`
	State     string             `json:"state"`
	Stages    []Stage            `json:"stages"`
	Progress  string             `json:"progress,omitempty"`
	LogPath   string             `json:"log_path,omitempty"`
	StartedAt time.Time          `json:"started_at"`
	EndedAt   *time.Time         `json:"ended_at,omitempty"`
	Error     *rpc.ErrorResponse `json:"error,omitempty"`
	Result    json.RawMessage    `json:"result,omitempty"`
}

// Stage is one step of an operation.
type Stage struct {
	Name       string `json:"name"`
	State      string `json:"state"`
	DurationMS int64  `json:"duration_ms,omitempty"`
	Detail     string `json:"detail,omitempty"`
}

// OperationStatusParams asks for an operation's state. With WaitMS, the
// call returns as soon as the operation changes, or after WaitMS.
type OperationStatusParams struct {
	OpID   string `json:"op_id"`
	WaitMS int    `json:"wait_ms,omitempty"`
}

// Image methods.
const (
	MethodImageBuildBegin  = "image.build.begin"
	MethodImageBuildStatus = "image.build.status"
	MethodImageList        = "image.list"
	MethodImageShow        = "image.show"
	MethodImageDelete      = "image.delete"
	MethodImageImport      = "image.import"
	MethodImageRebuildSeed = "image.rebuild_seed"
)

// ImageBuildParams are the options of image build; empty fields take the
// config's defaults.
type ImageBuildParams struct {
	Name          string   `json:"name"`
	Suite         string   `json:"suite,omitempty"`
	Mirror        string   `json:"mirror,omitempty"`
	ExtraPackages []string `json:"extra_packages,omitempty"`
	RootfsSize    int64    `json:"rootfs_size,omitempty"`
	// Variant is "lean" (default) or "stock" (Debian's units and initrd as
	// they are: the reference the default image is measured against).
	Variant string `json:"variant,omitempty"`
}

// ImageRef names an image.
type ImageRef struct {
	Name string `json:"name"`
}

// ImageImportParams registers a prebuilt set of files as an image. Dir is
// searched for rootfs.ext4, vmlinux or vmlinuz, initrd.img and
// work-seed.ext4; the explicit paths override what Dir holds.
type ImageImportParams struct {
	Name     string `json:"name"`
	Dir      string `json:"dir,omitempty"`
	Rootfs   string `json:"rootfs,omitempty"`
	Kernel   string `json:"kernel,omitempty"`
	Initrd   string `json:"initrd,omitempty"`
	WorkSeed string `json:"work_seed,omitempty"`
}

// ImageInfo is an image as list and show report it.
type ImageInfo struct {
	model.Image
	UsedBy []string `json:"used_by"`
}

// VM methods.
const (
	MethodVMCreateBegin  = "vm.create.begin"
	MethodVMCreateStatus = "vm.create.status"
	MethodVMStartBegin   = "vm.start.begin"
	MethodVMStartStatus  = "vm.start.status"
	MethodVMStop         = "vm.stop"
	MethodVMDelete       = "vm.delete"
	MethodVMList         = "vm.list"
	MethodVMShow         = "vm.show"
	MethodVMSSHInfo      = "vm.ssh_info"
	// MethodVMAgent: VMAgentParams -> VMAgentResult, then the connection
	// is a stream to the VM's guest agent (docs/agent.md): the caller
	// speaks the agent's frames over it.
	MethodVMAgent = "vm.agent"

	MethodVMPause    = "vm.pause"    // VMRef -> VMInfo
	MethodVMResume   = "vm.resume"   // VMRef -> VMInfo
	MethodVMSnapshot = "vm.snapshot" // VMSnapshotParams -> SnapshotInfo
	// MethodVMRestoreBegin rolls a VM back to a snapshot in place:
	// VMRestoreParams -> Operation (status: MethodVMCreateStatus).
	MethodVMRestoreBegin = "vm.restore.begin"
	// MethodVMForkBegin makes a new VM from a running one:
	// VMForkParams -> Operation (status: MethodVMCreateStatus).
	MethodVMForkBegin = "vm.fork.begin"
)

// Snapshot methods.
const (
	MethodSnapshotList   = "snapshot.list"   // SnapshotListParams -> []SnapshotInfo
	MethodSnapshotShow   = "snapshot.show"   // SnapshotRef -> SnapshotInfo
	MethodSnapshotDelete = "snapshot.delete" // SnapshotRef -> SnapshotInfo
	// MethodImageWarmBegin makes an image's warm template: ImageWarmParams
	// -> Operation (status: MethodVMCreateStatus).
	MethodImageWarmBegin = "image.warm.begin"
)

// VMSnapshotParams: snapshot the VM Name as Snapshot ("" picks
// NAME-YYYYMMDD-HHMMSS).
type VMSnapshotParams struct {
	Name     string `json:"name"`
	Snapshot string `json:"snapshot,omitempty"`
}

// VMRestoreParams: roll the VM Name back to Snapshot.
type VMRestoreParams struct {
	Name     string `json:"name"`
	Snapshot string `json:"snapshot"`
}

// VMForkParams: a new VM New from the running (or paused) VM Source.
type VMForkParams struct {
	Source string `json:"source"`
	New    string `json:"new"`
}

// ImageWarmParams: make (or remake, with Force) the warm template of
// image Name for a VM spec (zero values: the config's defaults).
type ImageWarmParams struct {
	Name          string `json:"name"`
	VCPUs         int    `json:"vcpus,omitempty"`
	MemoryMiB     int    `json:"memory_mib,omitempty"`
	DiskSizeBytes int64  `json:"disk_size_bytes,omitempty"`
	Force         bool   `json:"force,omitempty"`
}

// SnapshotRef names a snapshot by name or id.
type SnapshotRef struct {
	Name string `json:"name"`
}

// SnapshotListParams filter snapshot list; All includes templates and
// forks' own.
type SnapshotListParams struct {
	All bool `json:"all,omitempty"`
}

// SnapshotInfo is a snapshot as list and show report it.
type SnapshotInfo struct {
	model.Snapshot
	// Manifest, decoded: what it holds and what a restore must match.
	Details json.RawMessage `json:"details,omitempty"`
	// UsedBy are the VMs whose disks sit on its frozen disks.
	UsedBy []string `json:"used_by"`
	// TookMS is how long taking it paused the VM (vm snapshot only).
	PausedMS int64 `json:"paused_ms,omitempty"`
	TookMS   int64 `json:"took_ms,omitempty"`
}

// VMAgentParams name the VM whose agent to reach, and what for (exec, cp,
// port-forward; for the daemon's log).
type VMAgentParams struct {
	Name string `json:"name"`
	What string `json:"what,omitempty"`
}

// VMAgentResult answers vm.agent before the stream begins.
type VMAgentResult struct {
	Name         string `json:"name"`
	AgentRelease string `json:"agent_release,omitempty"`
}

// VMCreateParams are the options of vm create; zero values take the
// config's defaults.
type VMCreateParams struct {
	Name          string `json:"name"`
	Image         string `json:"image,omitempty"`
	VCPUs         int    `json:"vcpus,omitempty"`
	MemoryMiB     int    `json:"memory_mib,omitempty"`
	DiskSizeBytes int64  `json:"disk_size_bytes,omitempty"`
	// BuildImage builds the default image first when it does not exist.
	BuildImage bool `json:"build_image,omitempty"`
	// From makes the VM from a snapshot instead of booting it.
	From string `json:"from,omitempty"`
	// Cold boots the VM even when a warm template matches.
	Cold bool `json:"cold,omitempty"`
	// Mounts are host folders (absolute host paths) the guest mounts.
	Mounts []model.Mount `json:"mounts,omitempty"`
	// Publish are host ports bangerd forwards to the guest's.
	Publish []model.Publish `json:"publish,omitempty"`
}

// VMRef names a VM by name, id or unique id prefix.
type VMRef struct {
	Name string `json:"name"`
	// Force skips the graceful shutdown (stop, delete).
	Force bool `json:"force,omitempty"`
}

// VMInfo is a VM as list and show report it.
type VMInfo struct {
	model.VM
	Alive   bool             `json:"alive"`
	Handles *model.VMHandles `json:"handles,omitempty"`
	// Agent says the VM's image carries the guest agent (guest contract
	// 3): vm exec, vm cp and vm port-forward work, and vm run uses it.
	Agent bool `json:"agent"`
	// Mounts and Ports say how the VM's host folders and published
	// ports are doing (for a running VM).
	Mounts []MountState `json:"mount_state,omitempty"`
	Ports  []PortState  `json:"port_state,omitempty"`
}

// MountState is one host folder of a VM: its virtiofsd and whether it runs.
type MountState struct {
	model.Mount
	Tag   string `json:"tag"`
	PID   int    `json:"pid,omitempty"`
	Alive bool   `json:"alive"`
}

// PortState is one published port: whether bangerd listens on it, and
// the connections it has forwarded.
type PortState struct {
	model.Publish
	Listening   bool   `json:"listening"`
	Connections int64  `json:"connections"`
	Error       string `json:"error,omitempty"`
}

// SSHInfo is what the CLI needs to run the system's ssh against a VM.
type SSHInfo struct {
	Name       string `json:"name"`
	User       string `json:"user"`
	Host       string `json:"host"`
	KeyPath    string `json:"key_path"`
	KnownHosts string `json:"known_hosts"`
	Alias      string `json:"alias"`
}

// MethodVerify lists leaks.
const MethodVerify = "daemon.verify"

// VerifyReport is the result of daemon.verify.
type VerifyReport struct {
	OK       bool   `json:"ok"`
	VMs      int    `json:"vms"`
	PoolTaps int    `json:"pool_taps"`
	Leaks    []Leak `json:"leaks"`
}

// Leak is something on the host that banger made and no VM accounts for.
type Leak struct {
	Kind   string `json:"kind"`
	What   string `json:"what"`
	Detail string `json:"detail"`
}
