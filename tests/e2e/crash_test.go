package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/tests/harness"
)

func verifyNoLeak(t *testing.T, e *harness.Env) {
	t.Helper()
	if r := e.Banger("system", "verify"); r.Code != 0 {
		t.Fatalf("leaks found: %s", r)
	}
}

// TestDaemonKill9KeepsVMs: kill -9 of bangerd with a VM running; the next
// CLI call starts a new daemon that reports the VM running and reaches it;
// delete then cleans everything.
func TestDaemonKill9KeepsVMs(t *testing.T) {
	requireE2E(t)
	image := ensureImage(t)
	if !testutil.InNetNS(t) {
		return
	}
	e := newVMEnv(t, image)
	e.MustBanger("vm", "create", "--name", "k1")
	e.MustBanger("vm", "ssh", "k1", "--", "sh", "-c", "echo before > /root/f")
	old := e.Status().PID
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	harness.WaitDead(t, old)

	var info api.VMInfo
	e.JSON(&info, "vm", "show", "k1")
	if e.Status().PID == old {
		t.Fatal("no new daemon")
	}
	if info.Runtime.State != "running" || !info.Alive {
		t.Fatalf("after daemon kill -9: %+v", info)
	}
	if r := e.MustBanger("vm", "ssh", "k1", "--", "cat", "/root/f"); r.Stdout != "before\n" {
		t.Fatalf("ssh after restart: %q", r.Stdout)
	}
	verifyNoLeak(t, e)
	e.MustBanger("vm", "delete", "k1")
	verifyNoLeak(t, e)
}

// TestVMMKill9IsNoticed: kill -9 of a VM's qemu; within seconds the VM is
// stopped with the reason, its TAP released; vm start brings it back with
// /root intact.
func TestVMMKill9IsNoticed(t *testing.T) {
	requireE2E(t)
	image := ensureImage(t)
	if !testutil.InNetNS(t) {
		return
	}
	e := newVMEnv(t, image)
	e.MustBanger("vm", "create", "--name", "k2")
	e.MustBanger("vm", "ssh", "k2", "--", "sh", "-c", "echo kept > /root/f && sync")
	var info api.VMInfo
	e.JSON(&info, "vm", "show", "k2")
	tap := info.Handles.TapDevice
	if err := syscall.Kill(info.Handles.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		e.JSON(&info, "vm", "show", "k2")
		if info.Runtime.State == "stopped" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %s 10s after the VMM died", info.Runtime.State)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if !strings.Contains(info.Runtime.LastError, "exited on its own") {
		t.Fatalf("no reason: %q", info.Runtime.LastError)
	}
	if linkExists(tap) {
		t.Fatalf("TAP %s not released", tap)
	}
	verifyNoLeak(t, e)
	e.MustBanger("vm", "start", "k2")
	if r := e.MustBanger("vm", "ssh", "k2", "--", "cat", "/root/f"); r.Stdout != "kept\n" {
		t.Fatalf("/root after restart: %q", r.Stdout)
	}
}

// TestDaemonKill9MidCreate: kill -9 of bangerd during a create; after the
// restart the VM is running or failed with its resources released, and
// nothing leaks either way.
func TestDaemonKill9MidCreate(t *testing.T) {
	requireE2E(t)
	image := ensureImage(t)
	if !testutil.InNetNS(t) {
		return
	}
	e := newVMEnv(t, image)
	e.MustBanger("daemon", "status")
	pid := e.Status().PID
	done := make(chan harness.Result, 1)
	go func() { done <- e.Banger("vm", "create", "--name", "k3") }()
	// Kill it once the VM's TAP exists: mid-boot.
	deadline := time.Now().Add(60 * time.Second)
	for len(tapLinks()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("create never reached the network stage")
		}
		time.Sleep(50 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	harness.WaitDead(t, pid)
	<-done

	var info api.VMInfo
	e.JSON(&info, "vm", "show", "k3")
	switch info.Runtime.State {
	case "running":
		e.MustBanger("vm", "ssh", "k3", "--", "true")
	case "failed":
		if info.Alive || len(tapLinks()) > 0 {
			t.Fatalf("failed create holds resources: %+v taps %v", info, tapLinks())
		}
	default:
		t.Fatalf("after the restart: state %s", info.Runtime.State)
	}
	verifyNoLeak(t, e)
	e.MustBanger("vm", "delete", "k3")
	verifyNoLeak(t, e)
}
