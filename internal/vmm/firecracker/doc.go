// Package firecracker is the Firecracker vmm.Driver. It starts
// `firecracker --api-sock SOCK --id ID` detached (its own session, stdin
// from /dev/null) and configures and boots the guest through Firecracker's
// HTTP API on that unix socket.
//
// # A small typed client, not firecracker-go-sdk
//
// The API client is written by hand from Firecracker's published API spec
// (src/firecracker/swagger/firecracker.yaml, info.version 1.16.1) instead of
// using the official firecracker-go-sdk. banger needs about ten endpoints;
// the SDK would bring logrus, the go-openapi runtime and a large generated
// dependency tree into bangerd, wraps its own process, jailer and
// networking management around the API (banger already owns all three),
// and follows Firecracker releases with a lag. The request types here carry
// exactly the spec's field names and types, and the tests check every
// request the driver sends against a table of the spec's schemas, so moving
// to a new Firecracker release means re-reading its spec and updating that
// table, not waiting for an SDK.
//
// # Releases
//
// banger drives Firecracker 1.14 or newer (MinVersion): PUT /serial, which
// gives the guest's console its own file, came in 1.14. Start and Restore
// ask the running process (GET /version) before configuring anything and
// refuse an older one with a TooOldError whose hint says what to install
// (or to set vmm = "qemu"); doctor asks the binary (`firecracker
// --version`, CheckVersion), and the daemon's vmm = auto does not choose a
// Firecracker that is too old, nor one this user cannot give a TAP (it
// opens /dev/net/tun itself). Fields of 1.16 (vsock_override,
// clock_realtime, a network interface's mtu, the serial rate limiter) are
// sent only where the release found has them: today only vsock_override,
// from 1.16.
//
// # Boot sequence
//
// Start validates the Spec (an ELF vmlinux, raw disks only, no TapFile:
// Firecracker opens its TAP by name; a MAC of six colon-separated hex
// pairs, the only form Firecracker's parser takes, where net.ParseMAC
// also takes dashes and dots; a TAP name under IFNAMSIZ, 16 bytes),
// prepares the files below, launches Firecracker in the VM directory,
// waits for GET / to answer, checks GET /version, then sends, in this
// order:
//
//	PUT /logger                 Firecracker's own log (see Files)
//	PUT /metrics                Spec.MetricsPath, when set
//	PUT /machine-config         vcpu_count, mem_size_mib
//	PUT /boot-source            kernel_image_path (the vmlinux), initrd_path, boot_args
//	PUT /serial                 serial_out_path = Spec.ConsolePath, when set
//	PUT /drives/{id}            Spec.Disks in order; only the first is the root device (vda)
//	PUT /network-interfaces/eth0  host_dev_name = Spec.TapName, guest_mac = Spec.MAC
//	PUT /vsock                  guest_cid, uds_path, when Spec.VSockPath is set
//	PUT /actions                InstanceStart
//
// Requests builds that list without running anything. If any step fails,
// Start kills Firecracker and returns an error naming the step, the
// endpoint, Firecracker's fault_message and the log files.
//
// Drives are given to Firecracker as symbolic links in the VM directory,
// fc-drive-ID (DriveLink), which Start and Restore point at the Spec's
// disk files, and the vsock socket, when it lies in the VM directory, by
// its name relative to it (Firecracker runs there). A snapshot records
// those paths as given and PUT /snapshot/load has no override for drives
// (nor, before 1.16, for the vsock), so a restore by a Firecracker running
// in another VM's directory opens that VM's disks through its own links,
// whatever its files are called (a clone's overlays have names of their
// own), and binds that VM's socket; the vsock socket must have the same
// name in every VM directory (the daemon's is vsock.sock).
//
// Firecracker adds root=/dev/vda (and ro or rw) to the command line for the
// root drive itself. The command line should carry console=ttyS0 for a
// console, and reboot=k so that the guest's reboot (which is how
// Firecracker stops: it exits on a guest reset) goes through the keyboard
// controller.
//
// # Files
//
//   - Spec.APISocket: the API socket. A stale socket is removed before the
//     start; a socket something still answers on, or a path that is not a
//     socket, is refused.
//   - Spec.LogPath: Firecracker's stdout and stderr, appended, after a
//     "==> time argv" line per start. It holds what Firecracker prints
//     before PUT /logger and whatever it prints when it dies.
//   - firecracker.log, next to the API socket (LoggerPath): Firecracker's
//     logger, truncated at each start. It cannot share Spec.LogPath:
//     Firecracker opens log_path (like metrics_path and serial_out_path)
//     for writing at offset 0, without O_APPEND, so it would overwrite the
//     output appended there.
//   - Spec.ConsolePath: the guest's serial console, through PUT /serial
//     (serial_out_path, in the API since Firecracker 1.14), truncated at
//     each start for the same reason: it holds the current boot only,
//     where qemu's console file accumulates. The console is not taken from
//     stdout because Firecracker's logger writes to stdout until PUT
//     /logger, so the console file would begin with VMM log lines. Without
//     a ConsolePath the console goes to stdout, hence Spec.LogPath.
//   - Spec.MetricsPath: JSON metrics lines (flushed every 60 s and on
//     FlushMetrics). Created, or truncated, as a regular file before the
//     start; an existing FIFO is left as it is.
//   - Spec.VSockPath: Firecracker binds it; a stale socket is removed.
//
// # Shutdown, and a guest that halts
//
// Firecracker has no ACPI power button: Shutdown sends Ctrl-Alt-Del
// (PUT /actions SendCtrlAltDel, x86 only, through the emulated i8042),
// which the guest's init turns into an orderly reboot, on which
// Firecracker exits. A socket that does not answer gives an error wrapping
// vmm.ErrNotRunning.
//
// A guest that powers off (systemctl poweroff, the agent's shutdown) does
// not end Firecracker on x86: Firecracker implements no power management
// (its ACPI tables have no sleep states), so Linux turns the power-off
// into a halt, prints "reboot: System halted" (or "Power down", or, in
// newer kernels, "Power off not available: System halted instead") on the
// serial console, and stops its vCPUs in HLT, while Firecracker runs on
// and GET / still says Running. The halt watch (halt.go) notices: for
// every VM Start or Restore brings up it stats the console every HaltPoll
// (250 ms), reads its last 4 KiB when it changed, and on such a line kills
// the process (SIGKILL: the guest has synced and stopped; the drives'
// writes are in the host's page cache), so that it exits as on a reset and
// bangerd's monitor, which notices VMMs that exit, marks the VM stopped.
// The watch lives in bangerd and ends with the process; a bangerd that
// restarts finds its VMs again and resumes the watch with WatchHalt, which
// holds a pidfd (a reused pid is never signalled) and checks the process
// is the Firecracker of the spec's socket. The console file is truncated
// at each start and restore, so a line is always this run's. It needs
// console=ttyS0 on the guest's command line (banger's has it); a guest
// root that writes such a line to ttyS0 stops its own VM, as a poweroff
// would.
//
// # Pause, snapshots and restore (vmm.Snapshotter)
//
//	Pause, Resume   PATCH /vm {"state": "Paused" | "Resumed"}
//	Snapshot        GET / (refused unless Paused, before anything is asked),
//	                PUT /snapshot/create {"snapshot_type": "Full",
//	                "snapshot_path": State, "mem_file_path": Memory}
//	Restore         a fresh Firecracker: PUT /logger, /metrics, /serial (no
//	                boot resource: a load must come before any), then
//	                PUT /snapshot/load {"snapshot_path": State,
//	                "mem_backend": {"backend_type": "File", "backend_path": Memory},
//	                "network_overrides": [{"iface_id": "eth0", "host_dev_name": TapName}],
//	                "vsock_override": {"uds_path": "vsock.sock"} (1.16 and newer),
//	                "resume_vm": false}; GET / must say Paused and
//	                GET /machine-config give the Spec's vCPUs and memory,
//	                else the process is killed and the snapshot's guest never
//	                runs; then PATCH /vm Resumed and GET / must say Running.
//	SetLink         nothing: see below.
//
// A snapshot is two files, both absolute paths: the device and vCPU state
// and the whole guest memory (Full only: a Diff needs dirty page tracking
// from boot and a chain of files). The memory is mapped MAP_PRIVATE by a
// restore (File backend), so clones of one snapshot share its untouched
// pages through the page cache. The disks are the caller's to freeze (the
// daemon copies or reflinks them while the guest is paused); the snapshot
// records the drive paths as Start gave them (the links, see above).
// clock_realtime is not sent: the daemon sets the guest's clock through
// the agent, and the option needs a 1.16 Firecracker and a 5.16 host
// kernel. A failed load leaves Firecracker unusable (upstream exits), and
// the driver kills it.
//
// The guest agent's vsock connection does not survive a snapshot, on
// either side: Firecracker writes a VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
// into the guest's event queue as it saves the state (vsock/device.rs,
// prepare_save), so the VM that was snapshotted, once resumed, and every
// guest restored from the snapshot, once it runs, close all their vsock
// connections. The agent's listener stays, and bangerd's agent dialer
// makes a new session (CONNECT 1024 on the VM's own socket) when the
// stale one fails, as after any broken session.
//
// SetLink does nothing and returns nil, as vmm.Snapshotter allows for a
// VMM without a link control: Firecracker's API can change a network
// interface's TAP only at a load (network_overrides) and its rate limiters
// after boot (PATCH /network-interfaces), never its link state. A restored
// guest's link is therefore up from the moment it resumes, with the
// snapshot's MAC and address until its identity is set; keeping a clone's
// first frames off the bridge is the host's business (its TAP kept down or
// off the bridge until then).
//
// # Tested against the spec and a fake, not a Firecracker
//
// Firecracker cannot run on the machine this driver was written on (no
// usable KVM), so nothing here has run a real Firecracker. The proof is
// the spec and a fake: every body the driver sends is checked against the
// v1.16.1 spec's schemas (spec_test.go, a table written from the spec,
// hermetic), and the fake API server (fake_test.go) answers as
// Firecracker 1.16 (or 1.14) does: its routing and path id checks before
// the body, its deserializer (unknown fields refused, "warn" a log level,
// fields of later releases unknown, unknown Accept values ignored), its
// state rules (a load only before any boot resource, pause and snapshots
// only after a start, a snapshot only when paused) and upstream's fault
// messages; it opens and writes the files Firecracker would, relative to
// its working directory, so a restore into another VM's directory, whose
// disk files are named otherwise, is checked to open that VM's files.
package firecracker
