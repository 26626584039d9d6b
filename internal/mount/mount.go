// Package mount is a VM's host folders: the --mount specs and their
// validation, and the virtiofsd that serves each one to the VM's qemu
// (vhost-user-fs). virtiofsd runs as the daemon's user: bangerd starts a
// copy of itself (the wrapper, RunWrapper) in a new mount namespace, and,
// when it is not root, a new user namespace that maps its uid to 0, so
// virtiofsd has the capabilities its sandbox needs and what the guest's
// root writes lands on the host as the daemon's user (only that uid is
// mapped, so the guest's other uids cannot own files there). For a
// read-only folder the wrapper bind-mounts the folder on itself and makes
// it, and every mount below it, read-only before it execs virtiofsd: the
// host enforces :ro, whatever the guest does. virtiofsd's pid file goes to
// a private /run of the wrapper's namespace, never the host's.
package mount

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/banger-dev/banger/internal/rpc"
)

// Spec is one host folder of a VM.
type Spec struct {
	HostDir   string `json:"host_dir"`
	GuestPath string `json:"guest_path"`
	ReadOnly  bool   `json:"read_only,omitempty"`
}

// MaxMounts is the most host folders a VM may have.
const MaxMounts = 8

// String is s as --mount takes it.
func (s Spec) String() string {
	if s.ReadOnly {
		return s.HostDir + ":" + s.GuestPath + ":ro"
	}
	return s.HostDir + ":" + s.GuestPath
}

// Tag is the virtio-fs tag of a VM's i-th host folder.
func Tag(i int) string { return "banger" + strconv.Itoa(i) }

// Parse reads "HOSTDIR:GUESTPATH[:ro|:rw]". A relative HOSTDIR is taken
// from cwd (and ~/ from $HOME); with cwd "" it must be absolute (the
// daemon's side: the CLI resolves it first, Resolve). The result is not
// yet validated.
func Parse(arg, cwd string) (Spec, error) {
	parts := strings.Split(arg, ":")
	var s Spec
	switch {
	case len(parts) == 3 && (parts[2] == "ro" || parts[2] == "rw"):
		s.ReadOnly = parts[2] == "ro"
	case len(parts) != 2:
		return s, fmt.Errorf("want HOSTDIR:GUESTPATH or HOSTDIR:GUESTPATH:ro (a ':' cannot be in either path)")
	}
	host, guest := parts[0], parts[1]
	if host == "" || guest == "" {
		return s, fmt.Errorf("want HOSTDIR:GUESTPATH, both non-empty")
	}
	if strings.HasPrefix(host, "~/") && cwd != "" {
		if home, err := os.UserHomeDir(); err == nil {
			host = filepath.Join(home, host[2:])
		}
	}
	if !filepath.IsAbs(host) {
		if cwd == "" {
			return s, fmt.Errorf("host folder %q is not an absolute path", host)
		}
		host = filepath.Join(cwd, host)
	}
	s.HostDir, s.GuestPath = filepath.Clean(host), guest
	return s, nil
}

// Resolve is arg with its HOSTDIR made absolute from cwd, as the CLI sends
// it to the daemon.
func Resolve(arg, cwd string) (string, error) {
	s, err := Parse(arg, cwd)
	if err != nil {
		return "", err
	}
	return s.String(), nil
}

var guestPathRE = regexp.MustCompile(`^/[A-Za-z0-9._/@+-]*$`)

// reserved are guest paths a folder may not cover.
var reserved = []string{"/", "/root", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/var", "/tmp"}

// under are trees a folder may not go into at all.
var under = []string{"/proc", "/sys", "/dev", "/run"}

func badRequest(hint, format string, args ...any) error {
	return rpc.WithHint(rpc.Errorf(rpc.ErrBadRequest, format, args...), hint)
}

// Validate checks a VM's host folders for the user uid (root may share
// any directory): each host directory exists, is a directory, is the
// user's and is its own real path (no symlink on the way); each guest path
// is absolute, clean, of plain characters and not a system directory; no
// two share a guest path.
func Validate(specs []Spec, uid int) error {
	if len(specs) > MaxMounts {
		return badRequest("share a parent folder instead", "%d host folders: at most %d", len(specs), MaxMounts)
	}
	seen := map[string]bool{}
	for _, s := range specs {
		if !filepath.IsAbs(s.HostDir) || filepath.Clean(s.HostDir) != s.HostDir {
			return badRequest("give an absolute path", "--mount %s: host folder %q is not an absolute, clean path", s, s.HostDir)
		}
		fi, err := os.Stat(s.HostDir)
		switch {
		case os.IsNotExist(err):
			return badRequest("create it first (mkdir -p "+s.HostDir+"), or fix the path", "--mount %s: host folder %s does not exist", s, s.HostDir)
		case err != nil:
			return badRequest("check its permissions", "--mount %s: %v", s, err)
		case !fi.IsDir():
			return badRequest("share the folder that holds it", "--mount %s: %s is not a directory", s, s.HostDir)
		}
		if real, err := filepath.EvalSymlinks(s.HostDir); err != nil {
			return badRequest("check its permissions", "--mount %s: %v", s, err)
		} else if real != s.HostDir {
			r := s
			r.HostDir = real
			return badRequest("give the real path: --mount "+r.String(), "--mount %s: %s is a symlink or goes through one (to %s); give the real path", s, s.HostDir, real)
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && uid != 0 && int(st.Uid) != uid {
			return badRequest("share a folder you own", "--mount %s: %s belongs to uid %d, not to you (uid %d)", s, s.HostDir, st.Uid, uid)
		}
		g := s.GuestPath
		switch {
		case !guestPathRE.MatchString(g) || filepath.Clean(g) != g:
			return badRequest("give an absolute guest path of letters, digits and ._/@+- such as /root/src", "--mount %s: guest path %q is not an absolute, clean path of plain characters", s, g)
		case isReserved(g):
			return badRequest("mount it below, e.g. /root/src or /srv/data", "--mount %s: guest path %s is a system directory", s, g)
		case seen[g]:
			return badRequest("give each folder its own guest path", "--mount %s: two host folders on guest path %s", s, g)
		}
		seen[g] = true
	}
	return nil
}

func isReserved(g string) bool {
	for _, r := range reserved {
		if g == r {
			return true
		}
	}
	for _, u := range under {
		if g == u || strings.HasPrefix(g, u+"/") {
			return true
		}
	}
	return false
}
