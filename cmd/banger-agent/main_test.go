package main

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/testutil"
)

// The agent goes into every image: it must stay small and must not pull in
// the host's daemon, store, CLI or network plumbing. netlink (and its
// netns) is the one exception, for identity's MAC, address and routes.
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
	if !slices.Contains(deps, "github.com/banger-dev/banger/internal/agent/agentd") {
		t.Fatalf("go list output looks wrong: %q", deps)
	}
	for _, d := range deps {
		for _, bad := range []string{
			"github.com/banger-dev/banger/internal/daemon",
			"github.com/banger-dev/banger/internal/store",
			"github.com/banger-dev/banger/internal/cli",
			"github.com/banger-dev/banger/internal/config",
			"github.com/banger-dev/banger/internal/helper",
			"github.com/banger-dev/banger/internal/runner",
			"github.com/spf13/cobra",
			"modernc.org/sqlite",
			"github.com/google/nftables",
			"github.com/mdlayher/netlink",
		} {
			if d == bad || strings.HasPrefix(d, bad+"/") {
				t.Errorf("banger-agent depends on %s", d)
			}
		}
		// Outside the standard library, only these.
		if strings.Contains(strings.SplitN(d, "/", 2)[0], ".") &&
			!strings.HasPrefix(d, "github.com/banger-dev/banger/") && !strings.HasPrefix(d, "golang.org/x/sys/") &&
			d != "github.com/hashicorp/yamux" && d != "github.com/creack/pty" &&
			d != "github.com/vishvananda/netlink" && d != "github.com/vishvananda/netlink/nl" &&
			d != "github.com/vishvananda/netns" {
			t.Errorf("banger-agent depends on %s", d)
		}
	}
}

func TestParseFlags(t *testing.T) {
	var stderr bytes.Buffer
	o, v, err := parseFlags([]string{"-listen", "unix:/tmp/a.sock", "-wait", "5s", "-ready", "/run/x.done"}, &stderr)
	if err != nil || v || o.listen != "unix:/tmp/a.sock" || o.wait != 5*time.Second || o.ready != "/run/x.done" {
		t.Errorf("%+v %v %v", o, v, err)
	}
	if o, _, err := parseFlags([]string{"-port", "/dev/vport0p1"}, &stderr); err != nil || o.port != "/dev/vport0p1" || o.wait != 30*time.Second {
		t.Errorf("%+v %v", o, err)
	}
	for _, bad := range [][]string{
		{"-listen", "tcp:1024"}, {"-listen", "vsock:x"}, {"-listen", "vsock:0"}, {"-listen", "unix:"},
		{"-port", "/dev/x", "-listen", "vsock:1"}, {"-wait", "0s"}, {"extra"}, {"-ssh"},
	} {
		if _, _, err := parseFlags(bad, &stderr); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestVersionFlag(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"-version"}, &stdout, &stderr); code != 0 || !strings.HasPrefix(stdout.String(), "banger-agent ") ||
		!strings.Contains(stdout.String(), "(protocol 1)") {
		t.Errorf("-version: %d %q %q", code, stdout.String(), stderr.String())
	}
	if code := run([]string{"-bogus"}, &stdout, &stderr); code != 2 {
		t.Errorf("a bad flag: exit %d", code)
	}
}

// The real binary, built static as the image gets it, serves a session on
// a unix socket and stops on SIGTERM.
func TestBinary(t *testing.T) {
	goBin := testutil.RequireTool(t, "go")
	dir := t.TempDir()
	bin := filepath.Join(dir, "banger-agent")
	build := exec.Command(goBin, "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("banger-agent is dynamically linked")
		}
	}
	f.Close()

	sock := filepath.Join(dir, "agent.sock")
	ready := filepath.Join(dir, "init.done")
	cmd := exec.Command(bin, "-listen", "unix:"+sock, "-ready", ready)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{}) // closed when the process is reaped
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	})

	// It does not serve before its ready file exists.
	time.Sleep(200 * time.Millisecond)
	if _, err := os.Stat(sock); err == nil {
		t.Error("the agent serves before its ready file exists")
	}
	os.WriteFile(ready, nil, 0o644)
	var conn net.Conn
	deadline := time.Now().Add(30 * time.Second)
	for {
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent does not listen: %v\n%s", err, stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	s, err := agent.Dial(conn)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Time{})
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := s.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	status, err := agent.Exec(ctx, st, agent.ExecRequest{Argv: []string{"sh", "-c", "echo $TERM; exit 5"}}, agent.ExecIO{Stdout: &out})
	st.Close()
	if err != nil || status.Code != 5 || out.String() != "dumb\n" {
		t.Errorf("exec: %+v %q %v", status, out.String(), err)
	}
	s.Close()

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", waitErr, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
	for _, want := range []string{`"msg":"agent starting"`, `"msg":"agent ready"`, `"msg":"agent serving"`, `"op":"exec"`, `"msg":"agent stopped"`} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, stderr.String())
		}
	}
}
