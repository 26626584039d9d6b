package harness

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/banger-dev/banger/internal/testutil"
)

// UserUID is the unprivileged user the end-to-end tier builds and boots as.
const UserUID = 65534

// EnsureUserImage returns a directory holding a default image built by an
// unprivileged bangerd (uid 65534, with no helper: builds need none),
// building it with `banger image build` on a cache miss. The CLI, and so
// the daemon it starts, run in a private mount namespace whose /etc is an
// overlay of the host's with /etc/subuid and /etc/subgid giving uid 65534
// a range of subordinate ids (the host's /etc, which may have neither
// file, stays as it is), then as uid 65534. Building needs
// the Debian mirror: call it before testutil.InNetNS.
func EnsureUserImage(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(testutil.ImageCacheDir, "e2e-user-"+ImageKey(t, "")[len("e2e-"):])
	if b := os.Getenv("BANGER_TEST_IMAGE_CACHE"); b != "" {
		dir = filepath.Join(b, filepath.Base(dir))
	}
	if _, err := os.Stat(filepath.Join(dir, ImageFiles[len(ImageFiles)-1])); err == nil {
		t.Logf("image cache hit: %s", dir)
		return dir
	}
	if os.Getenv(testutil.EnvNetNS) != "" {
		t.Fatalf("image cache %s missing inside the namespace; the parent test builds it", dir)
	}
	testutil.RequireTool(t, "unshare")
	testutil.RequireTool(t, "setpriv")
	e := NewEnv(t)
	for _, d := range []string{e.StateDir, e.RunDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, UserUID, UserUID); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(e.Root, 0o755)
	etc := filepath.Join(e.Root, "etc")
	for _, d := range []string{"upper", "work"} {
		if err := os.MkdirAll(filepath.Join(etc, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.Prefix = []string{"unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
		`mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/upper,workdir=$1/work" /etc &&
		 echo nobody:400000:65536 > /etc/subuid && echo nobody:400000:65536 > /etc/subgid &&
		 shift && exec setpriv --reuid=65534 --regid=65534 --clear-groups -- "$@"`,
		"sh", etc}
	e.Setenv("HOME="+e.Root, "USER=nobody")
	t.Logf("image cache miss: building %s with banger image build as uid %d (mmdebstrap --mode=unshare)", dir, UserUID)
	r := e.Banger("image", "build", "--name", "default")
	if r.Code != 0 {
		t.Fatalf("image build as uid %d: %s", UserUID, r)
	}
	t.Logf("image build as uid %d took %s", UserUID, r.Took)
	// Built as the user: the files are the user's.
	cacheImage(t, filepath.Join(e.StateDir, "images", "default"), dir, UserUID)
	return dir
}
