package image

import (
	"os"
	"path/filepath"
	"testing"
)

func TestHostMirror(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "sources.list.d"), 0o755)
	os.WriteFile(filepath.Join(dir, "sources.list.d", "debian.sources"), []byte(`Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
`), 0o644)
	m, s, err := hostMirror(dir, "bookworm")
	if err != nil || m != "http://mirror.example/debian" || s != "http://security.example/debian-security" {
		t.Fatalf("deb822: %q %q %v", m, s, err)
	}
	if _, _, err := hostMirror(dir, "trixie"); err == nil {
		t.Fatal("found a mirror for a suite not listed")
	}

	dir2 := t.TempDir()
	os.WriteFile(filepath.Join(dir2, "sources.list"), []byte("deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian trixie main\ndeb http://s.example/ds trixie-security main\n"), 0o644)
	m, s, err = hostMirror(dir2, "trixie")
	if err != nil || m != "http://m.example/debian" || s != "http://s.example/ds" {
		t.Fatalf("one-line: %q %q %v", m, s, err)
	}
}

func TestHostMirrorDeb822Continuation(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "sources.list.d"), 0o755)
	os.WriteFile(filepath.Join(dir, "sources.list.d", "debian.sources"), []byte(`Types: deb
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
	m, s, err := hostMirror(dir, "bookworm")
	if err != nil || m != "http://mirror.example/debian" || s != "http://security.example/debian-security" {
		t.Errorf("bookworm: %q %q %v", m, s, err)
	}
	if _, _, err := hostMirror(dir, "trixie"); err == nil {
		t.Error("a deb-src stanza counted as a mirror")
	}
	if _, _, err := hostMirror(t.TempDir(), "bookworm"); err == nil {
		t.Error("no sources, yet a mirror")
	}
}
