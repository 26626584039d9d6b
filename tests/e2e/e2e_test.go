// Package e2e is the end-to-end tier: the real CLI, daemon and root helper
// boot real VMs under qemu, inside a network namespace each test creates
// (testutil.InNetNS), so every bridge, TAP, guest address and packet lives
// and dies there. It needs root and BANGER_E2E=1 (make test-e2e sets it).
//
// The image is built once with `banger image build` in the host's network
// namespace (debootstrap needs the mirror) and cached under
// /var/cache/banger-test/images/e2e-<key>, key = testutil.GuestImageKey of
// everything that goes into it; each test imports it into its own install.
package e2e

import (
	"os"
	"testing"

	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/tests/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

func requireE2E(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	if os.Getenv("BANGER_E2E") != "1" && os.Getenv(testutil.EnvNetNS) == "" {
		t.Skip("end-to-end tier: set BANGER_E2E=1 (make test-e2e) to boot real VMs")
	}
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img", "mmdebstrap", "mke2fs", "debugfs", "resize2fs", "ssh", "ssh-keygen"} {
		testutil.RequireTool(t, tool)
	}
}

func ensureImage(t *testing.T) string { return harness.EnsureImage(t) }
