package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/model"
)

// TestAllocateDistinctIPsConcurrently: concurrent creates never share an
// address, skip the gateway, and a deleted VM's address is handed out again.
func TestAllocateDistinctIPsConcurrently(t *testing.T) {
	d, _ := newTestDaemon(t, nil)
	ctx := context.Background()
	const n = 30
	vms := make([]model.VM, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vms[i], errs[i] = d.allocateVM(ctx, api.VMCreateParams{Name: fmt.Sprintf("vm%d", i), Image: "default", VCPUs: 1, MemoryMiB: 128, DiskSizeBytes: 64 << 20})
		}()
	}
	wg.Wait()
	seen := map[string]string{}
	gw := d.cfg.Subnet().Addr().Next().String()
	for i, vm := range vms {
		if errs[i] != nil {
			t.Fatalf("allocate %d: %v", i, errs[i])
		}
		ip := vm.Runtime.GuestIP
		if ip == gw || !d.cfg.Subnet().Contains(netip.MustParseAddr(ip)) {
			t.Fatalf("%s got %s (gateway %s, subnet %s)", vm.Name, ip, gw, d.cfg.Network.Subnet)
		}
		if other, dup := seen[ip]; dup {
			t.Fatalf("%s and %s share %s", vm.Name, other, ip)
		}
		seen[ip] = vm.Name
		if vm.Runtime.MAC != macFor(vm.ID) || vm.Runtime.VSockCID < 3 {
			t.Fatalf("identity of %s: %+v", vm.Name, vm.Runtime)
		}
	}
	// Freed on delete, then reused (lowest first).
	if err := d.store.DeleteVM(ctx, vms[0].ID); err != nil {
		t.Fatal(err)
	}
	again, err := d.allocateVM(ctx, api.VMCreateParams{Name: "again", Image: "default", VCPUs: 1, MemoryMiB: 128, DiskSizeBytes: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if again.Runtime.GuestIP != vms[0].Runtime.GuestIP {
		t.Fatalf("freed %s, got %s", vms[0].Runtime.GuestIP, again.Runtime.GuestIP)
	}
}

func TestMACFromID(t *testing.T) {
	if got := macFor("0a1b2c3d4e5f6071"); got != "02:0a:1b:2c:3d:4e" {
		t.Fatalf("mac %s", got)
	}
}
