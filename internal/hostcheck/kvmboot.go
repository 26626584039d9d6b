package hostcheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// kernelBanner is the first line an x86 Linux kernel prints once it runs
// decompressed in long mode (with earlyprintk on the serial port).
var kernelBanner = []byte("Linux version ")

// ProbeKVMBoot boots kernel (a bzImage) under qemu with -accel kvm and no
// disks, and reports whether it reaches the kernel's first printk within
// timeout. This is the decisive test: some hosts have a /dev/kvm that passes
// the KVM API probe yet cannot run an ordinary guest kernel (the boot stops
// after the real-mode setup code). qemu is killed as soon as the banner
// appears or the time is up.
func ProbeKVMBoot(ctx context.Context, qemu, kernel string, timeout time.Duration) KVMResult {
	r := KVMResult{DeviceExists: true}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return KVMResult{Detail: "/dev/kvm does not exist"}
	}
	dir, err := os.MkdirTemp("", "banger-kvmprobe-")
	if err != nil {
		r.Detail = err.Error()
		return r
	}
	defer os.RemoveAll(dir)
	serial := filepath.Join(dir, "serial.log")

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu,
		"-accel", "kvm", "-M", "microvm", "-cpu", "host", "-m", "128",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "file:"+serial,
		"-kernel", kernel,
		"-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1 loglevel=8",
	)
	// A guest hung on a broken KVM never exits: it dies with its parent
	// (a bangerd killed mid-probe), not at the next reboot.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		r.Detail = fmt.Sprintf("starting %s: %v", qemu, err)
		return r
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			out, _ := os.ReadFile(serial)
			if bytes.Contains(out, kernelBanner) {
				r.Usable, r.Detail = true, "a guest kernel booted under qemu with KVM"
				return r
			}
			msg := strings.Join(strings.Fields(strings.ReplaceAll(string(bytes.TrimSpace(stderr.Bytes())), "\n", "; ")), " ")
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				r.Detail = fmt.Sprintf("a guest kernel did not start under KVM within %s (it stopped after the real-mode setup code); this KVM cannot run ordinary guests", timeout)
			} else {
				r.Detail = fmt.Sprintf("qemu with KVM exited before the guest kernel started: %v: %s", err, msg)
			}
			return r
		case <-tick.C:
			if out, _ := os.ReadFile(serial); bytes.Contains(out, kernelBanner) {
				cancel()
				<-done
				r.Usable, r.Detail = true, "a guest kernel booted under qemu with KVM"
				return r
			}
		}
	}
}
