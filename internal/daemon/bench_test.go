package daemon

import (
	"context"
	"fmt"
	"testing"

	"github.com/banger-dev/banger/internal/api"
)

// BenchmarkAllocateIP: picking the lowest free address with 200 taken.
func BenchmarkAllocateIP(b *testing.B) {
	d := benchDaemonWithVMs(b, 200)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := d.freeIP(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVMList200: the vm.list handler over 200 VMs (store read plus a
// liveness check each).
func BenchmarkVMList200(b *testing.B) {
	d := benchDaemonWithVMs(b, 200)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		list, err := d.vmList(ctx, noParams{})
		if err != nil || len(list) != 200 {
			b.Fatalf("%d %v", len(list), err)
		}
	}
}

func benchDaemonWithVMs(b *testing.B, n int) *Daemon {
	b.Helper()
	d, _ := newTestDaemon(b, nil)
	d.cfg.Network.Subnet = "10.80.0.0/16"
	ctx := context.Background()
	for i := 0; i < n; i++ {
		if _, err := d.allocateVM(ctx, api.VMCreateParams{Name: fmt.Sprintf("vm%d", i), Image: "default", VCPUs: 1, MemoryMiB: 128, DiskSizeBytes: 64 << 20}); err != nil {
			b.Fatal(err)
		}
	}
	return d
}
