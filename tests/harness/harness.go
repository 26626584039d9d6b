// Package harness drives the real banger, bangerd and banger-helper
// binaries for the integration and end-to-end tiers: it builds them once per
// test binary and gives each test a private install (state, runtime, config
// and helper socket in a temp directory).
package harness

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/helperapi"
)

// EnvBinDir passes the built binaries to a test re-run in a namespace.
const EnvBinDir = "BANGER_TEST_BIN_DIR"

// BinDir holds the binaries once Main has built them.
var BinDir string

// Main builds the binaries (unless a parent test process did) and runs m.
func Main(m *testing.M) {
	if dir := os.Getenv(EnvBinDir); dir != "" {
		BinDir = dir
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
	// banger-agent goes into images: static, as make build makes it.
	agent := exec.Command("go", "build", "-trimpath", "-o", dir+"/", "github.com/banger-dev/banger/cmd/banger-agent")
	agent.Env = append(os.Environ(), "CGO_ENABLED=0")
	agent.Stdout, agent.Stderr = os.Stderr, os.Stderr
	for _, b := range []*exec.Cmd{build, agent} {
		if err := b.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building binaries:", err)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	BinDir = dir
	os.Setenv(EnvBinDir, dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// Env is one isolated banger install.
type Env struct {
	T          *testing.T
	Root       string
	StateDir   string
	RunDir     string
	HelperSock string
	Vars       []string
	// Cred, when set, runs the CLI (and so the daemon it starts) as
	// another user.
	Cred *syscall.Credential
	// Prefix, when set, is the argv the CLI runs under (a wrapper that
	// ends by exec'ing its arguments).
	Prefix []string
}

// NewEnv makes a private install. Cleanup stops its daemon (and kills it if
// it will not stop) and removes the directory.
func NewEnv(t *testing.T) *Env {
	t.Helper()
	// Short paths: unix socket names are limited to 108 bytes.
	root, err := os.MkdirTemp("", "bg-")
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{T: t, Root: root, StateDir: filepath.Join(root, "state"), RunDir: filepath.Join(root, "run"),
		HelperSock: filepath.Join(root, "helper.sock")}
	e.Vars = append(os.Environ(),
		"BANGER_STATE_DIR="+e.StateDir,
		"BANGER_RUNTIME_DIR="+e.RunDir,
		"BANGER_CONFIG="+filepath.Join(root, "config.toml"),
		"BANGER_HELPER_SOCKET="+e.HelperSock,
		"BANGERD="+filepath.Join(BinDir, "bangerd"),
		"BANGER_HELPER="+filepath.Join(BinDir, "banger-helper"),
		"BANGER_AGENT="+filepath.Join(BinDir, "banger-agent"),
	)
	t.Cleanup(func() {
		e.Banger("daemon", "stop")
		if pid := e.LockPID(); pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		os.RemoveAll(root)
	})
	return e
}

// Setenv adds or replaces variables of the install's environment.
func (e *Env) Setenv(kv ...string) { e.Vars = append(e.Vars, kv...) }

// WriteConfig writes the install's config.toml.
func (e *Env) WriteConfig(toml string) {
	e.T.Helper()
	if err := os.WriteFile(filepath.Join(e.Root, "config.toml"), []byte(toml), 0o644); err != nil {
		e.T.Fatal(err)
	}
}

// Result is one CLI run.
type Result struct {
	Stdout, Stderr string
	Code           int
	Took           time.Duration
}

func (r Result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.Code, r.Stdout, r.Stderr)
}

// Command is the CLI with args, ready to run with the install's
// environment (and credentials and prefix), for a test that wires its own
// stdin, terminal or signals.
func (e *Env) Command(args ...string) *exec.Cmd {
	argv := append(append(slices.Clone(e.Prefix), filepath.Join(BinDir, "banger")), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = e.Vars
	if e.Cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: e.Cred}
	}
	return cmd
}

// Banger runs the CLI with args.
func (e *Env) Banger(args ...string) Result {
	e.T.Helper()
	cmd := e.Command(args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.T.Fatalf("running banger %v: %v", args, err)
	}
	return Result{Stdout: out.String(), Stderr: errb.String(), Code: code, Took: time.Since(start)}
}

// MustBanger runs the CLI and fails the test unless it exits 0.
func (e *Env) MustBanger(args ...string) Result {
	e.T.Helper()
	r := e.Banger(args...)
	if r.Code != 0 {
		e.T.Fatalf("banger %s: %s", strings.Join(args, " "), r)
	}
	return r
}

// JSON runs the CLI with -o json and decodes its output into v.
func (e *Env) JSON(v any, args ...string) {
	e.T.Helper()
	r := e.MustBanger(append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(r.Stdout), v); err != nil {
		e.T.Fatalf("banger %v output: %v\n%s", args, err, r.Stdout)
	}
}

// Status is banger daemon status -o json.
func (e *Env) Status() api.DaemonStatus {
	e.T.Helper()
	var st api.DaemonStatus
	e.JSON(&st, "daemon", "status")
	return st
}

// LockPID is the pid in the daemon's lock file, or 0.
func (e *Env) LockPID() int {
	b, err := os.ReadFile(filepath.Join(e.StateDir, "bangerd.lock"))
	if err != nil {
		return 0
	}
	var pid int
	fmt.Sscanf(strings.TrimSpace(string(b)), "%d", &pid)
	return pid
}

// Alive reports whether pid runs (zombies count as dead).
func Alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	return !IsZombie(pid)
}

// IsZombie reports whether pid has exited but not been reaped.
func IsZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] == 'Z'
}

