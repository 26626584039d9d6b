// Package paths names every file and socket banger writes. docs/files.md is
// the same list for users; keep the two in step.
//
// As a user:
//
//	$XDG_CONFIG_HOME/banger/config.toml     (~/.config/banger/config.toml)
//	$XDG_STATE_HOME/banger/                 (~/.local/state/banger/)
//	    state.db, bangerd.log, bangerd.lock, id_ed25519(.pub), images/, vms/
//	$XDG_RUNTIME_DIR/banger/bangerd.sock    ($TMPDIR/banger-<uid>/, /tmp by default, without XDG_RUNTIME_DIR)
//	/run/banger/helper.sock                 the root helper's socket
//
// As root the state lives under /var/lib/banger and sockets under
// /run/banger. BANGER_STATE_DIR, BANGER_RUNTIME_DIR, BANGER_CONFIG and
// BANGER_HELPER_SOCKET override each location (tests use them).
//
// The runtime directory holds bangerd's socket, so whoever controls it can
// answer for bangerd. EnsureRuntimeDir is the one door to it: the CLI and
// bangerd both go through it (Layout.Ensure, Layout.EnsureRuntime) before
// they use the directory, and it refuses one that is not a real directory
// owned by the user and closed to everyone else.
package paths

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/banger-dev/banger/internal/rpc"
)

// Layout is where one banger install keeps its files.
type Layout struct {
	ConfigFile   string `json:"config_file"`
	StateDir     string `json:"state_dir"`
	RuntimeDir   string `json:"runtime_dir"`
	HelperSocket string `json:"helper_socket"`
}

// Fixed system locations.
const (
	RootStateDir   = "/var/lib/banger"
	RootRuntimeDir = "/run/banger"
	HelperSocket   = "/run/banger/helper.sock"
)

// Default returns the layout for the current user and environment.
func Default() (Layout, error) {
	uid := os.Getuid()
	home, err := os.UserHomeDir()
	if err != nil && uid != 0 {
		return Layout{}, fmt.Errorf("finding home directory: %w", err)
	}
	var l Layout
	l.ConfigFile = envOr("BANGER_CONFIG", xdg("XDG_CONFIG_HOME", filepath.Join(home, ".config"), "banger", "config.toml"))
	if uid == 0 {
		l.StateDir = envOr("BANGER_STATE_DIR", RootStateDir)
		l.RuntimeDir = envOr("BANGER_RUNTIME_DIR", RootRuntimeDir)
	} else {
		l.StateDir = envOr("BANGER_STATE_DIR", xdg("XDG_STATE_HOME", filepath.Join(home, ".local", "state"), "banger"))
		rt := os.Getenv("XDG_RUNTIME_DIR")
		if rt != "" {
			rt = filepath.Join(rt, "banger")
		} else {
			rt = filepath.Join(os.TempDir(), fmt.Sprintf("banger-%d", uid))
		}
		l.RuntimeDir = envOr("BANGER_RUNTIME_DIR", rt)
	}
	l.HelperSocket = envOr("BANGER_HELPER_SOCKET", HelperSocket)
	return l, nil
}

// DaemonSocket is bangerd's socket (mode 0600).
func (l Layout) DaemonSocket() string { return filepath.Join(l.RuntimeDir, "bangerd.sock") }

// DaemonLock is held by the one running bangerd of this user.
func (l Layout) DaemonLock() string { return filepath.Join(l.StateDir, "bangerd.lock") }

// DaemonLog is bangerd's JSON log.
func (l Layout) DaemonLog() string { return filepath.Join(l.StateDir, "bangerd.log") }

// Database is the SQLite store.
func (l Layout) Database() string { return filepath.Join(l.StateDir, "state.db") }

// SSHKey is the install's private key; SSHKey()+".pub" the public one.
func (l Layout) SSHKey() string { return filepath.Join(l.StateDir, "id_ed25519") }

// ImagesDir holds one directory per image.
func (l Layout) ImagesDir() string { return filepath.Join(l.StateDir, "images") }

// VMsDir holds one directory per VM, named by its id.
func (l Layout) VMsDir() string { return filepath.Join(l.StateDir, "vms") }

// ImageDir is the directory of the named image.
func (l Layout) ImageDir(name string) string { return filepath.Join(l.ImagesDir(), name) }

// VMDir is the directory of the VM with the given id.
func (l Layout) VMDir(id string) string { return filepath.Join(l.VMsDir(), id) }

// Ensure creates the state directories, 0700, and checks (creating it if
// missing) the runtime directory with EnsureRuntimeDir.
func (l Layout) Ensure() error {
	if err := l.EnsureRuntime(); err != nil {
		return err
	}
	for _, d := range []string{l.StateDir, l.ImagesDir(), l.VMsDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}
	return nil
}

