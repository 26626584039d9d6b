package imagebuild

import (
	"os"
	"testing"
)

// TestMain lets the test binary be the build's hook, as bangerd is: Build
// copies os.Executable() (this binary) and mmdebstrap runs the copy with
// EnvHook set. It is also the child of the root tests that build as an
// unprivileged user (childMain).
func TestMain(m *testing.M) {
	if IsHook() {
		os.Exit(RunHook())
	}
	if os.Getenv(envChild) != "" {
		os.Exit(childMain())
	}
	code := m.Run()
	if agentDir != "" {
		os.RemoveAll(agentDir)
	}
	os.Exit(code)
}
