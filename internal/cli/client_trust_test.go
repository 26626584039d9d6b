package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/rpc"
)

// testApp is an app whose runtime directory is rt, with BANGERD set to a
// script that leaves a marker if the CLI ever tries to start a daemon.
func testApp(t *testing.T, rt string) (*app, *bytes.Buffer, string) {
	t.Helper()
	base := t.TempDir()
	marker := filepath.Join(base, "daemon-started")
	script := filepath.Join(base, "bangerd")
	if err := os.WriteFile(script, []byte("#!/bin/sh\ntouch "+marker+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("BANGERD", script)
	var out bytes.Buffer
	a := &app{stdout: &out, stderr: &out, output: "text", opID: op.New(),
		layout: paths.Layout{StateDir: filepath.Join(base, "state"), RuntimeDir: rt}}
	return a, &out, marker
}

func ctxFor(t *testing.T, a *app) context.Context {
	ctx, cancel := context.WithTimeout(op.With(context.Background(), a.opID), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// A runtime directory others may write in is refused by every client the
// CLI makes; the refusal is never taken for "no daemon": nothing starts
// one, and the error says what to do, with the op id, exit 8.
func TestClientRefusesBadRuntimeDir(t *testing.T) {
	rt := filepath.Join(t.TempDir(), "rt")
	if err := os.Mkdir(rt, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(rt, 0o757); err != nil { // refused for users and root alike
		t.Fatal(err)
	}
	a, out, marker := testApp(t, rt)
	ctx := ctxFor(t, a)

	_, err := a.client(ctx)
	if !errors.Is(err, rpc.ErrForbidden) || !strings.Contains(err.Error(), rt) {
		t.Fatalf("client: %v", err)
	}
	c, ok := a.existingClient(ctx)
	if !ok {
		t.Fatal("existingClient took the refusal for no daemon")
	}
	if err := c.Call(ctx, api.MethodDaemonStop, nil, nil); !errors.Is(err, rpc.ErrForbidden) {
		t.Fatalf("call through existingClient: %v", err)
	}
	start := time.Now()
	if err := a.waitGone(ctx, 5*time.Second); !errors.Is(err, rpc.ErrForbidden) || time.Since(start) > time.Second {
		t.Fatalf("waitGone: %v after %s", err, time.Since(start))
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatal("the CLI tried to start a daemon")
	}
	if _, err := os.Stat(a.layout.StateDir); !os.IsNotExist(err) {
		t.Fatal("the CLI made its state directory")
	}
	if fi, _ := os.Stat(rt); fi.Mode().Perm() != 0o757 {
		t.Fatalf("mode changed: %v", fi.Mode())
	}

	if code := a.printError(err); code != ExitForbidden {
		t.Fatalf("exit %d, want %d", code, ExitForbidden)
	}
	for _, want := range []string{"banger: runtime directory " + rt, "code:  forbidden", "op id: " + a.opID, "hint:  ", rt + ", and remove what you did not put there"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// A daemon socket served by the user's own uid is trusted; the runtime
// directory is made 0700 when missing.
func TestClientTrustsOwnDaemon(t *testing.T) {
	rt := filepath.Join(t.TempDir(), "rt")
	a, _, marker := testApp(t, rt)
	if err := a.layout.EnsureRuntime(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(rt); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("runtime dir: %v %v", fi, err)
	}
	ln, err := net.Listen("unix", a.layout.DaemonSocket())
	if err != nil {
		t.Fatal(err)
	}
	srv := rpc.NewServer("", slog.New(slog.NewTextHandler(io.Discard, nil)))
	rpc.Register(srv, api.MethodDaemonPing, func(context.Context, struct{}) (api.Ping, error) { return api.Ping{PID: os.Getpid()}, nil })
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(sctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })

	ctx := ctxFor(t, a)
	c, err := a.client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var p api.Ping
	if err := c.Call(ctx, api.MethodDaemonPing, nil, &p); err != nil || p.PID != os.Getpid() {
		t.Fatalf("ping: %+v %v", p, err)
	}
	if c.VerifyPeer == nil {
		t.Fatal("the CLI's client does not check its peer")
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatal("started a daemon although one answered")
	}
}

// The CLI's peer rule: the user's uid or root; anyone else is refused with
// who serves the socket and what to do.
func TestVerifyDaemon(t *testing.T) {
	a, _, _ := testApp(t, "/nonexistent/rt")
	me := uint32(os.Getuid())
	for _, uid := range []uint32{me, 0} {
		if err := a.verifyDaemon(rpc.PeerCred{UID: uid, PID: 1}); err != nil {
			t.Errorf("uid %d refused: %v", uid, err)
		}
	}
	other := me + 60001
	err := a.verifyDaemon(rpc.PeerCred{UID: other, PID: 4242})
	if err == nil {
		t.Fatal("another uid accepted")
	}
	for _, want := range []string{fmt.Sprintf("served by uid %d (pid 4242)", other), fmt.Sprintf("not by you (uid %d) or root", me), "not your bangerd"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message lacks %q: %v", want, err)
		}
	}
	if h := rpc.HintOf(err); !strings.Contains(h, "rm "+a.layout.DaemonSocket()) || !strings.Contains(h, "XDG_RUNTIME_DIR") {
		t.Errorf("hint: %q", h)
	}
}
