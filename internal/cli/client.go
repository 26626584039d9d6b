package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
)

// daemonStartTimeout bounds how long the CLI waits for a bangerd it started.
const daemonStartTimeout = 15 * time.Second

// client returns a client for bangerd, starting the daemon when its socket
// does not answer.
func (a *app) client(ctx context.Context) (*rpc.Client, error) {
	c := rpc.NewClient(a.layout.DaemonSocket())
	err := ping(ctx, c)
	if err == nil {
		return c, nil
	}
	// A daemon that answers with an error is there; anything else (no
	// socket, a stale one, a connection reset by a daemon dying right now)
	// means start one. Losing the start race to another is harmless.
	var er *rpc.ErrorResponse
	if errors.As(err, &er) {
		return nil, err
	}
	if err := a.startDaemon(ctx, c); err != nil {
		return nil, err
	}
	return c, nil
}

// existingClient returns a client only when bangerd already answers.
func (a *app) existingClient(ctx context.Context) (*rpc.Client, bool) {
	c := rpc.NewClient(a.layout.DaemonSocket())
	return c, ping(ctx, c) == nil
}

func ping(ctx context.Context, c *rpc.Client) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return c.Call(ctx, api.MethodDaemonPing, nil, nil)
}

// startDaemon launches bangerd detached (its own session, stdin from
// /dev/null, output appended to its log file) and waits until it answers.
func (a *app) startDaemon(ctx context.Context, c *rpc.Client) error {
	bin, err := findBangerd()
	if err != nil {
		return err
	}
	if err := a.layout.Ensure(); err != nil {
		return err
	}
	logPath := a.layout.DaemonLog()
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("opening daemon log: %w", err)
	}
	defer logFile.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer devnull.Close()

	cmd := exec.Command(bin)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	deadline := time.Now().Add(daemonStartTimeout)
	var exitErr error
	for time.Now().Before(deadline) {
		err := ping(ctx, c)
		if err == nil {
			return nil
		}
		var er *rpc.ErrorResponse
		if errors.As(err, &er) {
			return err
		}
		select {
		case exitErr = <-exited:
			// It may have lost the lock race to another bangerd that a
			// concurrent CLI started; that one answers soon. Keep polling.
			exited = nil
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(25 * time.Millisecond):
		}
	}
	msg := fmt.Sprintf("bangerd (%s) did not answer on %s within %s", bin, a.layout.DaemonSocket(), daemonStartTimeout)
	if exitErr != nil {
		msg += fmt.Sprintf("; it exited: %v", exitErr)
	}
	return rpc.WithHint(fmt.Errorf("%s: %w", msg, rpc.ErrUnavailable),
		fmt.Sprintf("read its log: banger daemon logs (or %s)", logPath))
}

// findBangerd looks for the daemon binary: $BANGERD, then next to this
// executable, then in PATH.
func findBangerd() (string, error) {
	if p := os.Getenv("BANGERD"); p != "" {
		return p, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "bangerd")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	p, err := exec.LookPath("bangerd")
	if err != nil {
		return "", rpc.WithHint(fmt.Errorf("bangerd not found next to banger or in PATH: %w", rpc.ErrUnavailable),
			"install both binaries together: make install (or set BANGERD=/path/to/bangerd)")
	}
	return p, nil
}

// waitGone waits until nothing answers on the daemon socket.
func (a *app) waitGone(ctx context.Context, timeout time.Duration) error {
	c := rpc.NewClient(a.layout.DaemonSocket())
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if err := ping(ctx, c); err != nil && (rpc.IsUnreachable(err) || errors.Is(err, context.DeadlineExceeded)) {
			return nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	return fmt.Errorf("bangerd still answers on %s after %s: %w", a.layout.DaemonSocket(), timeout, rpc.ErrTimeout)
}

// call makes one call to bangerd, starting it when needed.
func (a *app) call(ctx context.Context, method string, params, result any) error {
	c, err := a.client(ctx)
	if err != nil {
		return err
	}
	return c.Call(ctx, method, params, result)
}
