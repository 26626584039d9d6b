package testutil

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/image"
)

// ImageCacheDir holds built guest images between test runs, one directory
// per key; BANGER_TEST_IMAGE_CACHE overrides it.
const ImageCacheDir = "/var/cache/banger-test/images"

// imageCacheComplete marks a cache entry whose build finished.
const imageCacheComplete = ".complete"

// DebianMirror returns the Debian mirror this host's apt uses for suite and
// its security mirror (image.HostMirror): tests build images from it, so
// they reach whatever mirror this host can reach and name no host.
func DebianMirror(suite string) (mirror, security string, err error) {
	return image.HostMirror(suite)
}

// GuestImageKey is the cache key of an image built by banger's builder from
// suite, mirror, security mirror, packages and the banger-agent binary it
// carries (agentSHA, its sha256): a hash of those, of every
// entry guest.Files() writes (path, mode, content, target), of the masked
// units, the initrd modules and guest.BuilderVersion. Any change to what an
// image would hold gives a new key; so does a change of builder (version 5
// is internal/imagebuild's mmdebstrap build: no image cached from the
// helper's debootstrap build is reused).
func GuestImageKey(suite, mirror, security string, packages []string, agentSHA string) string {
	h := sha256.New()
	put := func(s string) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	put("banger guest image")
	put(guest.BuilderVersion)
	put(suite)
	put(mirror)
	put(security)
	put(agentSHA)
	pk := slices.Clone(packages)
	slices.Sort(pk)
	put(strings.Join(pk, ","))
	// Both variants' files and removals: the stock image is cached under
	// the same key.
	for _, v := range []string{guest.VariantLean, guest.VariantStock} {
		for _, f := range guest.FilesFor(v) {
			put(f.Path)
			put(f.Mode.String())
			put(string(f.Content))
			put(f.Target)
		}
		put(strings.Join(guest.RemoveFor(v), ","))
	}
	put(strings.Join(guest.MaskedUnits, ","))
	put(strings.Join(guest.InitrdModules, ","))
	put(string(guest.InitrdInit(guest.InitrdModules)))
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// CachedImage returns the directory of the cached image of key, building
// it first when there is none: build fills the (empty) directory it is
// given, and the entry counts only when build returns without failing t.
// Concurrent test processes wait for one another (flock). A hit is logged
// as "cache hit"; callers check the image either way.
// BANGER_TEST_IMAGE_REBUILD=1 builds (and replaces) the entry regardless.
func CachedImage(t testing.TB, key string, build func(dir string)) string {
	t.Helper()
	base := os.Getenv("BANGER_TEST_IMAGE_CACHE")
	if base == "" {
		base = ImageCacheDir
	}
	if key == "" || strings.ContainsAny(key, "/.") {
		t.Fatalf("CachedImage: bad key %q", key)
	}
	dir := filepath.Join(base, key)
	rebuild := os.Getenv("BANGER_TEST_IMAGE_REBUILD") == "1"
	if complete(dir) && !rebuild {
		t.Logf("image cache hit: %s", dir)
		return dir
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatalf("image cache: %v", err)
	}
	lock, err := os.OpenFile(filepath.Join(base, key+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatalf("image cache: %v", err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatalf("image cache lock: %v", err)
	}
	defer unix.Flock(int(lock.Fd()), unix.LOCK_UN)
	if complete(dir) && !rebuild {
		t.Logf("image cache hit (built meanwhile by another run): %s", dir)
		return dir
	}
	os.RemoveAll(dir) // an incomplete entry
	tmp, err := os.MkdirTemp(base, key+".building-")
	if err != nil {
		t.Fatalf("image cache: %v", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	start := time.Now()
	t.Logf("image cache miss: building %s", dir)
	build(tmp)
	if t.Failed() {
		t.FailNow()
	}
	if err := os.WriteFile(filepath.Join(tmp, imageCacheComplete), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatalf("image cache: %v", err)
	}
	ok = true
	t.Logf("image cached in %s (build took %s)", dir, time.Since(start).Round(time.Second))
	return dir
}

func complete(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, imageCacheComplete))
	return err == nil
}
