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

func poolTaps() []string {
	var out []string
	for _, n := range linkNames() {
		if strings.HasPrefix(n, "tap-pool-") {
			out = append(out, n)
		}
	}
	return out
}

// TestTapPool: the pool fills after network up, a create takes a pooled
// TAP, delete gives it back, and a restarted daemon adopts the pool; verify
// counts pool TAPs as capacity, not leaks.
func TestTapPool(t *testing.T) {
	requireE2E(t)
	image := ensureImage(t)
	if !testutil.InNetNS(t) {
		return
	}
	e := newVMEnv(t, image)
	e.WriteConfig("[network]\nbridge = \"bangere2e\"\nsubnet = \"10.231.9.0/24\"\ntap_pool_size = 2\n[vm]\nmemory_mib = 512\ndisk_size = \"1G\"\nboot_timeout = \"240s\"\n")
	e.MustBanger("daemon", "stop")
	e.MustBanger("network", "up")
	waitPool(t, 2)

	e.MustBanger("vm", "create", "--name", "p1", "--vcpus", "1")
	var info api.VMInfo
	e.JSON(&info, "vm", "show", "p1")
	if !strings.HasPrefix(info.Handles.TapDevice, "tap-pool-") {
		t.Fatalf("create did not take a pooled TAP: %s", info.Handles.TapDevice)
	}
	var network string
	for _, s := range info.Runtime.LastBoot {
		if s.Name == "network" {
			network = s.Detail
		}
	}
	if !strings.Contains(network, "from the pool") {
		t.Fatalf("network stage: %q", network)
	}
	waitPool(t, 3) // refilled while p1 holds one

	// kill -9 the daemon: the new one adopts the idle pool and the VM.
	old := e.Status().PID
	syscall.Kill(old, syscall.SIGKILL)
	harness.WaitDead(t, old)
	var rep api.VerifyReport
	e.JSON(&rep, "system", "verify")
	if !rep.OK || rep.PoolTaps != 3 {
		t.Fatalf("verify after restart: %+v", rep)
	}
	e.MustBanger("vm", "delete", "p1")
	// The pool is full (2 idle): the returned TAP is deleted.
	waitPool(t, 2)
	e.JSON(&rep, "system", "verify")
	if !rep.OK {
		t.Fatalf("verify: %+v", rep)
	}
	e.MustBanger("network", "down")
	if taps := poolTaps(); len(taps) != 0 {
		t.Fatalf("pool TAPs left after network down: %v", taps)
	}
}

func waitPool(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for len(poolTaps()) != n {
		if time.Now().After(deadline) {
			t.Fatalf("pool has %v, want %d TAPs", poolTaps(), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
