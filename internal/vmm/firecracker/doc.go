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
// # Boot sequence
//
// Start validates the Spec (an ELF vmlinux, raw disks only, no TapFile:
// Firecracker opens its TAP by name), prepares the files below, launches
// Firecracker, waits for GET / to answer, then sends, in this order:
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
// # Shutdown
//
// Firecracker has no ACPI power button: Shutdown sends Ctrl-Alt-Del
// (PUT /actions SendCtrlAltDel, x86 only, through the emulated i8042),
// which the guest's init turns into an orderly reboot, on which
// Firecracker exits. A socket that does not answer gives an error wrapping
// vmm.ErrNotRunning.
package firecracker
