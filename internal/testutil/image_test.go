package testutil

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/banger-dev/banger/internal/guest"
)

func TestDebianMirror(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "debian.sources"), []byte(`Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://src.example/debian
Suites: trixie

Types: deb
URIs: http://security.example/debian-security
Suites:
 bookworm-security
Components: main
`), 0o644)
	m, s, err := debianMirror(dir, "bookworm")
	if err != nil || m != "http://mirror.example/debian" || s != "http://security.example/debian-security" {
		t.Errorf("bookworm: %q %q %v", m, s, err)
	}
	if _, _, err := debianMirror(dir, "trixie"); err == nil {
		t.Error("a deb-src stanza counted as a mirror")
	}
	if _, _, err := debianMirror(t.TempDir(), "bookworm"); err == nil {
		t.Error("no sources, yet a mirror")
	}
}

func TestGuestImageKey(t *testing.T) {
	k := GuestImageKey("bookworm", "http://m/debian", "", guest.BasePackages)
	if len(k) != 32 || k != GuestImageKey("bookworm", "http://m/debian", "", guest.BasePackages) {
		t.Fatalf("key %q not stable", k)
	}
	for _, other := range []string{
		GuestImageKey("trixie", "http://m/debian", "", guest.BasePackages),
		GuestImageKey("bookworm", "http://n/debian", "", guest.BasePackages),
		GuestImageKey("bookworm", "http://m/debian", "http://s/ds", guest.BasePackages),
		GuestImageKey("bookworm", "http://m/debian", "", append([]string{"vim"}, guest.BasePackages...)),
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
