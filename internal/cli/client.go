package cli

import (
	"context"
	"encoding/json"
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

// daemonReturnTimeout bounds how long a CLI following an operation waits
// for a daemon to answer again after its own went away (starting one, as
// any call does when none runs): several daemonStartTimeouts, for a new
// daemon whose start reconciles many VMs on a loaded host.
const daemonReturnTimeout = 60 * time.Second

// reconnect is how awaitDaemon gets a daemon back: the bound of its wait
// and the start it makes when nothing answers. Tests shorten the one and
// replace the other with a daemon of their own.
var reconnect = struct {
	timeout time.Duration
	start   func(a *app, ctx context.Context, c *rpc.Client) error
}{daemonReturnTimeout, (*app).startDaemon}

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

// daemonWentAway reports whether err, from a call to bangerd, means the
// daemon did not answer at all: no socket or a stale one, a connection
// refused, reset or closed without a reply (a daemon killed under a call).
// An answer (*rpc.ErrorResponse), a refusal of the socket, the CLI's own
// context ending and a reply that does not decode are not: those are
// reported as they are. The rpc client gives a connection closed without a
// reply no error type of its own, so what is not one of these is taken for
// a daemon gone; awaitDaemon then finds out.
func daemonWentAway(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil || refused(err) {
		return false
	}
	var er *rpc.ErrorResponse
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	return !errors.As(err, &er) && !errors.As(err, &se) && !errors.As(err, &te)
}

// awaitDaemon waits until a bangerd answers on the socket again, starting
// one when nothing listens (the way client does; CLIs racing to start it
// end up talking to the one that won the lock), for at most
// reconnect.timeout. It returns the daemon's pid, or, when none answered,
// an unavailable error that says what was waited for (the op id and what
// to look at go in the caller's message).
func (a *app) awaitDaemon(ctx context.Context, c *rpc.Client) (int, error) {
	wctx, cancel := context.WithTimeout(ctx, reconnect.timeout)
	defer cancel()
	var last error
	for {
		var p api.Ping
		pctx, pcancel := context.WithTimeout(wctx, 3*time.Second)
		err := c.Call(pctx, api.MethodDaemonPing, nil, &p)
		pcancel()
		var er *rpc.ErrorResponse
		switch {
		case err == nil:
			return p.PID, nil
		case errors.As(err, &er):
			return 0, nil // a daemon answers, if with an error: it is there
		case refused(err):
			return 0, err
		}
		last = err
		if rpc.IsUnreachable(err) && wctx.Err() == nil {
			serr := reconnect.start(a, wctx, c)
			if serr == nil {
				continue // it answers: ping again for its pid
			}
			if errors.As(serr, &er) || refused(serr) {
				return 0, serr
			}
			if wctx.Err() == nil {
				last = serr
			}
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
			return 0, fmt.Errorf("no daemon answered on %s within %s (last: %v): %w",
				a.layout.DaemonSocket(), reconnect.timeout, last, rpc.ErrUnavailable)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// call makes one call to bangerd, starting it when needed.
func (a *app) call(ctx context.Context, method string, params, result any) error {
	c, err := a.client(ctx)
	if err != nil {
		return err
	}
	return c.Call(ctx, method, params, result)
}
