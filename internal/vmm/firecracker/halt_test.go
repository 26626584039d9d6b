package firecracker

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/vmm"
)

// The ends of consoles of Debian guests as Linux prints them, from
// kernel/reboot.c (pr_fmt "reboot: ", pr_emerg) after systemd's shutdown.
const consoleTail = "[  OK  ] Reached target system-shutdown.target - System Shutdown.\n" +
	"[  OK  ] Finished systemd-poweroff.service - System Power Off.\n" +
	"[  OK  ] Reached target poweroff.target - System Power Off.\n" +
	"[   12.503117] systemd-shutdown[1]: Syncing filesystems and block devices.\n"

func TestHalted(t *testing.T) {
	dir := t.TempDir()
	s := vmm.Spec{ConsolePath: filepath.Join(dir, "console.log"), LogPath: filepath.Join(dir, "vmm.log")}
	d := New("firecracker", nil)
	for _, tc := range []struct {
		console string
		want    bool
	}{
		{consoleTail + "[   12.601220] reboot: System halted\n", true},
		{consoleTail + "reboot: System halted\r\n", true},
		{consoleTail + "[   12.601220] reboot: Power down\n", true},
		{consoleTail + "[   12.6] reboot: Power off not available: System halted instead\n", true},
		{consoleTail + "[   12.601220] reboot: Restarting system\n", false}, // Firecracker exits by itself
		{consoleTail, false},
		{"", false},
		{"demo login: echo reboot: System halted is not the line\n", false},
		{"[   12.601220] reboot: System halted\n" + strings.Repeat("x\n", haltTail), false}, // not at the end
	} {
		if err := os.WriteFile(s.ConsolePath, []byte(tc.console), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := d.Halted(context.Background(), s)
		if err != nil || got != tc.want {
			t.Errorf("console ending %q: %v, %v; want %v", tail(tc.console), got, err, tc.want)
		}
	}

	// Without a console file the console is Firecracker's stdout, in the
	// VMM log: only what followed its last start counts.
	s.ConsolePath = ""
	log := "==> 2026-01-01T00:00:00Z firecracker --api-sock a\n" + consoleTail + "[ 9.1] reboot: System halted\n" +
		"==> 2026-01-01T00:01:00Z firecracker --api-sock a\n" + consoleTail
	os.WriteFile(s.LogPath, []byte(log), 0o600)
	if got, err := d.Halted(context.Background(), s); err != nil || got {
		t.Errorf("an earlier run's halt counted: %v %v", got, err)
	}
	os.WriteFile(s.LogPath, []byte(log+"[ 13.2] reboot: System halted\n"), 0o600)
	if got, err := d.Halted(context.Background(), s); err != nil || !got {
		t.Errorf("this run's halt missed: %v %v", got, err)
	}
	if _, err := d.Halted(context.Background(), vmm.Spec{}); err == nil {
		t.Error("no paths: no error")
	}
}

func tail(s string) string {
	if len(s) > 60 {
		return "..." + s[len(s)-60:]
	}
	return s
}

// A started VM's Firecracker is killed once its guest prints the halt
// line, so that it exits as a reset would and bangerd marks the VM
// stopped; one whose guest is still running is left alone.
func TestHaltWatchKillsHaltedGuest(t *testing.T) {
	h := newHarness(t)
	h.drv.HaltPoll = 10 * time.Millisecond
	if _, err := h.drv.Start(context.Background(), h.spec); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.spec.ConsolePath, []byte(consoleTail), 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.proc.done:
		t.Fatal("killed a running guest's firecracker")
	case <-time.After(200 * time.Millisecond):
	}
	f, _ := os.OpenFile(h.spec.ConsolePath, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString("[   12.601220] reboot: System halted\n")
	f.Close()
	t0 := time.Now()
	h.assertKilled()
	t.Logf("killed %s after the halt line", time.Since(t0).Round(time.Millisecond))
}

// The same after a restore.
func TestHaltWatchAfterRestore(t *testing.T) {
	a := started(t)
	ctx := context.Background()
	snap := snapFiles(t)
	_ = a.drv.Pause(ctx, a.spec)
	if err := a.drv.Snapshot(ctx, a.spec, snap); err != nil {
		t.Fatal(err)
	}
	b := clone(t)
	b.drv.HaltPoll = 10 * time.Millisecond
	if _, err := b.drv.Restore(ctx, b.spec, snap); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(b.spec.ConsolePath, []byte("[ 1.0] reboot: Power down\n"), 0o600)
	b.assertKilled()
}

// WatchHalt watches a process this one did not launch through a pidfd,
// and only the Firecracker serving the spec's socket.
func TestWatchHaltByPid(t *testing.T) {
	dir := t.TempDir()
	s := vmm.Spec{Name: "demo", APISocket: filepath.Join(dir, "api.sock"), ConsolePath: filepath.Join(dir, "console.log")}
	os.WriteFile(s.ConsolePath, []byte(consoleTail), 0o600)
	// A stand-in whose command line is Firecracker's: sh -c 'sleep 60' firecracker --api-sock SOCK --id x
	// In a process group of its own: the kill ends sh, and the cleanup
	// ends its sleep, which would otherwise outlive the test.
	cmd := exec.Command("sh", "-c", "sleep 60", "firecracker", "--api-sock", s.APISocket, "--id", "x")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })

	d := New("firecracker", nil)
	d.HaltPoll = 10 * time.Millisecond
	other := s
	other.APISocket = filepath.Join(dir, "other.sock")
	if err := d.WatchHalt(context.Background(), other, cmd.Process.Pid); err == nil {
		t.Fatal("watched a process serving another socket")
	}
	if err := d.WatchHalt(context.Background(), s, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		t.Fatalf("killed a running guest's process: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	os.WriteFile(s.ConsolePath, []byte(consoleTail+"[ 2.0] reboot: System halted\n"), 0o600)
	select {
	case err := <-exited:
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("exit %v, want SIGKILL", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("not killed")
	}
}
