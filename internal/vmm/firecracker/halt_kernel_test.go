package firecracker

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/vmm"
)

// haltInit is a guest's /init that powers the machine off at once, as
// systemd-shutdown does at the end of a poweroff: reboot(2) with
// LINUX_REBOOT_CMD_POWER_OFF.
const haltInit = `package main

import "syscall"

func main() {
	syscall.Sync()
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}
`

// cpioNewc is a newc archive of one executable file.
func cpioNewc(name string, data []byte) []byte {
	var b bytes.Buffer
	entry := func(name string, mode uint32, data []byte) {
		fmt.Fprintf(&b, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
		b.WriteString(name + "\x00")
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
		b.Write(data)
		for b.Len()%4 != 0 {
			b.WriteByte(0)
		}
	}
	entry(name, 0o100755, data)
	entry("TRAILER!!!", 0, nil)
	return b.Bytes()
}

// A real Linux kernel, told to power off on a machine that cannot (no
// ACPI, as under Firecracker on x86), halts and says so on its serial
// console while the VMM runs on; Halted reads that line, and the halt
// watch kills the VMM. Firecracker cannot run here, so qemu (microvm,
// acpi=off, tcg) stands in as the VMM that outlives its halted guest:
// what is proven is the kernel's line, Halted's reading of a real console
// and the watch's kill of a real VMM process. It needs a guest kernel
// (BANGER_TEST_KERNEL, as the e2e tier caches; a bzImage) and qemu.
func TestHaltedRealKernel(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a kernel")
	}
	kernel := os.Getenv("BANGER_TEST_KERNEL")
	if kernel == "" {
		t.Skip("BANGER_TEST_KERNEL not set: no guest kernel to boot")
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "init.go")
	os.WriteFile(src, []byte(haltInit), 0o644)
	bin := filepath.Join(dir, "init")
	build := exec.Command("go", "build", "-o", bin, src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the guest's init: %v\n%s", err, out)
	}
	initBin, _ := os.ReadFile(bin)
	initrd := filepath.Join(dir, "initrd.cpio")
	os.WriteFile(initrd, cpioNewc("init", initBin), 0o644)

	// No ACPI tables (microvm,acpi=off): the kernel cannot power off, as
	// under Firecracker. The TSC's rate is given, as the daemon gives it
	// under tcg: a loaded host makes the kernel's PIT calibration fail,
	// and it then waits for a clock that never comes.
	cmdline := "console=ttyS0 panic=-1 reboot=k tsc=reliable loglevel=4"
	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	if khz, ok := guest.ParseTSCKHz(nil, cpuinfo); ok {
		cmdline += fmt.Sprintf(" tsc_early_khz=%d", khz)
	}
	s := vmm.Spec{Name: "halt", ConsolePath: filepath.Join(dir, "console.log"), LogPath: filepath.Join(dir, "vmm.log")}
	cmd := exec.Command(qemu, "-M", "microvm,acpi=off", "-accel", "tcg", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "file:"+s.ConsolePath,
		"-kernel", kernel, "-initrd", initrd,
		"-append", cmdline)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })

	d := New("firecracker", nil)
	t0 := time.Now()
	for {
		halted, _ := d.Halted(context.Background(), s)
		if halted {
			break
		}
		select {
		case <-done:
			b, _ := os.ReadFile(s.ConsolePath)
			t.Fatalf("the VMM exited before the guest halted (%v); console:\n%s", cmd.ProcessState, b)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Since(t0) > 120*time.Second {
			b, _ := os.ReadFile(s.ConsolePath)
			t.Fatalf("no halt line within 120 s; console:\n%s", b)
		}
	}
	b, _ := os.ReadFile(s.ConsolePath)
	t.Logf("halted after %s; console ends %q", time.Since(t0).Round(time.Millisecond), tail(string(b)))
	// The VMM outlives its halted guest...
	select {
	case <-done:
		t.Fatal("the VMM exited by itself: nothing for the watch to do")
	case <-time.After(time.Second):
	}
	// ...until the watch kills it.
	d.HaltPoll = 20 * time.Millisecond
	wait := func(t time.Duration) bool {
		select {
		case <-done:
			return true
		case <-time.After(t):
			return false
		}
	}
	watched := make(chan struct{})
	go func() {
		d.watchHalt(context.Background(), s, cmd.Process.Pid, wait, func() error { return cmd.Process.Kill() })
		close(watched)
	}()
	select {
	case <-watched:
	case <-time.After(10 * time.Second):
		t.Fatal("the watch did not stop the VMM")
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the VMM ended %v, want killed", cmd.ProcessState)
	}
}
