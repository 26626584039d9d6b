// Package integration drives the real banger and bangerd binaries, built
// once per test run, against a private state and runtime directory. It needs
// neither root nor VMs.
package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
)

var binDir string

// envBinDir passes the built binaries to a test re-run in a namespace.
const envBinDir = "BANGER_TEST_BIN_DIR"

func TestMain(m *testing.M) {
	if dir := os.Getenv(envBinDir); dir != "" {
		binDir = dir
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "banger-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// Other users (the unprivileged tests) run these binaries too.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	build := exec.Command("go", "build", "-o", dir+"/",
		"github.com/banger-dev/banger/cmd/banger",
		"github.com/banger-dev/banger/cmd/bangerd",
		"github.com/banger-dev/banger/cmd/banger-helper")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building binaries:", err)
		os.Exit(1)
	}
	binDir = dir
	os.Setenv(envBinDir, dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one isolated banger install.
type env struct {
	t        *testing.T
	root     string
	stateDir string
	runDir   string
	vars     []string
	// cred, when set, runs the CLI (and so the daemon it starts) as
	// another user.
	cred *syscall.Credential
}

func newEnv(t *testing.T) *env {
	t.Helper()
	// Short paths: unix socket names are limited to 108 bytes.
	root, err := os.MkdirTemp("", "bg-")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, root: root, stateDir: filepath.Join(root, "state"), runDir: filepath.Join(root, "run")}
	e.vars = append(os.Environ(),
		"BANGER_STATE_DIR="+e.stateDir,
		"BANGER_RUNTIME_DIR="+e.runDir,
		"BANGER_CONFIG="+filepath.Join(root, "config.toml"),
		"BANGER_HELPER_SOCKET="+filepath.Join(root, "no-helper.sock"),
		"BANGERD="+filepath.Join(binDir, "bangerd"),
	)
	t.Cleanup(func() {
		e.banger("daemon", "stop")
		// Whatever is left (a test that failed half way) is killed.
		if pid := e.lockPID(); pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		os.RemoveAll(root)
	})
	return e
}

type result struct {
	stdout, stderr string
	code           int
}

func (e *env) banger(args ...string) result {
	e.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "banger"), args...)
	cmd.Env = e.vars
	if e.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: e.cred}
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatalf("running banger %v: %v", args, err)
	}
	return result{stdout: out.String(), stderr: errb.String(), code: code}
}

func (e *env) status() api.DaemonStatus {
	e.t.Helper()
	r := e.banger("daemon", "status", "-o", "json")
	if r.code != 0 {
		e.t.Fatalf("daemon status exited %d: %s%s", r.code, r.stdout, r.stderr)
	}
	var st api.DaemonStatus
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		e.t.Fatalf("daemon status output: %v\n%s", err, r.stdout)
	}
	return st
}

func (e *env) lockPID() int {
	b, err := os.ReadFile(filepath.Join(e.stateDir, "bangerd.lock"))
	if err != nil {
		return 0
	}
	var pid int
	fmt.Sscanf(strings.TrimSpace(string(b)), "%d", &pid)
	return pid
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func TestStatusStartsDaemonAndKill9Recovers(t *testing.T) {
	e := newEnv(t)
	if r := e.banger("daemon", "stop"); r.code != 0 || !strings.Contains(r.stdout, "not running") {
		t.Fatalf("stop with no daemon: %+v", r)
	}

	st := e.status()
	if st.PID <= 0 || !alive(st.PID) {
		t.Fatalf("status reports pid %d, not alive", st.PID)
	}
	if st.Socket != filepath.Join(e.runDir, "bangerd.sock") || st.StateDir != e.stateDir {
		t.Fatalf("paths: %+v", st)
	}
	if st.SchemaVersion < 1 || st.DatabasePath != filepath.Join(e.stateDir, "state.db") {
		t.Fatalf("database: %+v", st)
	}
	fi, err := os.Stat(st.Socket)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v %v", fi.Mode(), err)
	}
	// The daemon runs in its own session, detached from the CLI.
	if sid, _ := getsid(st.PID); sid != st.PID {
		t.Fatalf("bangerd sid = %d, want its own session %d", sid, st.PID)
	}
	if again := e.status(); again.PID != st.PID {
		t.Fatalf("second status started another daemon: %d vs %d", again.PID, st.PID)
	}

	// kill -9: the next CLI call starts a fresh daemon.
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitDead(t, st.PID)
	st2 := e.status()
	if st2.PID == st.PID || !alive(st2.PID) {
		t.Fatalf("after kill -9: pid %d (old %d)", st2.PID, st.PID)
	}

	// A second bangerd refuses to start while one runs.
	cmd := exec.Command(filepath.Join(binDir, "bangerd"), "--log", "-")
	cmd.Env = e.vars
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || !strings.Contains(string(out), fmt.Sprintf("another bangerd (pid %d)", st2.PID)) {
		t.Fatalf("second bangerd: %v\n%s", err, out)
	}

	// stop ends it cleanly and removes the socket.
	if r := e.banger("daemon", "stop"); r.code != 0 {
		t.Fatalf("stop: %+v", r)
	}
	waitDead(t, st2.PID)
	if _, err := os.Stat(st2.Socket); !os.IsNotExist(err) {
		t.Fatalf("socket left after stop: %v", err)
	}
}

func TestSIGTERMShutsDownCleanly(t *testing.T) {
	e := newEnv(t)
	st := e.status()
	if err := syscall.Kill(st.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitDead(t, st.PID)
	logs := e.banger("daemon", "logs", "-o", "json")
	if !strings.Contains(logs.stdout, `"msg":"bangerd stopped"`) {
		t.Fatalf("no clean-stop line in log:\n%s", logs.stdout)
	}
}

func TestErrorsCarryOpIDIntoTheLog(t *testing.T) {
	e := newEnv(t)
	e.status()
	// An unknown log op id is a usage error, exit 2.
	if r := e.banger("daemon", "logs", "--op", "bogus"); r.code != 2 {
		t.Fatalf("bad --op: %+v", r)
	}
	// daemon status -o json: every daemon log line of that call has its op id.
	r := e.banger("daemon", "status")
	if r.code != 0 {
		t.Fatal(r)
	}
	logs := e.banger("daemon", "logs", "-o", "json")
	var ids []string
	for _, line := range strings.Split(strings.TrimSpace(logs.stdout), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line not JSON: %q", line)
		}
		if rec["msg"] == "rpc completed" && rec["method"] == "daemon.status" {
			id, _ := rec["op_id"].(string)
			if id == "" {
				t.Fatalf("rpc line without op id: %v", rec)
			}
			ids = append(ids, id)
		}
	}
	if len(ids) < 2 {
		t.Fatalf("want daemon.status lines for each call, got %v", ids)
	}
	// --op shows exactly the lines of one op.
	one := e.banger("daemon", "logs", "--op", ids[0], "-o", "json")
	for _, line := range strings.Split(strings.TrimSpace(one.stdout), "\n") {
		if !strings.Contains(line, `"op_id":"`+ids[0]+`"`) {
			t.Fatalf("--op %s printed a foreign line: %s", ids[0], line)
		}
	}
}

func waitDead(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		// The CLI that started it is gone, so init reaps it.
		if !alive(pid) || isZombie(pid) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("pid %d still alive", pid)
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] == 'Z'
}

func getsid(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+2:])
	var sid int
	_, err = fmt.Sscanf(f[3], "%d", &sid)
	return sid, err
}
