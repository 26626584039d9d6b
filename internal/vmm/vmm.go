// Package vmm is the interface bangerd drives VMs through, with one
// implementation per VMM: qemu (microvm machine, QMP) and firecracker (its
// HTTP API). A driver starts the VMM detached (its own session, so it
// outlives bangerd), configures and boots the guest, asks it to shut down,
// and finds it again after a daemon restart by its API socket.
package vmm

import (
	"context"
	"errors"
	"os"
)

// Disk is one virtio block device. The first disk of a Spec is vda.
type Disk struct {
	ID       string // "rootfs", "work"
	Path     string
	Format   string // "raw" or "qcow2" (qemu only)
	ReadOnly bool
}

// Spec is everything a driver needs to start one VM. Paths are absolute
// and inside the VM's directory unless they are the image's.
type Spec struct {
	ID        string
	Name      string
	VCPUs     int
	MemoryMiB int

	Kernel  string // qemu: the bzImage (vmlinuz); firecracker: the ELF vmlinux
	Initrd  string // optional
	Cmdline string

	Disks []Disk

	TapName string   // the TAP device on the bridge
	TapFile *os.File // an open TAP (qemu, unprivileged hosts); nil: open by name
	MAC     string

	Accel string // qemu: "kvm" or "tcg"

	APISocket   string // qemu: QMP socket; firecracker: API socket
	LogPath     string // the VMM's own output
	ConsolePath string // the guest's serial console
	MetricsPath string // firecracker metrics (FIFO or file)
	VSockPath   string // firecracker vsock UDS
	VSockCID    uint32
	// AgentSocket, for qemu, is the unix socket qemu serves the guest
	// agent's virtio-serial port on (docs/agent.md); "" gives the guest no
	// agent port (images older than guest contract 3). Firecracker's agent
	// channel is its vsock device.
	AgentSocket string

	// SharedMemory, for qemu, puts the guest's RAM in a memfd
	// (memory-backend-memfd): a snapshot then writes only the device state
	// and copies the RAM from the memfd, and nothing of it outlives the
	// process. Without it the RAM is anonymous and a snapshot streams it.
	// Firecracker's memory is its own.
	SharedMemory bool

	// FS, for qemu, are the VM's host folders: one vhost-user-fs device
	// per entry, served by a virtiofsd on Socket; the guest mounts Tag.
	// They need SharedMemory (vhost-user maps the guest's RAM). Firecracker
	// has no virtio-fs.
	FS []FSDevice
}

// FSDevice is one virtio-fs share: the virtiofsd socket and the tag the
// guest mounts.
type FSDevice struct {
	Tag    string
	Socket string
}

// Driver runs VMs with one VMM.
type Driver interface {
	// Name is "qemu" or "firecracker".
	Name() string
	// Start launches the VMM detached and boots the guest. It returns the
	// VMM's pid once the guest is started (not once it is ready: readiness
	// is SSH's business).
	Start(ctx context.Context, s Spec) (pid int, err error)
	// Shutdown asks the guest to power off (ACPI power button, or
	// Ctrl-Alt-Del); the caller waits, then kills the process.
	Shutdown(ctx context.Context, s Spec) error
}

// Snapshotter is a Driver that can pause a VM, save a paused VM's state
// and start a VMM from saved state (snapshots, forks and warm creates).
// Both drivers implement it: qemu through QMP (stop, cont, a migration
// stream to a file), Firecracker through its API (PATCH /vm,
// PUT /snapshot/create, PUT /snapshot/load).
type Snapshotter interface {
	// Pause stops the guest's vCPUs; the VMM keeps running.
	Pause(ctx context.Context, s Spec) error
	// Resume runs a paused guest again.
	Resume(ctx context.Context, s Spec) error
	// Snapshot saves the paused guest's device state, and its memory,
	// into dst's files (which it creates); the guest stays paused.
	// The disks are the caller's to freeze.
	Snapshot(ctx context.Context, s Spec, dst SnapshotFiles) error
	// Restore starts the VMM with s's resources (disks, TAP, sockets) from
	// src's state and returns its pid once the guest runs again, with its
	// network link down where the VMM can do that (qemu: set_link), so a
	// clone sends nothing under the snapshot's MAC and address before it
	// is given its own.
	Restore(ctx context.Context, s Spec, src SnapshotFiles) (pid int, err error)
	// SetLink brings the guest's network link up or down (qemu's
	// set_link); a VMM without such a control returns nil and documents
	// it (Firecracker).
	SetLink(ctx context.Context, s Spec, up bool) error
}

// SnapshotFiles are the files of one saved VM state.
type SnapshotFiles struct {
	// State is the device state: qemu's migration stream, Firecracker's
	// snapshot file.
	State string
	// Memory is the guest's memory: a file the restored VMM maps
	// copy-on-write (qemu's memory-backend-file share=off, Firecracker's
	// mem_backend File), so untouched pages stay shared between clones.
	// "" for qemu: the memory is in the State stream (a VM whose RAM was
	// not SharedMemory, such as a clone).
	Memory string
}

// ErrNotRunning: the VMM is not there to ask.
var ErrNotRunning = errors.New("vmm not running")
