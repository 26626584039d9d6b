package imagebuild

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// waitLog waits until the build log holds want.
func waitLog(t *testing.T, path, want string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the build log never said %q:\n%s", want, tail(string(b), 4000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A cancelled build stops at once: SIGTERM to mmdebstrap's process group,
// which removes its chroot; Build returns saying so, removes the output
// files, and leaves nothing in /var/tmp nor any process.
func TestBuildCancelRoot(t *testing.T) {
	requireBuildTools(t)
	mirror, _ := hostMirror(t)
	out := t.TempDir()
	logPath := filepath.Join(out, "build.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	agent := testAgent(t)
	before := tempEntries(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := Build(ctx, Spec{Suite: testSuite, Mirror: mirror}, Options{OutDir: out, Log: logf, LogPath: logPath, StopGrace: 20 * time.Second, Agent: agent})
		errc <- err
	}()
	waitLog(t, logPath, "I: downloading packages", 60*time.Second)
	start := time.Now()
	cancel()
	select {
	case err = <-errc:
	case <-time.After(60 * time.Second):
		t.Fatal("Build did not return after its context was cancelled")
	}
	took := time.Since(start)
	t.Logf("stopped in %s: %v", took.Round(10*time.Millisecond), err)
	if err == nil || !strings.Contains(err.Error(), "the build was stopped") || !strings.Contains(err.Error(), logPath) {
		t.Errorf("error %v", err)
	}
	log, _ := os.ReadFile(logPath)
	if !strings.Contains(string(log), "SIGTERM to its process group") || strings.Contains(string(log), "still running after") {
		t.Errorf("not stopped by SIGTERM alone:\n%s", tail(string(log), 3000))
	}
	if took > 20*time.Second {
		t.Errorf("stopping took %s", took)
	}
	if ents, _ := os.ReadDir(out); len(ents) != 1 {
		t.Errorf("left in the image dir: %v", ents)
	}
	checkNoLeftovers(t, before)
}

// bangerd killed in the middle of a build: mmdebstrap gets its
// parent-death SIGTERM, its hook cannot reach the dead Build and fails, and
// mmdebstrap removes its chroot; the work directory it leaves is swept by
// the next build.
func TestBuildDaemonDiesRoot(t *testing.T) {
	requireBuildTools(t)
	mirror, _ := hostMirror(t)
	u := newUserBuild(t, Spec{Suite: testSuite, Mirror: mirror})
	u.args.UID = 0
	os.Chown(u.args.OutDir, 0, 0)
	before := tempEntries(t)
	raw, _ := json.Marshal(u.args)
	cmd := exec.Command(u.args.Exe)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", envChild + "=build", envChildArgs + "=" + string(raw)}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(u.args.OutDir, "build.log")
	waitLog(t, logPath, "I: downloading packages", 60*time.Second)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	t.Log("the build's process is killed")

	deadline := time.Now().Add(3 * time.Minute)
	for len(buildProcesses()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("mmdebstrap still runs 3 minutes after its parent died: %v", buildProcesses())
		}
		time.Sleep(500 * time.Millisecond)
	}
	log, _ := os.ReadFile(logPath)
	if !strings.Contains(string(log), "==> hook: FAILED") || !strings.Contains(string(log), "I: removing tempdir") {
		t.Errorf("the hook did not fail, or mmdebstrap did not remove its chroot:\n%s", tail(string(log), 4000))
	}
	var left []string
	for _, e := range tempEntries(t) {
		if !slices.Contains(before, e) && strings.HasPrefix(filepath.Base(e), workPrefix) {
			left = append(left, e)
		}
	}
	if len(left) != 1 {
		t.Fatalf("work directories left: %q", left)
	}
	if ents, _ := filepath.Glob(filepath.Join(left[0], "mmdebstrap.*")); len(ents) > 0 {
		t.Errorf("mmdebstrap's chroot is left: %q", ents)
	}
	old := staleAge
	staleAge = 0
	defer func() { staleAge = old }()
	var sweepLog strings.Builder
	sweepStale(context.Background(), DefaultTempDir, &sweepLog)
	t.Logf("sweep: %s", sweepLog.String())
	if _, err := os.Stat(left[0]); !os.IsNotExist(err) {
		t.Errorf("the sweep left %s: %v", left[0], err)
	}
	checkNoLeftovers(t, before)
}
