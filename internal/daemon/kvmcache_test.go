package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/hostcheck"
)

// A fake qemu that counts its runs and prints the kernel's banner on the
// serial file it is given, as a guest booting under KVM would.
const fakeProbeQemu = `#!/bin/sh
echo run >> "$0.runs"
while [ $# -gt 0 ]; do
  case "$1" in -serial) f=${2#file:}; shift ;; esac
  shift
done
echo "Linux version 6.1 (fake)" > "$f"
exec sleep 5
`

func TestKVMVerdictRecorded(t *testing.T) {
	if r := hostcheck.ProbeKVM(); !r.Usable {
		t.Skipf("the boot probe runs only where the KVM API works: %s", r.Detail)
	}
	dir := t.TempDir()
	qemu := filepath.Join(dir, "qemu")
	if err := os.WriteFile(qemu, []byte(fakeProbeQemu), 0o755); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	runs := func() int {
		b, _ := os.ReadFile(qemu + ".runs")
		return strings.Count(string(b), "run")
	}
	d, _ := newTestDaemon(t, nil)
	d.cfg.Paths.Qemu = qemu
	ctx := context.Background()
	restart := func() { d.kvm = kvmCache{} } // a new bangerd, the same state dir

	if r, ok := d.kvmVerdict(ctx, kernel); !r.Usable || !ok || runs() != 1 {
		t.Fatalf("first verdict %+v confirmed=%v after %d qemu runs, want usable from one run", r, ok, runs())
	}
	restart()
	if r, ok := d.kvmVerdict(ctx, kernel); !r.Usable || !ok || runs() != 1 {
		t.Fatalf("after a restart: %+v confirmed=%v, %d qemu runs; want the recorded verdict, no new run", r, ok, runs())
	}
	// A rebuilt kernel is probed again.
	later := time.Now().Add(time.Minute)
	os.Chtimes(kernel, later, later)
	restart()
	if d.kvmVerdict(ctx, kernel); runs() != 2 {
		t.Fatalf("a changed kernel made %d qemu runs in all, want 2", runs())
	}
	// Doctor probes anew, record or not.
	d.kvm.mu.Lock()
	d.kvm.api, d.kvm.boot, d.kvm.fresh = nil, nil, true
	d.kvm.mu.Unlock()
	if d.kvmVerdict(ctx, kernel); runs() != 3 {
		t.Fatalf("a fresh probe made %d qemu runs in all, want 3", runs())
	}
	// A record from another host boot is not used.
	b, _ := os.ReadFile(d.kvmRecordPath())
	os.WriteFile(d.kvmRecordPath(), []byte(strings.Replace(string(b), `"boot_id":"`, `"boot_id":"x`, 1)), 0o600)
	restart()
	if d.kvmVerdict(ctx, kernel); runs() != 4 {
		t.Fatalf("a record of another boot: %d qemu runs in all, want 4", runs())
	}
}
