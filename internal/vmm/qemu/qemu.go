// Package qemu drives qemu-system-x86_64 with the microvm machine: virtio-mmio
// block and net devices described by ACPI, the serial console to a file,
// and QMP on a unix socket for the power button and status.
package qemu

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/vmm"
)

// Driver is the qemu vmm.Driver.
type Driver struct {
	// Binary is qemu-system-x86_64 (a path or a name in PATH).
	Binary string
}

var _ vmm.Driver = (*Driver)(nil)

// New returns a qemu driver using binary.
func New(binary string) *Driver { return &Driver{Binary: binary} }

// Name implements vmm.Driver.
func (d *Driver) Name() string { return "qemu" }

// tapFD is the descriptor number an open TAP gets in qemu (ExtraFiles[0]).
const tapFD = 3

// AgentPortName is the virtio-serial port's name, which the guest agent
// looks for under /sys/class/virtio-ports (agent.PortName).
const AgentPortName = "banger.agent"

// Args builds qemu's argv (without the binary) for s. It runs nothing, so
// tests check it as is.
func Args(s vmm.Spec) ([]string, error) {
	if s.VCPUs < 1 || s.MemoryMiB < 64 {
		return nil, fmt.Errorf("qemu: %d vCPUs and %d MiB are not a VM", s.VCPUs, s.MemoryMiB)
	}
	if len(s.Disks) == 0 {
		return nil, fmt.Errorf("qemu: no disks")
	}
	for _, v := range []string{s.Kernel, s.Initrd, s.Cmdline, s.APISocket, s.ConsolePath, s.Name, s.MAC, s.AgentSocket} {
		// qemu's own option syntax treats ',' as a separator; refuse it
		// rather than escape it (banger's paths never contain one).
		if strings.ContainsAny(v, ",\n") && v != s.Cmdline {
			return nil, fmt.Errorf("qemu: %q contains ',' or a newline", v)
		}
	}
	var accel, cpu string
	switch s.Accel {
	case "kvm":
		accel, cpu = "kvm", "host"
	case "tcg", "":
		accel, cpu = "tcg", "max"
	default:
		return nil, fmt.Errorf("qemu: accel %q: want kvm or tcg", s.Accel)
	}
	args := []string{
		"-name", "banger-" + s.Name + ",process=banger-" + s.Name,
		"-M", "microvm,acpi=on,x-option-roms=off,isa-serial=on,rtc=on",
		"-accel", accel, "-cpu", cpu,
		"-smp", strconv.Itoa(s.VCPUs), "-m", strconv.Itoa(s.MemoryMiB),
		// No -no-reboot: a guest's reboot restarts it in the same
		// process (its agent reconnects); a power-off ends the process.
		"-nodefaults", "-no-user-config", "-display", "none",
		"-kernel", s.Kernel,
	}
	if s.Initrd != "" {
		args = append(args, "-initrd", s.Initrd)
	}
	args = append(args, "-append", s.Cmdline,
		"-chardev", "file,id=console,path="+s.ConsolePath+",append=on",
		"-serial", "chardev:console",
	)
	for i, d := range s.Disks {
		format := d.Format
		if format == "" {
			format = "raw"
		}
		if format != "raw" && format != "qcow2" {
			return nil, fmt.Errorf("qemu: disk %s: format %q", d.ID, format)
		}
		if strings.ContainsAny(d.Path, ",\n") {
			return nil, fmt.Errorf("qemu: disk path %q contains ',' or a newline", d.Path)
		}
		id := fmt.Sprintf("vd%c", 'a'+i)
		drive := fmt.Sprintf("id=%s,file=%s,format=%s,if=none,cache=unsafe", id, d.Path, format)
		if d.ReadOnly {
			drive += ",readonly=on"
		}
		args = append(args, "-drive", drive, "-device", "virtio-blk-device,drive="+id)
	}
	if s.TapFile != nil {
		args = append(args, "-netdev", fmt.Sprintf("tap,id=net0,fd=%d", tapFD))
	} else if s.TapName != "" {
		args = append(args, "-netdev", "tap,id=net0,ifname="+s.TapName+",script=no,downscript=no")
	}
	if s.TapFile != nil || s.TapName != "" {
		args = append(args, "-device", "virtio-net-device,netdev=net0,mac="+s.MAC)
	}
	if s.AgentSocket != "" {
		// The guest agent's port (docs/agent.md): qemu serves its host end
		// on a unix socket, one client at a time (bangerd).
		args = append(args,
			"-device", "virtio-serial-device,max_ports=2",
			"-chardev", "socket,id=agent,path="+s.AgentSocket+",server=on,wait=off",
			"-device", "virtserialport,chardev=agent,name="+AgentPortName)
	}
	args = append(args, "-qmp", "unix:"+s.APISocket+",server=on,wait=off")
	return args, nil
}

// Start implements vmm.Driver: qemu runs in its own session with stdin from
// /dev/null and its output appended to s.LogPath; the guest boots at once.
// Start returns when QMP answers and reports the guest running.
func (d *Driver) Start(ctx context.Context, s vmm.Spec) (int, error) {
	args, err := Args(s)
	if err != nil {
		return 0, err
	}
	_ = os.Remove(s.APISocket)
	logf, err := os.OpenFile(s.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer devnull.Close()
	fmt.Fprintf(logf, "==> %s %s\n", time.Now().UTC().Format(time.RFC3339), strings.Join(append([]string{d.Binary}, args...), " "))

	cmd := exec.Command(d.Binary, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, logf, logf
	if s.TapFile != nil {
		cmd.ExtraFiles = []*os.File{s.TapFile}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting %s: %w", d.Binary, err)
	}
	pid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it if it dies while bangerd lives

	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case err := <-exited:
			return 0, fmt.Errorf("qemu exited at start (%v); see %s", err, s.LogPath)
		default:
		}
		st, err := QueryStatus(ctx, s.APISocket)
		if err == nil {
			if st == "running" {
				return pid, nil
			}
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			return 0, fmt.Errorf("qemu's QMP did not report the guest running within 15s (%v); see %s", err, s.LogPath)
		}
		select {
		case <-ctx.Done():
			_ = syscall.Kill(pid, syscall.SIGKILL)
			return 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Shutdown implements vmm.Driver: QMP system_powerdown, the ACPI power
// button. The guest image's power-button unit turns it into a poweroff.
func (d *Driver) Shutdown(ctx context.Context, s vmm.Spec) error {
	_, err := Execute(ctx, s.APISocket, "system_powerdown", nil)
	return err
}
