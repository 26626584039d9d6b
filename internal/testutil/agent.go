package testutil

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// AgentBinary builds banger-agent (static: CGO_ENABLED=0, as make build
// does) into a temp dir of t's and returns its path. The go tool's build
// cache makes every call after the first cheap.
func AgentBinary(t testing.TB) string {
	t.Helper()
	goBin := RequireTool(t, "go")
	out := filepath.Join(t.TempDir(), "banger-agent")
	cmd := exec.Command(goBin, "build", "-trimpath", "-o", out, "github.com/banger-dev/banger/cmd/banger-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building banger-agent: %v\n%s", err, b)
	}
	return out
}

// FileSHA256 is the hex sha256 of a file's content (for cache keys).
func FileSHA256(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
