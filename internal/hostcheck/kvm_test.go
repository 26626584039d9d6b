package hostcheck

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"
)

// TestProbeKVM runs the real probe. Its verdict depends on the host, so the
// test checks that it reaches one and explains it; the device-absent case
// must never claim usability.
func TestProbeKVM(t *testing.T) {
	r := ProbeKVM()
	t.Logf("kvm: device=%v usable=%v: %s", r.DeviceExists, r.Usable, r.Detail)
	if r.Detail == "" {
		t.Fatal("probe gave no detail")
	}
	if _, err := os.Stat("/dev/kvm"); err != nil && (r.Usable || r.DeviceExists) {
		t.Fatalf("no /dev/kvm but probe says %+v", r)
	}
	if r.Usable && !r.DeviceExists {
		t.Fatalf("usable without a device: %+v", r)
	}
}

// TestProbeKVMBoot boots a real guest kernel when the test is given one
// (BANGER_TEST_KERNEL), so the verdict is the host's, not assumed.
func TestProbeKVMBoot(t *testing.T) {
	kernel := os.Getenv("BANGER_TEST_KERNEL")
	if kernel == "" {
		t.Skip("BANGER_TEST_KERNEL not set: no guest kernel to boot (make test-e2e sets it to the cached test image's kernel)")
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed")
	}
	r := ProbeKVMBoot(context.Background(), qemu, kernel, 8*time.Second)
	t.Logf("kvm boot: usable=%v: %s", r.Usable, r.Detail)
	if r.Detail == "" {
		t.Fatal("no detail")
	}
}
