package helper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/subid"
	"github.com/banger-dev/banger/internal/version"
)

// Options are banger-helper's flags.
type Options struct {
	// Socket is the unix socket to listen on.
	Socket string
	// SocketMode is the socket file's mode (default 0666: anyone may
	// connect; the helper admits callers by SO_PEERCRED and the grants).
	SocketMode os.FileMode
	// GrantsFile holds the grants (helperapi.Grants); "" means none: root
	// only. It must be a regular file that only root can write.
	GrantsFile string
	// StateFile records the owners of the objects the helper made.
	StateFile string
	// LogFile receives the JSON log; "" means stderr.
	LogFile string
	// LogLevel is the lowest level logged.
	LogLevel slog.Level
}

// DefaultOptions are the flags' defaults: helperapi's install locations,
// those of the unit.
func DefaultOptions() Options {
	return Options{Socket: helperapi.DefaultSocket, SocketMode: 0o666, GrantsFile: helperapi.DefaultGrantsFile, StateFile: helperapi.DefaultStateFile}
}

// Run serves the helper on o.Socket until ctx is done, then waits for the
// calls in flight and removes the socket.
func Run(ctx context.Context, o Options, stderr io.Writer) error {
	var w io.Writer = stderr
	if o.LogFile != "" {
		if err := os.MkdirAll(filepath.Dir(o.LogFile), 0o750); err != nil {
			return fmt.Errorf("creating the log directory %s: %w", filepath.Dir(o.LogFile), err)
		}
		f, err := os.OpenFile(o.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE|unix.O_CLOEXEC, 0o640)
		if err != nil {
			return fmt.Errorf("opening the log %s: %w", o.LogFile, err)
		}
		defer f.Close()
		w = f
	}
	logger := logging.New(w, o.LogLevel, "helper")
	grants, err := helperapi.LoadGrants(o.GrantsFile)
	if err != nil {
		return err
	}
	subuids, err := subid.Read(subid.UIDFile)
	if err != nil {
		logger.Warn("reading the subordinate uid ranges", "error", err.Error())
	}
	h, err := New(Config{Grants: grants, StateFile: o.StateFile, Logger: logger, SubUIDs: subuids})
	if err != nil {
		return err
	}
	ln, err := Listen(o.Socket, o.SocketMode)
	if err != nil {
		return err
	}
	srv := h.NewServer()
	var users []string
	for _, g := range grants.Users {
		users = append(users, fmt.Sprintf("%s(uid %d): %s %s", g.User, g.UID, g.Bridge(), g.Subnet))
	}
	logger.Info("helper listening", "socket", o.Socket, "socket_mode", fmt.Sprintf("%04o", o.SocketMode),
		"grants_file", o.GrantsFile, "grants", users, "state_file", o.StateFile,
		"version", version.String(), "pid", os.Getpid())
	err = srv.Serve(ctx, ln)
	ln.Close()
	if err != nil {
		logger.Error("helper stopped", "error", err.Error())
		return err
	}
	logger.Info("helper stopped")
	return nil
}

// Listen creates the helper's socket at path with the given mode. A stale
// socket is replaced; a live one (another helper
// answering) is an error. The socket is created 0600 and only then opened up
// to mode, and it is removed when the listener closes.
func Listen(path string, mode os.FileMode) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating the socket directory %s: %w", filepath.Dir(path), err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; not replacing it", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another helper is already serving it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing the stale socket %s: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("looking at %s: %w", path, err)
	}
	old := unix.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, mode.Perm()); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return ln, nil
}
