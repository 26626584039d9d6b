package e2e

import (
	"strings"
	"sync"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/testutil"
)

// TestVMsByNameAndConcurrentCreates: three VMs created at once get distinct
// addresses; they resolve and ping each other by DNS name.
func TestVMsByNameAndConcurrentCreates(t *testing.T) {
	requireE2E(t)
	image := ensureImage(t)
	if !testutil.InNetNS(t) {
		return
	}
	e := newVMEnv(t, image)
	names := []string{"c1", "c2", "c3"}
	var wg sync.WaitGroup
	errs := make([]string, len(names))
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := e.Banger("vm", "create", "--name", n, "--vcpus", "1"); r.Code != 0 {
				errs[i] = r.String()
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != "" {
			t.Fatalf("create %s: %s", names[i], err)
		}
	}
	ips := map[string]string{}
	for _, n := range names {
		var info api.VMInfo
		e.JSON(&info, "vm", "show", n)
		if other, dup := ips[info.Runtime.GuestIP]; dup {
			t.Fatalf("%s and %s share %s", n, other, info.Runtime.GuestIP)
		}
		ips[info.Runtime.GuestIP] = n
	}
	// c1 resolves c2 through banger's DNS, and pings it by name.
	r := e.MustBanger("vm", "ssh", "c1", "--", "getent", "hosts", "c2.banger")
	var c2 api.VMInfo
	e.JSON(&c2, "vm", "show", "c2")
	if !strings.HasPrefix(r.Stdout, c2.Runtime.GuestIP+" ") {
		t.Fatalf("c1 resolves c2.banger as %q, want %s", r.Stdout, c2.Runtime.GuestIP)
	}
	e.MustBanger("vm", "ssh", "c1", "--", "ping", "-c", "1", "-W", "5", "c2.banger")
	e.MustBanger("vm", "ssh", "c3", "--", "ping", "-c", "1", "-W", "5", "c1.banger")
}
