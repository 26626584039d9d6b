package imagebuild

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/testutil"
)

var (
	agentOnce sync.Once
	agentDir  string
	agentBin  string
)

// testAgent is a banger-agent built for this test process, in a
// directory every uid can read (the unprivileged build child copies it
// too); TestMain removes it.
func testAgent(t *testing.T) string {
	t.Helper()
	agentOnce.Do(func() {
		built := testutil.AgentBinary(t)
		dir, err := os.MkdirTemp("", "banger-agent-test-")
		if err != nil {
			t.Fatal(err)
		}
		os.Chmod(dir, 0o755)
		agentDir, agentBin = dir, filepath.Join(dir, "banger-agent")
		if err := copyExecutable(built, agentBin); err != nil {
			t.Fatal(err)
		}
		os.Chmod(agentBin, 0o755)
	})
	if agentBin == "" {
		t.Fatal("no banger-agent (its build failed above)")
	}
	return agentBin
}

// agentKey is the cache-key part of the test agent.
func agentKey(t *testing.T) string { return testutil.FileSHA256(t, testAgent(t)) }

// CheckAgent refuses what the guest could not run, saying how to fix it.
func TestCheckAgent(t *testing.T) {
	notELF := filepath.Join(t.TempDir(), "agent")
	os.WriteFile(notELF, []byte("#!/bin/sh\n"+strings.Repeat("x", 64)), 0o755)
	for path, want := range map[string]string{
		"":               "no banger-agent",
		notELF:           "bad magic",
		"/no/such/agent": "no such file",
		"/usr/bin/env":   "linked dynamically", // Debian's coreutils are dynamic
	} {
		err := CheckAgent(path)
		if err == nil || !strings.Contains(err.Error(), want) || rpc.HintOf(err) == "" {
			t.Errorf("CheckAgent(%q) = %v (hint %q), want %q", path, err, rpc.HintOf(err), want)
		}
	}
}
