package testutil

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/banger-dev/banger/internal/guest"
)

func TestGuestImageKey(t *testing.T) {
	k := GuestImageKey("bookworm", "http://m/debian", "", guest.BasePackages, "a")
	if len(k) != 32 || k != GuestImageKey("bookworm", "http://m/debian", "", guest.BasePackages, "a") {
		t.Fatalf("key %q not stable", k)
	}
	for _, other := range []string{
		GuestImageKey("trixie", "http://m/debian", "", guest.BasePackages, "a"),
		GuestImageKey("bookworm", "http://n/debian", "", guest.BasePackages, "a"),
		GuestImageKey("bookworm", "http://m/debian", "http://s/ds", guest.BasePackages, "a"),
		GuestImageKey("bookworm", "http://m/debian", "", append([]string{"vim"}, guest.BasePackages...), "a"),
		GuestImageKey("bookworm", "http://m/debian", "", guest.BasePackages, "b"),
	} {
		if other == k {
			t.Error("different inputs, same key")
		}
	}
}

func TestCachedImage(t *testing.T) {
	t.Setenv("BANGER_TEST_IMAGE_CACHE", t.TempDir())
	builds := 0
	build := func(dir string) {
		builds++
		os.WriteFile(filepath.Join(dir, "rootfs.ext4"), []byte("fs"), 0o644)
	}
	a := CachedImage(t, "k1", build)
	b := CachedImage(t, "k1", build)
	if a != b || builds != 1 {
		t.Errorf("dirs %q %q, %d builds", a, b, builds)
	}
	if got, _ := os.ReadFile(filepath.Join(a, "rootfs.ext4")); string(got) != "fs" {
		t.Errorf("content %q", got)
	}
}
