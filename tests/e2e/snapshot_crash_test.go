package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/tests/harness"
)

// TestSnapshotCrashes kills bangerd, the VMM or both with SIGKILL at
// several points of a snapshot, a fork, a create from a snapshot and a
// restore. After each, with a new bangerd: every VM is running, paused or
// stopped (or, for a VM being made, failed); no two live VMs share a MAC,
// address or hostname, each guest's own matching its row; a snapshot is
// registered whole (its directory and manifest there, a create from it
// works) or not at all; and system verify reports nothing.
func TestSnapshotCrashes(t *testing.T) {
	requireE2E(t)
	image := ensureImage(t)
	if !testutil.InNetNS(t) {
		return
	}
	e := newVMEnv(t, image)
	e.MustBanger("vm", "create", "--name", "src", "--cold")
	e.MustBanger("vm", "snapshot", "src", "--name", "base")

	daemonPID := func() int { return e.Status().PID }
	vmmPID := func(name string) int {
		var info api.VMInfo
		e.JSON(&info, "vm", "show", name)
		if info.Handles == nil {
			return 0
		}
		return info.Handles.PID
	}
	// run starts the CLI with args, kills what kill names after delay,
	// waits for the CLI and lets a new bangerd reconcile.
	run := func(delay time.Duration, kill string, vm string, args ...string) harness.Result {
		t.Helper()
		dpid, qpid := daemonPID(), 0
		if vm != "" {
			qpid = vmmPID(vm)
		}
		cmd := e.Command(args...)
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		if strings.Contains(kill, "daemon") {
			syscall.Kill(dpid, syscall.SIGKILL)
		}
		if strings.Contains(kill, "vmm") && qpid > 0 {
			syscall.Kill(qpid, syscall.SIGKILL)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(5 * time.Minute):
			cmd.Process.Kill()
			<-done
			t.Fatalf("%v did not end after the kill:\n%s", args, out.String())
		}
		if strings.Contains(kill, "daemon") {
			harness.WaitDead(t, dpid)
		}
		code := 0
		if cmd.ProcessState != nil {
			code = cmd.ProcessState.ExitCode()
		}
		t.Logf("%v, %s killed after %v: exit %d", args, kill, delay, code)
		return harness.Result{Stdout: out.String(), Code: code}
	}
	check := func(what string) {
		t.Helper()
		var list []api.VMInfo
		// A VMM killed is noticed by bangerd's monitor within a second.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			e.JSON(&list, "vm", "list")
			settled := true
			for _, v := range list {
				if (v.Runtime.State == "running" || v.Runtime.State == "paused") && !v.Alive {
					settled = false
				}
			}
			if settled {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: a VM recorded live without its VMM for 10 s: %+v", what, list)
			}
		}
		var states []string
		for _, v := range list {
			states = append(states, v.Name+" "+string(v.Runtime.State))
		}
		t.Logf("%s: %s", what, strings.Join(states, ", "))
		seen := map[string]string{}
		for _, v := range list {
			switch v.Runtime.State {
			case "running", "paused", "stopped", "failed":
			default:
				t.Fatalf("%s: vm %s is %s", what, v.Name, v.Runtime.State)
			}
			if v.Runtime.State == "paused" {
				e.MustBanger("vm", "resume", v.Name)
				v.Runtime.State = "running"
			}
			if v.Runtime.State != "running" {
				continue
			}
			mac := guestOut(t, e, v.Name, "sh", "-c", "cat /sys/class/net/e*/address")
			host := guestOut(t, e, v.Name, "hostname")
			ip := guestOut(t, e, v.Name, "sh", "-c", "ip -4 -o addr show scope global | awk '{print $4}'")
			if mac != v.Runtime.MAC || host != v.Name || !strings.HasPrefix(ip, v.Runtime.GuestIP+"/") {
				t.Fatalf("%s: vm %s runs as mac %s host %s ip %s; its row says %s %s", what, v.Name, mac, host, ip, v.Runtime.MAC, v.Runtime.GuestIP)
			}
			for _, k := range []string{"mac " + mac, "host " + host, "ip " + ip} {
				if other, dup := seen[k]; dup {
					t.Fatalf("%s: %s and %s share %s", what, v.Name, other, k)
				}
				seen[k] = v.Name
			}
		}
		var sns []api.SnapshotInfo
		e.JSON(&sns, "snapshot", "list", "--all")
		for _, sn := range sns {
			if _, err := os.Stat(filepath.Join(sn.Dir, "manifest.json")); err != nil {
				t.Fatalf("%s: snapshot %s registered without its manifest: %v", what, sn.Name, err)
			}
		}
		verifyNoLeak(t, e)
	}
	snapshotWhole := func(what, name string) {
		t.Helper()
		if r := e.Banger("snapshot", "show", name); r.Code != 0 {
			return // not registered: fine
		}
		e.MustBanger("vm", "create", "--from", name, "--name", "probe")
		if h := guestOut(t, e, "probe", "hostname"); h != "probe" {
			t.Fatalf("%s: a clone of %s says hostname %q", what, name, h)
		}
		e.MustBanger("vm", "delete", "probe")
		e.MustBanger("snapshot", "delete", name)
	}
	ensureRunning := func(name string) {
		var info api.VMInfo
		e.JSON(&info, "vm", "show", name)
		if info.Runtime.State != "running" {
			e.MustBanger("vm", "start", name)
		}
	}

	for i, d := range []time.Duration{30 * time.Millisecond, 150 * time.Millisecond, 400 * time.Millisecond} {
		name := fmt.Sprintf("cs%d", i)
		run(d, "daemon", "src", "vm", "snapshot", "src", "--name", name)
		what := fmt.Sprintf("bangerd killed %v into a snapshot", d)
		check(what)
		snapshotWhole(what, name)
	}
	for i, kill := range []string{"vmm", "daemon+vmm"} {
		name := fmt.Sprintf("cv%d", i)
		run(100*time.Millisecond, kill, "src", "vm", "snapshot", "src", "--name", name)
		what := kill + " killed during a snapshot"
		check(what)
		snapshotWhole(what, name)
		// The VM's disks are whole: it boots again.
		ensureRunning("src")
		check(what + ", then started")
	}
	for i, d := range []time.Duration{100 * time.Millisecond, 600 * time.Millisecond, 1500 * time.Millisecond} {
		name := fmt.Sprintf("fk%d", i)
		run(d, "daemon", "", "vm", "fork", "src", "--name", name)
		check(fmt.Sprintf("bangerd killed %v into a fork", d))
		e.Banger("vm", "delete", "--force", name)
		check(fmt.Sprintf("after deleting fork %s", name))
	}
	for i, d := range []time.Duration{200 * time.Millisecond, 1000 * time.Millisecond} {
		name := fmt.Sprintf("fr%d", i)
		run(d, "daemon", "", "vm", "create", "--from", "base", "--name", name)
		check(fmt.Sprintf("bangerd killed %v into a create --from", d))
		e.Banger("vm", "delete", "--force", name)
	}
	for _, d := range []time.Duration{300 * time.Millisecond, 1200 * time.Millisecond} {
		run(d, "daemon", "", "vm", "restore", "src", "base")
		check(fmt.Sprintf("bangerd killed %v into a restore", d))
		ensureRunning("src")
		check("after the restore, started")
	}
	e.MustBanger("snapshot", "delete", "base")
	e.MustBanger("vm", "delete", "src")
	verifyNoLeak(t, e)
}
