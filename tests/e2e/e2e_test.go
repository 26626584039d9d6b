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
	"path/filepath"
	"testing"

	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/tests/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

var imageFiles = []string{"rootfs.ext4", "work-seed.ext4", "vmlinuz", "initrd.img"}

func requireE2E(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	if os.Getenv("BANGER_E2E") != "1" && os.Getenv(testutil.EnvNetNS) == "" {
		t.Skip("end-to-end tier: set BANGER_E2E=1 (make test-e2e) to boot real VMs")
	}
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img", "debootstrap", "mke2fs", "debugfs", "resize2fs", "ssh", "ssh-keygen"} {
		testutil.RequireTool(t, tool)
	}
}

// imageKey is the cache key of the default image as `banger image build`
// makes it on this host (config defaults: bookworm, the host's mirror).
func imageKey(t *testing.T) string {
	mirror, security, err := testutil.DebianMirror("bookworm")
	if err != nil {
		t.Fatal(err)
	}
	return "e2e-" + testutil.GuestImageKey("bookworm", mirror, security, guest.BasePackages)
}

// ensureImage returns a directory holding a built image, building it with
// banger in the host namespace on a cache miss. Call it before InNetNS.
func ensureImage(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(testutil.ImageCacheDir, imageKey(t))
	complete := true
	for _, f := range imageFiles {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			complete = false
		}
	}
	if complete {
		t.Logf("image cache hit: %s", dir)
		return dir
	}
	if os.Getenv(testutil.EnvNetNS) != "" {
		t.Fatalf("image cache %s missing inside the namespace; the parent test builds it", dir)
	}
	t.Logf("image cache miss: building %s with banger image build (about two minutes)", dir)
	e := harness.NewEnv(t)
	defer killHelper(e)
	r := e.Banger("image", "build", "--name", "default")
	if r.Code != 0 {
		t.Fatalf("image build: %s", r)
	}
	t.Logf("image build took %s", r.Took)
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range imageFiles {
		dst := filepath.Join(tmp, f)
		if err := os.Rename(filepath.Join(e.StateDir, "images", "default", f), dst); err != nil {
			t.Fatal(err)
		}
		// Unprivileged installs import it too.
		if err := os.Chmod(dst, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	return dir
}
