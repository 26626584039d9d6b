// Package testutil gates and isolates banger's root-tier tests.
//
//   - RequireRoot and RequireTool skip a test, with the reason, where it
//     cannot run.
//   - InNetNS runs the calling test again, alone, inside a fresh network
//     (and mount) namespace, so that every bridge, TAP, address and
//     nftables rule it makes lives and dies there, never on the host.
//
// Typical use:
//
//	func TestBridge(t *testing.T) {
//		if !testutil.InNetNS(t) {
//			return // the child ran the test; its output is in t.Log
//		}
//		// ... inside the namespace, as root ...
//	}
package testutil

import (
	"os"
	"os/exec"
	"testing"
)

// RequireRoot skips t unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("root tier: skipped in -short mode (the unit tier)")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: the root tier runs as root (sudo go test ./...) or in CI")
	}
}

// RequireTool skips t unless name is found in PATH, and returns its path.
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("needs %s, which is not in PATH", name)
	}
	return p
}
