package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/testutil"
)

// The helper binary must not pull in the daemon, the store, the CLI or
// SQLite: its code is what a security reviewer reads.
func TestDeps(t *testing.T) {
	goBin := testutil.RequireTool(t, "go")
	out, err := exec.Command(goBin, "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "github.com/banger-dev/banger/internal/helper") {
		t.Fatalf("go list output looks wrong: %q", deps)
	}
	for _, d := range deps {
		for _, bad := range []string{
			"github.com/banger-dev/banger/internal/store",
			"github.com/banger-dev/banger/internal/daemon",
			"github.com/banger-dev/banger/internal/cli",
			"github.com/banger-dev/banger/internal/config",
			// It builds no image and runs no command.
			"github.com/banger-dev/banger/internal/imagebuild",
			"github.com/banger-dev/banger/internal/image",
			"github.com/banger-dev/banger/internal/guest",
			"github.com/banger-dev/banger/internal/disk",
			"github.com/banger-dev/banger/internal/runner",
			"modernc.org/sqlite",
			"github.com/spf13/cobra",
		} {
			if d == bad || strings.HasPrefix(d, bad+"/") {
				t.Errorf("banger-helper depends on %s", d)
			}
		}
	}
}

func TestParseFlags(t *testing.T) {
	var stderr bytes.Buffer
	o, v, err := parseFlags([]string{
		"--socket", "/run/x/h.sock", "--socket-mode", "0600", "--grants", "/etc/x.json", "--state-file", "/var/lib/x/s.json",
		"--log", "/var/log/banger/helper.log", "--log-level", "debug",
	}, &stderr)
	if err != nil || v {
		t.Fatal(err, v)
	}
	if o.Socket != "/run/x/h.sock" || o.SocketMode != 0o600 || o.GrantsFile != "/etc/x.json" || o.StateFile != "/var/lib/x/s.json" ||
		o.LogFile != "/var/log/banger/helper.log" || o.LogLevel != -4 {
		t.Errorf("options %+v", o)
	}
	d, _, err := parseFlags(nil, &stderr)
	if err != nil || d.Socket != "/run/banger/helper.sock" || d.SocketMode != 0o666 || d.GrantsFile != helperapi.DefaultGrantsFile ||
		d.StateFile != helperapi.DefaultStateFile || d.LogFile != "" {
		t.Errorf("defaults %+v, %v", d, err)
	}
	for _, bad := range [][]string{
		{"--allow-uid", "1000"}, {"--state-dir", "/x"}, {"--socket-mode", "999"},
		{"--socket-mode", "01777"}, {"--log-level", "loud"}, {"extra"},
	} {
		if _, _, err := parseFlags(bad, &stderr); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestVersionFlag(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"--version"}, &stdout, &stderr); code != 0 || !strings.HasPrefix(stdout.String(), "banger-helper ") {
		t.Errorf("--version: %d %q %q", code, stdout.String(), stderr.String())
	}
}

// The real binary: it serves on its socket, logs JSON with one line per
// call, and on SIGTERM stops cleanly and removes its socket.
func TestBinaryServesAndStops(t *testing.T) {
	testutil.RequireRoot(t)
	goBin := testutil.RequireTool(t, "go")
	dir := t.TempDir()
	bin := filepath.Join(dir, "banger-helper")
	if out, err := exec.Command(goBin, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "run", "helper.sock")
	logFile := filepath.Join(dir, "log", "helper.log")
	grants := filepath.Join(dir, "grants.json")
	if err := os.WriteFile(grants, []byte(`{"users": [{"user": "someone", "uid": 60201, "net": 1, "subnet": "10.231.40.0/24"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--socket", sock, "--socket-mode", "0660", "--grants", grants,
		"--state-file", filepath.Join(dir, "state", "state.json"), "--log", logFile)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() { err := cmd.Wait(); close(exited); done <- err }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	})

	c := helperapi.NewClient(sock)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var v helperapi.VersionResult
	var err error
	for {
		id := op.New()
		v, err = c.Version(op.With(ctx, id))
		if err == nil {
			break
		}
		if !rpc.IsUnreachable(err) || ctx.Err() != nil {
			t.Fatalf("version: %v (stderr %s)", err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v.PID != cmd.Process.Pid || !slices.Equal(v.Methods, helperapi.Methods) {
		t.Errorf("version %+v", v)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o660 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("socket %v, %v", fi.Mode(), err)
	}
	id := op.New()
	if err := c.Call(op.With(ctx, id), "loop.attach", map[string]any{"path": "/etc/shadow"}, nil); rpc.CodeOf(err) != rpc.CodeBadRequest {
		t.Errorf("loop.attach /etc/shadow: %v", err)
	}
	// A grants file anyone may write is refused at start.
	os.Chmod(grants, 0o666)
	if out, err := exec.Command(bin, "--socket", filepath.Join(dir, "other.sock"), "--grants", grants).CombinedOutput(); err == nil || !strings.Contains(string(out), "writable by root only") {
		t.Errorf("a world-writable grants file was accepted: %v %s", err, out)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v (stderr %s)", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}

	raw, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	var failed int
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		var l map[string]any
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("log line not JSON: %q", sc.Text())
		}
		msgs = append(msgs, l["msg"].(string))
		if l["op_id"] == id {
			failed++
			if l["msg"] != "helper rpc failed" || l["code"] != "bad_request" || l["method"] != "loop.attach" || l["component"] != "helper" {
				t.Errorf("refusal line %v", l)
			}
		}
	}
	if failed != 1 {
		t.Errorf("%d lines for %s, want 1", failed, id)
	}
	for _, want := range []string{"helper listening", "helper rpc completed", "helper stopped"} {
		if !slices.Contains(msgs, want) {
			t.Errorf("log lacks %q: %q", want, msgs)
		}
	}
}