// WaitDead waits until pid is gone.
func WaitDead(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if !Alive(pid) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("pid %d still alive", pid)
}

// LogLines reads a JSON log file into records.
func LogLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading log: %v", err)
	}
	var out []map[string]any
	for _, line := range bytes.Split(data, []byte("\n")) {
		var rec map[string]any
		if json.Unmarshal(line, &rec) == nil {
			out = append(out, rec)
		}
	}
	return out
}

// Helper is a banger-helper a test started, as root, the way the systemd
// unit does: its grants file, its owner records and its log in Dir.
type Helper struct {
	Dir, Socket, Log, StateFile string
	cmd                         *exec.Cmd
}

// StartHelper starts the real helper with grants (none: root only) on a
// socket in a directory of its own that every uid can reach, and stops it
// (SIGTERM) when t ends. The install's BANGER_HELPER_SOCKET points at it.
func (e *Env) StartHelper(grants ...helperapi.Grant) *Helper {
	e.T.Helper()
	h := &Helper{Dir: filepath.Join(e.Root, "helper")}
	h.Socket, h.Log, h.StateFile = filepath.Join(h.Dir, "helper.sock"), filepath.Join(h.Dir, "helper.log"), filepath.Join(h.Dir, "state", "state.json")
	if err := os.MkdirAll(h.Dir, 0o755); err != nil {
		e.T.Fatal(err)
	}
	os.Chmod(e.Root, 0o755)
	grantsFile := filepath.Join(h.Dir, "grants.json")
	if err := os.WriteFile(grantsFile, helperapi.Grants{Users: grants}.Marshal(), 0o644); err != nil {
		e.T.Fatal(err)
	}
	h.cmd = exec.Command(filepath.Join(BinDir, "banger-helper"), "--socket", h.Socket, "--socket-mode", "0666",
		"--grants", grantsFile, "--state-file", h.StateFile, "--log", h.Log)
	if err := h.cmd.Start(); err != nil {
		e.T.Fatal(err)
	}
	e.T.Cleanup(func() { h.cmd.Process.Signal(syscall.SIGTERM); h.cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(h.Socket); err == nil {
			break
		}
		if time.Now().After(deadline) {
			e.T.Fatalf("the helper did not make its socket %s; log:\n%s", h.Socket, readFile(h.Log))
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.Setenv("BANGER_HELPER_SOCKET=" + h.Socket)
	return h
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

// StageDetail is the detail of info's last boot stage called name, or "".
func StageDetail(info api.VMInfo, name string) string {
	for _, s := range info.Runtime.LastBoot {
		if s.Name == name {
			return s.Detail
		}
	}
	return ""
}
