// Package paths names every file and socket banger writes. docs/files.md is
// the same list for users; keep the two in step.
//
// As a user:
//
//	$XDG_CONFIG_HOME/banger/config.toml     (~/.config/banger/config.toml)
//	$XDG_STATE_HOME/banger/                 (~/.local/state/banger/)
//	    state.db, bangerd.log, bangerd.lock, id_ed25519(.pub), images/, vms/
//	$XDG_RUNTIME_DIR/banger/bangerd.sock    (/tmp/banger-<uid>/ without XDG_RUNTIME_DIR)
//	/run/banger/helper.sock                 the root helper's socket
//
// As root the state lives under /var/lib/banger and sockets under
// /run/banger. BANGER_STATE_DIR, BANGER_RUNTIME_DIR, BANGER_CONFIG and
// BANGER_HELPER_SOCKET override each location (tests use them).
package paths

import (
	"fmt"
	"os"
	"path/filepath"
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

// Ensure creates the state and runtime directories, 0700.
func (l Layout) Ensure() error {
	for _, d := range []string{l.StateDir, l.RuntimeDir, l.ImagesDir(), l.VMsDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}
	return nil
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
