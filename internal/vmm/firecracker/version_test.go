package firecracker

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/rpc"
)

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]Version{
		"1.16.1":                           {1, 16, 1, ""},
		"Firecracker v1.14.0\n\n":          {1, 14, 0, ""},
		"Firecracker v1.17.0-dev\n":        {1, 17, 0, "-dev"},
		"  v1.13.2  ":                      {1, 13, 2, ""},
		"Firecracker v1.16.1+fuzzing\nx\n": {1, 16, 1, "+fuzzing"},
	} {
		got, err := ParseVersion(in)
		if err != nil || got != want {
			t.Errorf("ParseVersion(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1.16", "1.16.x", "v1..1", "Firecracker", "1.16.1.2"} {
		if v, err := ParseVersion(in); err == nil {
			t.Errorf("ParseVersion(%q) = %+v, want an error", in, v)
		}
	}
	if !(Version{1, 13, 9, ""}).Less(MinVersion) || (Version{1, 14, 0, "-dev"}).Less(MinVersion) || !(Version{0, 99, 0, ""}).Less(MinVersion) {
		t.Error("Less")
	}
}

// Start asks the running Firecracker its version (GET /version) before
// configuring anything: one older than 1.14 has no PUT /serial, so it is
// refused, killed, and the error says what to do.
func TestStartRefusesOldFirecracker(t *testing.T) {
	for _, v := range []string{"1.13.1", "1.10.0"} {
		h := newHarness(t)
		h.api.version = v
		_, err := h.drv.Start(context.Background(), h.spec)
		if !IsTooOld(err) || !strings.Contains(err.Error(), "Firecracker "+v) || !strings.Contains(err.Error(), "1.14 or newer") {
			t.Fatalf("%s: err = %v, want a TooOldError", v, err)
		}
		if hint := rpc.HintOf(err); !strings.Contains(hint, "vmm = \"qemu\"") {
			t.Errorf("hint %q", hint)
		}
		if got := h.api.Calls(); !slices.Equal(got, []string{"GET /", "GET /version"}) {
			t.Errorf("calls %q: configured an old firecracker", got)
		}
		h.assertKilled()
	}
	h := newHarness(t)
	h.api.version = "1.14.0"
	if _, err := h.drv.Start(context.Background(), h.spec); err != nil {
		t.Fatalf("1.14.0: %v", err)
	}
}

// CheckVersion is doctor's check: it runs the binary's --version.
func TestCheckVersion(t *testing.T) {
	dir := t.TempDir()
	fc := func(name, out string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n[ \"$1\" = --version ] || exit 9\nprintf '"+out+"'\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ctx := context.Background()
	if p, v, err := CheckVersion(ctx, fc("new", `Firecracker v1.16.1\n\n`)); err != nil || v != (Version{1, 16, 1, ""}) || p != filepath.Join(dir, "new") {
		t.Fatalf("new: %s %v %v", p, v, err)
	}
	p, v, err := CheckVersion(ctx, fc("old", `Firecracker v1.12.1\n\n`))
	if !IsTooOld(err) || v != (Version{1, 12, 1, ""}) || p == "" {
		t.Fatalf("old: %s %v %v", p, v, err)
	}
	if _, _, err := CheckVersion(ctx, fc("odd", `firecracker, some build\n`)); err == nil || IsTooOld(err) {
		t.Fatalf("unparsable: %v", err)
	}
	if _, _, err := CheckVersion(ctx, filepath.Join(dir, "none")); err == nil {
		t.Fatal("a missing binary passed")
	}
}
