package testutil

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// LoopsUnder lists the attached loop devices (/dev/loopN) whose backing file
// lies under dir, per /sys/block/loop*/loop/backing_file.
func LoopsUnder(t testing.TB, dir string) []string {
	t.Helper()
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		real = dir
	}
	names, _ := filepath.Glob("/sys/block/loop*")
	var out []string
	for _, n := range names {
		raw, err := os.ReadFile(filepath.Join(n, "loop", "backing_file"))
		if err != nil {
			continue
		}
		p := strings.TrimSuffix(strings.TrimSpace(string(raw)), " (deleted)")
		if p == real || strings.HasPrefix(p, real+"/") {
			out = append(out, "/dev/"+filepath.Base(n))
		}
	}
	return out
}

// NoLoopsUnder fails t if any loop device is still backed by a file under
// dir; register it with t.Cleanup after making dir.
func NoLoopsUnder(t testing.TB, dir string) {
	t.Helper()
	if left := LoopsUnder(t, dir); len(left) > 0 {
		t.Errorf("loop devices left attached to files under %s: %v", dir, left)
	}
}
