package harness

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/testutil"
)

// ImageFiles are the files of a built image the cache keeps.
var ImageFiles = []string{"rootfs.ext4", "work-seed.ext4", "vmlinuz", "initrd.img"}

// ImageKey is the cache key of an image of the variant ("" is the default,
// lean) as `banger image build` makes it on this host (config defaults:
// bookworm, the host's mirror).
func ImageKey(t testing.TB, variant string) string {
	mirror, security, err := testutil.DebianMirror("bookworm")
	if err != nil {
		t.Fatal(err)
	}
	prefix := "e2e-"
	if variant != "" && variant != guest.VariantLean {
		prefix += variant + "-"
	}
	return prefix + testutil.GuestImageKey("bookworm", mirror, security, guest.BasePackages, testutil.FileSHA256(t, filepath.Join(BinDir, "banger-agent")))
}

// EnsureImage returns a directory holding a built default image, building
// it with `banger image build` on a cache miss. Building needs the Debian
// mirror, so it must run in the host's network namespace: call it before
// testutil.InNetNS.
func EnsureImage(t *testing.T) string { return EnsureImageVariant(t, "") }

// EnsureImageVariant is EnsureImage for an image variant (guest.Variant*).
func EnsureImageVariant(t *testing.T, variant string) string {
	t.Helper()
	base := testutil.ImageCacheDir
	if b := os.Getenv("BANGER_TEST_IMAGE_CACHE"); b != "" {
		base = b // as testutil.CachedImage: a cache of one's own forces a fresh build
	}
	dir := filepath.Join(base, ImageKey(t, variant))
	complete := true
	for _, f := range ImageFiles {
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
	t.Logf("image cache miss: building %s with banger image build (mmdebstrap as the root daemon, no helper; under a minute)", dir)
	e := NewEnv(t)
	defer e.KillHelper()
	args := []string{"image", "build", "--name", "default"}
	if variant != "" {
		args = append(args, "--variant", variant)
	}
	r := e.Banger(args...)
	if r.Code != 0 {
		t.Fatalf("image build: %s", r)
	}
	t.Logf("image build took %s", r.Took)
	cacheImage(t, filepath.Join(e.StateDir, "images", "default"), dir, -1)
	return dir
}

// cacheImage moves the files of the image in src into the cache entry dir
// (replacing it), readable by everyone since unprivileged installs import
// them too. With uid >= 0 each file must be owned by that uid.
func cacheImage(t *testing.T, src, dir string, uid int) {
	t.Helper()
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range ImageFiles {
		from := filepath.Join(src, f)
		st, err := os.Stat(from)
		if err != nil {
			t.Fatal(err)
		}
		if owner := st.Sys().(*syscall.Stat_t).Uid; uid >= 0 && owner != uint32(uid) {
			t.Fatalf("%s is owned by uid %d, want %d", from, owner, uid)
		}
		dst := filepath.Join(tmp, f)
		if err := os.Rename(from, dst); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dst, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
}

// KillHelper stops the helper a root bangerd of this install started (it
// outlives bangerd, like the VMMs).
func (e *Env) KillHelper() {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	v, err := helperapi.NewClient(e.HelperSock).Version(ctx)
	if err != nil {
		return
	}
	_ = syscall.Kill(v.PID, syscall.SIGTERM)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && Alive(v.PID) {
		time.Sleep(20 * time.Millisecond)
	}
}
