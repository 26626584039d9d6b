package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/version"
)

// helperInstallHint is what a user without a running helper must do.
func helperInstallHint() string {
	return fmt.Sprintf("install and start the root helper once: sudo banger system install --user %s", currentUserName())
}

// newHelperClient is a client for the helper's socket that talks only to a
// helper run by root (tests that fake the helper add their own uid to
// d.helperPeers).
func (d *Daemon) newHelperClient(sock string) *helperapi.Client {
	c := helperapi.NewClient(sock)
	if len(d.helperPeers) > 0 {
		c.VerifyPeer = rpc.PeerUIDs(d.helperPeers...)
	}
	return c
}

// helperClient returns a client for the root helper, making sure one
// answers: when bangerd runs as root and none does, it starts the helper
// itself; as a user it says how to install it.
func (d *Daemon) helperClient(ctx context.Context) (*helperapi.Client, error) {
	d.helperMu.Lock()
	defer d.helperMu.Unlock()
	c := d.newHelperClient(d.layout.HelperSocket)
	v, err := c.Version(ctx)
	if err == nil {
		d.checkHelperVersion(ctx, v)
		if err := d.setGrant(ctx, v.Grant); err != nil {
			return nil, err
		}
		return c, nil
	}
	var pe *rpc.PeerError
	if errors.As(err, &pe) {
		return nil, rpc.WithHint(fmt.Errorf("%s is not banger's root helper: %w", d.layout.HelperSocket, err),
			"find out who made it (ls -l "+d.layout.HelperSocket+"); the helper's socket is root's: sudo banger system install --user "+currentUserName())
	}
	if rpc.CodeOf(err) == rpc.CodeForbidden {
		return nil, rpc.WithHint(fmt.Errorf("root helper at %s refuses uid %d: %w", d.layout.HelperSocket, os.Getuid(), err),
			fmt.Sprintf("allow this user: sudo banger system install --user %s", currentUserName()))
	}
	if !rpc.IsUnreachable(err) {
		return nil, fmt.Errorf("root helper at %s: %w", d.layout.HelperSocket, err)
	}
	if os.Geteuid() != 0 {
		return nil, rpc.WithHint(fmt.Errorf("root helper not answering at %s: %w", d.layout.HelperSocket, rpc.ErrUnavailable), helperInstallHint())
	}
	if err := d.startHelper(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func (d *Daemon) checkHelperVersion(ctx context.Context, v helperapi.VersionResult) {
	if v.Version != version.String() {
		d.log.WarnContext(ctx, "root helper is of another release", "helper_version", v.Version, "version", version.String())
	}
}

// startHelper runs banger-helper detached, as root bangerd does: its own
// session, its log and its owner records in the state directory, no grants
// (root only). It outlives bangerd, like the VMMs.
func (d *Daemon) startHelper(ctx context.Context) error {
	bin, err := findHelper()
	if err != nil {
		return err
	}
	sock := d.layout.HelperSocket
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(sock), err)
	}
	logPath := d.helperLogPath()
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer devnull.Close()
	cmd := exec.Command(bin,
		"--socket", sock,
		"--socket-mode", "0600",
		"--grants", "",
		"--state-file", filepath.Join(d.layout.StateDir, "helper", "state.json"),
		"--log", logPath,
		"--log-level", d.opts.LogLevel,
	)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting root helper %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	d.log.InfoContext(ctx, "started root helper", "pid", cmd.Process.Pid, "socket", sock, "log", logPath)

	c := d.newHelperClient(sock)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := c.Version(ctx); err == nil {
			return nil
		}
		select {
		case err := <-exited:
			return rpc.WithHint(fmt.Errorf("root helper %s exited at start: %v: %w", bin, err, rpc.ErrUnavailable), "see its log: "+logPath)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(25 * time.Millisecond):
		}
	}
	return rpc.WithHint(fmt.Errorf("root helper did not answer on %s within 10s: %w", sock, rpc.ErrUnavailable), "see its log: "+logPath)
}

// helperLogPath is where a helper started by a root bangerd logs.
func (d *Daemon) helperLogPath() string { return filepath.Join(d.layout.StateDir, "helper.log") }

// findHelper looks for banger-helper: $BANGER_HELPER, next to bangerd, the
// install location, then PATH.
func findHelper() (string, error) { return findBinary("BANGER_HELPER", "banger-helper") }

// findAgent looks for the banger-agent images carry the same way:
// $BANGER_AGENT, next to bangerd, the install location, then PATH.
func findAgent() (string, error) { return findBinary("BANGER_AGENT", "banger-agent") }

func findBinary(env, name string) (string, error) {
	if p := os.Getenv(env); p != "" {
		return p, nil
	}
	var candidates []string
	if self, err := os.Executable(); err == nil {
		candidates = append(candidates, filepath.Join(filepath.Dir(self), name))
	}
	candidates = append(candidates, "/usr/local/libexec/banger/"+name, "/usr/libexec/banger/"+name)
	for _, p := range candidates {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", rpc.WithHint(fmt.Errorf("%s not found next to bangerd, in /usr/local/libexec/banger or in PATH: %w", name, rpc.ErrUnavailable),
		"build and install it: make install (or set "+env+")")
}

// helperStatus reports on the helper without starting it.
func (d *Daemon) helperStatus(ctx context.Context) api.HelperStatus {
	st := api.HelperStatus{Socket: d.layout.HelperSocket}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	v, err := d.newHelperClient(d.layout.HelperSocket).Version(ctx)
	if err != nil {
		st.Error = err.Error()
		if rpc.IsUnreachable(err) {
			st.Error = "not running"
			if os.Geteuid() == 0 {
				st.Hint = "bangerd starts it when a VM needs it"
			} else {
				st.Hint = helperInstallHint()
			}
		} else if rpc.CodeOf(err) == rpc.CodeForbidden {
			st.Hint = fmt.Sprintf("the helper does not allow uid %d: sudo banger system install --user %s", os.Getuid(), currentUserName())
		}
		return st
	}
	st.Reachable, st.Version, st.PID = true, v.Version, v.PID
	if v.Version != version.String() {
		st.Hint = "the helper is of another release; reinstall it: sudo banger system install"
	}
	return st
}

func currentUserName() string {
	if u := os.Getenv("USER"); u != "" {
		return u
	}
	return strconv.Itoa(os.Getuid())
}
