package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
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

// newClient is the one maker of the CLI's clients for bangerd. Each trusts
// only the user's own daemon: the runtime directory must pass
// paths.EnsureRuntimeDir (else every call fails with its refusal, without
// connecting), and the socket must be served by the user's uid or root
// (verifyDaemon). Both refusals are rpc.ErrForbidden, which no caller takes
// for "no daemon".
func (a *app) newClient() *rpc.Client {
	c := &rpc.Client{SocketPath: a.layout.DaemonSocket(), VerifyPeer: a.verifyDaemon}
	if err := a.layout.EnsureRuntime(); err != nil {
		c.Dial = func(context.Context) (net.Conn, error) { return nil, err }
	}
	return c
}

// verifyDaemon accepts a daemon socket served by the user's own uid or by
// root, and refuses any other with what to do.
func (a *app) verifyDaemon(cred rpc.PeerCred) error {
	me := uint32(os.Getuid())
	if rpc.PeerUIDs(me, 0)(cred) == nil {
		return nil
	}
	return rpc.WithHint(
		fmt.Errorf("it is served by uid %d (pid %d), not by you (uid %d) or root: this is not your bangerd, so banger sends it nothing", cred.UID, cred.PID, me),
		fmt.Sprintf("do not use that socket: remove it (rm %s), or point banger at a directory only you own (XDG_RUNTIME_DIR or BANGER_RUNTIME_DIR); then run the command again, and banger starts your own daemon",
			a.layout.DaemonSocket()))
}

// refused reports whether err is a refusal (of the runtime directory, of
// the socket's server, or of the socket's permissions): never a reason to
// start a daemon, nor a sign that none runs.
func refused(err error) bool { return errors.Is(err, rpc.ErrForbidden) }

// client returns a client for bangerd, starting the daemon when its socket
// does not answer.
func (a *app) client(ctx context.Context) (*rpc.Client, error) {
	c := a.newClient()
	err := ping(ctx, c)
	if err == nil {
		return c, nil
	}
	// A daemon that answers with an error is there, and a refused one is
	// not ours; anything else (no socket, a stale one, a connection reset
	// by a daemon dying right now) means start one. Losing the start race
	// to another is harmless.
	var er *rpc.ErrorResponse
	if errors.As(err, &er) || refused(err) {
		return nil, err
	}
	if err := a.startDaemon(ctx, c); err != nil {
		return nil, err
	}
	return c, nil
}

// existingClient returns a client only when bangerd already answers, or
// when the daemon's socket or directory is refused: then ok is true and the
// caller's call fails with the refusal, rather than taking it for no
// daemon.
func (a *app) existingClient(ctx context.Context) (*rpc.Client, bool) {
	c := a.newClient()
	err := ping(ctx, c)
	return c, err == nil || refused(err)
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
		if errors.As(err, &er) || refused(err) {
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
	c := a.newClient()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		err := ping(ctx, c)
		if err != nil && (rpc.IsUnreachable(err) || errors.Is(err, context.DeadlineExceeded)) {
			return nil
		}
		if refused(err) {
			return err
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
