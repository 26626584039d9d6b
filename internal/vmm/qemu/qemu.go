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
func Args(s vmm.Spec) ([]string, error) { return args(s, nil) }

// incoming is how a restore's argv differs from a boot's: the guest's RAM
// mapped copy-on-write from a snapshot's memory file (or, when memory is
// "", in s's own RAM, filled by the stream), and qemu waiting, paused, for
// the state.
type incoming struct {
	memory string
}

func args(s vmm.Spec, in *incoming) ([]string, error) {
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
	machine := "microvm,acpi=on,x-option-roms=off,isa-serial=on,rtc=on"
	var memory []string
	switch {
	case in != nil && in.memory != "":
		if strings.ContainsAny(in.memory, ",\n") {
			return nil, fmt.Errorf("qemu: memory file %q contains ',' or a newline", in.memory)
		}
		// share=off: a private, copy-on-write mapping of the snapshot's
		// RAM; pages the clone never writes stay the file's, shared
		// with every other clone through the page cache.
		memory = []string{"-object", fmt.Sprintf("memory-backend-file,id=ram,size=%dM,mem-path=%s,share=off", s.MemoryMiB, in.memory)}
	case s.SharedMemory:
		// A memfd: a snapshot copies it (x-ignore-shared leaves it out
		// of the migration stream) and nothing outlives the process.
		memory = []string{"-object", fmt.Sprintf("memory-backend-memfd,id=ram,size=%dM,share=on", s.MemoryMiB)}
	}
	if memory != nil {
		machine += ",memory-backend=ram"
	}
	args := []string{
		"-name", "banger-" + s.Name + ",process=banger-" + s.Name,
		"-M", machine,
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
	if len(s.FS) > 0 {
		if !s.SharedMemory || in != nil {
			return nil, fmt.Errorf("qemu: a virtio-fs share needs the guest's RAM in shared memory (and cannot be restored from a snapshot)")
		}
		// libvhost-user (virtiofsd) refuses legacy virtio; microvm's
		// virtio-mmio transport is legacy unless told otherwise. Only a
		// VM with a share gets it: it changes every device's state.
		args = append(args, "-global", "virtio-mmio.force-legacy=false")
		for i, f := range s.FS {
			if strings.ContainsAny(f.Socket+f.Tag, ",\n") || f.Tag == "" || f.Socket == "" {
				return nil, fmt.Errorf("qemu: virtio-fs share %q on %q", f.Tag, f.Socket)
			}
			id := fmt.Sprintf("fs%d", i)
			args = append(args,
				"-chardev", "socket,id="+id+",path="+f.Socket,
				"-device", "vhost-user-fs-device,chardev="+id+",tag="+f.Tag)
		}
	}
	// A virtio-rng device: the guest's kernel feeds its RNG from the
	// host's, which matters most in clones restored from one snapshot
	// (their RNG state is the snapshot's until reseeded).
	args = append(args, "-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-device,rng=rng0")
	args = append(args, memory...)
	if in != nil {
		args = append(args, "-S", "-incoming", "defer")
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
	p, err := d.spawn(s, args)
	if err != nil {
		return 0, err
	}
	if _, err := p.waitStatus(ctx, s, 15*time.Second, "running"); err != nil {
		return 0, err
	}
	return p.pid, nil
}

// process is a qemu just started by spawn.
type process struct {
	pid    int
	exited chan error
}

// spawn starts qemu with args, detached (its own session), its output
// appended to s.LogPath.
func (d *Driver) spawn(s vmm.Spec, args []string) (*process, error) {
	_ = os.Remove(s.APISocket)
	logf, err := os.OpenFile(s.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
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
		return nil, fmt.Errorf("starting %s: %w", d.Binary, err)
	}
	p := &process{pid: cmd.Process.Pid, exited: make(chan error, 1)}
	go func() { p.exited <- cmd.Wait() }() // reaps it if it dies while bangerd lives
	return p, nil
}

// waitStatus polls QMP until the guest's run state is one of want, and
// kills qemu if it does not get there within limit (or ctx ends).
func (p *process) waitStatus(ctx context.Context, s vmm.Spec, limit time.Duration, want ...string) (string, error) {
	deadline := time.Now().Add(limit)
	for {
		select {
		case err := <-p.exited:
			return "", fmt.Errorf("qemu exited at start (%v); see %s", err, s.LogPath)
		default:
		}
		st, err := QueryStatus(ctx, s.APISocket)
		if err == nil {
			for _, w := range want {
				if st == w {
					return st, nil
				}
			}
		}
		if time.Now().After(deadline) {
			p.kill()
			return "", fmt.Errorf("qemu's QMP did not report the guest %s within %v (status %q, %v); see %s", strings.Join(want, " or "), limit, st, err, s.LogPath)
		}
		select {
		case <-ctx.Done():
			p.kill()
			return "", ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (p *process) kill() {
	_ = syscall.Kill(p.pid, syscall.SIGKILL)
}

// Shutdown implements vmm.Driver: QMP system_powerdown, the ACPI power
// button. The guest image's power-button unit turns it into a poweroff.
func (d *Driver) Shutdown(ctx context.Context, s vmm.Spec) error {
	_, err := Execute(ctx, s.APISocket, "system_powerdown", nil)
	return err
}