// EnsureRuntime is EnsureRuntimeDir(l.RuntimeDir).
func (l Layout) EnsureRuntime() error { return EnsureRuntimeDir(l.RuntimeDir) }

// EnsureRuntimeDir makes sure dir is fit to hold bangerd's socket, creating
// it (mode 0700) when it is missing. It must be a directory, not a symbolic
// link, owned by the current uid, with no permission for group or others;
// as root, a root-owned directory that only root may write is fine too
// (the root helper's systemd unit makes /run/banger 0755). Its parents are
// created as needed (0700); the last component is made with Mkdir, so a
// directory that appears meanwhile is checked like any other.
//
// A refusal wraps rpc.ErrForbidden, names the path, its owner and mode, and
// carries the way out as its hint (rpc.HintOf). Nothing is changed on a
// directory that is refused.
func EnsureRuntimeDir(dir string) error {
	if dir == "" {
		return rpc.WithHint(rpc.Errorf(rpc.ErrBadRequest, "the runtime directory is empty"),
			"set XDG_RUNTIME_DIR (or BANGER_RUNTIME_DIR) to a directory only you can use")
	}
	dir = filepath.Clean(dir)
	if parent := filepath.Dir(dir); parent != dir {
		if err := os.MkdirAll(parent, 0o700); err != nil {
			return fmt.Errorf("creating the parent of the runtime directory %s: %w", dir, err)
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("creating the runtime directory %s: %w", dir, err)
	}
	return CheckRuntimeDir(dir, os.Getuid())
}

// CheckRuntimeDir is EnsureRuntimeDir's check of an existing dir for the
// user uid, without creating anything.
func CheckRuntimeDir(dir string, uid int) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("checking the runtime directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("checking the runtime directory %s: no owner in its status", dir)
	}
	owner := int(st.Uid)
	perm := fi.Mode().Perm()
	elsewhere := "or set XDG_RUNTIME_DIR (or BANGER_RUNTIME_DIR) to a directory of your own"
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		target, _ := os.Readlink(dir)
		return rpc.WithHint(rpc.Errorf(rpc.ErrForbidden,
			"runtime directory %s is a symbolic link (to %q, the link owned by %s), not a directory: banger will not put its socket behind a link someone may have planted",
			dir, target, describeUID(owner)),
			fmt.Sprintf("remove the link (rm %s) if you did not make it, %s; then run the command again", dir, elsewhere))
	case !fi.IsDir():
		return rpc.WithHint(rpc.Errorf(rpc.ErrForbidden,
			"runtime directory %s is not a directory but a %s (owner %s, mode %04o)",
			dir, kind(fi.Mode()), describeUID(owner), perm),
			fmt.Sprintf("remove it (rm %s) if you did not make it, %s; then run the command again", dir, elsewhere))
	case owner != uid:
		return rpc.WithHint(rpc.Errorf(rpc.ErrForbidden,
			"runtime directory %s belongs to %s (mode %04o), not to you (uid %d): whoever owns it could answer for your bangerd, so banger will not use it",
			dir, describeUID(owner), perm, uid),
			fmt.Sprintf("have it removed (its owner or root: rm -r %s), %s; then run the command again", dir, elsewhere))
	case uid == 0 && perm&0o022 != 0:
		return rpc.WithHint(rpc.Errorf(rpc.ErrForbidden,
			"runtime directory %s has mode %04o: others may write in it, so they could answer for bangerd", dir, perm),
			fmt.Sprintf("chmod go-w %s, and remove what you did not put there; then run the command again", dir))
	case uid != 0 && perm&0o077 != 0:
		return rpc.WithHint(rpc.Errorf(rpc.ErrForbidden,
			"runtime directory %s has mode %04o: others may reach it; banger needs it private (0700) to trust the socket in it", dir, perm),
			fmt.Sprintf("chmod 700 %s, and remove what you did not put there; then run the command again", dir))
	}
	return nil
}

// describeUID is "uid N (name)", or "uid N" for a uid without a name.
func describeUID(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil && u.Username != "" {
		return fmt.Sprintf("uid %d (%s)", uid, u.Username)
	}
	return fmt.Sprintf("uid %d", uid)
}

// kind names the type of a file that is not a directory.
func kind(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "regular file"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeDevice != 0:
		return "device"
	default:
		return "special file"
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func xdg(key, def string, elem ...string) string {
	base := os.Getenv(key)
	if base == "" || !filepath.IsAbs(base) {
		base = def
	}
	return filepath.Join(append([]string{base}, elem...)...)
}
