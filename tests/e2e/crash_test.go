package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
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

// TestDaemonKill9UnderParallelCreates: five vm creates started at once;
// bangerd killed (-9) once every VM's VMM runs, their guests still booting
// and the CLIs following; the test restarts the daemon at once (as systemd
// would), racing the CLIs, which start one too: one wins the lock and all
// talk to it. Each CLI says the daemon went away, finds its VM re-adopted
// by the new daemon (the same VMM process), waits for its guest agent and
// exits 0 printing what a create prints (one of them with -o json); all
// five answer vm exec with their own hostname; system verify finds nothing
// with the five running and nothing once they are deleted.
//
// --vcpus 1 is not the config's default size (2), so no create boots to
// make a warm template and all five boot cold, the same way.
func TestDaemonKill9UnderParallelCreates(t *testing.T) {
	requireE2E(t)
	image := ensureImage(t)
	if !testutil.InNetNS(t) {
		return
	}
	e := newVMEnv(t, image)
	e.MustBanger("daemon", "status")
	old := e.Status().PID

	type create struct {
		name      string
		json      bool
		out, errb bytes.Buffer
		done      chan struct{}
		code      int
		took      time.Duration
		vmmPID    int // at the kill
	}
	start := time.Now()
	var creates []*create
	for i := 1; i <= 5; i++ {
		c := &create{name: fmt.Sprintf("par%d", i), json: i == 5, done: make(chan struct{})}
		args := []string{"vm", "create", "--name", c.name, "--vcpus", "1"}
		if c.json {
			args = append(args, "-o", "json")
		}
		cmd := e.Command(args...)
		cmd.Stdout, cmd.Stderr = &c.out, &c.errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() {
			defer close(c.done)
			err := cmd.Wait()
			c.took = time.Since(start)
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				c.code = ee.ExitCode()
			} else if err != nil {
				c.code = -1
			}
		}()
		creates = append(creates, c)
	}
	// However the test ends, no CLI outlives it.
	defer func() {
		for _, c := range creates {
			select {
			case <-c.done:
			case <-time.After(10 * time.Minute):
			}
		}
	}()
	ended := func(c *create) bool {
		select {
		case <-c.done:
			return true
		default:
			return false
		}
	}

	// Kill once all five are recorded running: each VMM has started (the
	// row says running only after it did) and the guests boot. A VM still
	// creating at the kill would be failed by the new daemon's reconcile
	// (an interrupted create is rolled back): that is TestDaemonKill9MidCreate.
	deadline := time.Now().Add(3 * time.Minute)
	var list []api.VMInfo
	for {
		e.JSON(&list, "vm", "list")
		running := 0
		for _, v := range list {
			if v.Runtime.State == "running" && v.Handles != nil && v.Handles.PID > 0 {
				running++
			}
		}
		if running == len(creates) {
			break
		}
		for _, c := range creates {
			if ended(c) && c.code != 0 {
				t.Fatalf("create %s failed before the kill: exit %d\n%s%s", c.name, c.code, c.out.String(), c.errb.String())
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d VMs running after 3 minutes: %+v", running, len(creates), list)
		}
		time.Sleep(50 * time.Millisecond)
	}
	following := map[string]bool{}
	for _, c := range creates {
		if !ended(c) {
			following[c.name] = true
		}
		for _, v := range list {
			if v.Name == c.name {
				c.vmmPID = v.Handles.PID
			}
		}
	}
	killedAt := time.Since(start)
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	harness.WaitDead(t, old)
	if len(following) == 0 {
		t.Fatal("every create ended before the kill: nothing followed a dying daemon")
	}
	// The restart, racing the five CLIs' own starts.
	restarted := e.Status().PID
	restartedAt := time.Since(start)
	if restarted == old {
		t.Fatal("no new daemon")
	}

	name := regexp.MustCompile(`(?m)^name\s+(\S+)$`)
	state := regexp.MustCompile(`(?m)^state\s+running$`)
	wentAway := regexp.MustCompile(`(?m)^bangerd went away during (op-[0-9a-z]+); waiting for it to come back \(at most 1m0s\)$`)
	answers := regexp.MustCompile(`(?m)^a new bangerd answers \(pid (\d+), after [^)]*\) and does not know (op-[0-9a-z]+): asking it where vm (\S+) ended$`)
	nFollowing := 0
	for _, c := range creates {
		select {
		case <-c.done:
		case <-time.After(6 * time.Minute):
			t.Fatalf("create %s still running 6 minutes after the kill:\n%s", c.name, c.errb.String())
		}
		out, errs := c.out.String(), c.errb.String()
		if c.code != 0 {
			t.Errorf("create %s: exit %d\nstdout:\n%s\nstderr:\n%s", c.name, c.code, out, errs)
			continue
		}
		if c.json {
			var info api.VMInfo
			if err := json.Unmarshal([]byte(out), &info); err != nil || info.Name != c.name || info.Runtime.State != "running" || !info.Alive {
				t.Errorf("create %s -o json does not print its VM running (%v):\n%s", c.name, err, out)
			}
		} else if m := name.FindStringSubmatch(out); m == nil || m[1] != c.name || !state.MatchString(out) {
			t.Errorf("create %s does not show its VM running:\n%s", c.name, out)
		}
		if !following[c.name] {
			continue
		}
		nFollowing++
		m := wentAway.FindStringSubmatch(errs)
		if m == nil {
			t.Errorf("create %s, following at the kill, does not say the daemon went away:\n%s", c.name, errs)
			continue
		}
		id := m[1]
		if !c.json && !strings.Contains(errs, "creating vm "+c.name+" ("+id+")") {
			t.Errorf("create %s: the wait names %s, not the create's op id:\n%s", c.name, id, errs)
		}
		if a := answers.FindStringSubmatch(errs); a == nil || a[1] != strconv.Itoa(restarted) || a[2] != id || a[3] != c.name {
			t.Errorf("create %s does not tell of the new daemon (pid %d) asked for vm %s under %s:\n%s", c.name, restarted, c.name, id, errs)
		}
		if !strings.Contains(errs, "vm "+c.name+" is running: its guest agent answers ("+id+")") {
			t.Errorf("create %s does not tell of its VM's end:\n%s", c.name, errs)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	if pid := e.Status().PID; pid != restarted {
		t.Fatalf("the daemon changed again: pid %d, restarted as %d", pid, restarted)
	}
	for _, c := range creates {
		var info api.VMInfo
		e.JSON(&info, "vm", "show", c.name)
		if info.Runtime.State != "running" || !info.Alive || info.Handles == nil || info.Handles.PID != c.vmmPID {
			t.Errorf("vm %s after the restart: %s, VMM %+v; before the kill its VMM was pid %d", c.name, info.Runtime.State, info.Handles, c.vmmPID)
		}
		if r := e.MustBanger("vm", "exec", c.name, "--", "cat", "/etc/hostname"); r.Stdout != c.name+"\n" {
			t.Errorf("vm exec %s: hostname %q", c.name, r.Stdout)
		}
	}
	var rep api.VerifyReport
	if r := e.Banger("system", "verify", "-o", "json"); r.Code != 0 || json.Unmarshal([]byte(r.Stdout), &rep) != nil || !rep.OK || len(rep.Leaks) != 0 || rep.VMs != len(creates) {
		t.Fatalf("system verify with the five running: %+v\n%s", rep, r)
	}
	var tooks []string
	for _, c := range creates {
		tooks = append(tooks, fmt.Sprintf("%s %s", c.name, c.took.Round(100*time.Millisecond)))
	}
	t.Logf("what %s's CLI said:\n%s", creates[0].name, creates[0].errb.String())
	t.Logf("5 parallel creates: bangerd killed %s after the start, restarted by the test at %s (pid %d), %d CLIs following; each CLI ended: %s",
		killedAt.Round(100*time.Millisecond), restartedAt.Round(100*time.Millisecond), restarted, nFollowing, strings.Join(tooks, ", "))
	for _, c := range creates {
		e.MustBanger("vm", "delete", c.name)
	}
	verifyNoLeak(t, e)
}
