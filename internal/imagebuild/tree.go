package imagebuild

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/guest"
)

// tree is a build's root file system (mmdebstrap's temporary chroot, seen
// by the hook), written without ever following a symlink inside it: every
// path is walked from the tree's directory fd one component at a time with
// O_NOFOLLOW, and the last component is created with
// openat/mkdirat/symlinkat relative to its parent's fd. The tree was filled
// by Debian's packages, whose scripts ran as the same (namespace) root as
// the hook, so this is defence in depth: a symlink planted at /etc/fstab or
// /usr/local cannot send a write outside the tree (into the host's file
// system, which the hook sees) or anywhere else inside it.
//
// Reads go through an os.Root, which follows the tree's relative symlinks
// (/lib -> usr/lib in a merged-/usr system) but never out of the tree.
type tree struct {
	path string
	fd   int
	root *os.Root
	// chown is false when the hook is not (namespace) root: unit tests.
	chown bool
}

func openTree(p string) (*tree, error) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the tree %s: %w", p, err)
	}
	r, err := os.OpenRoot(p)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &tree{path: p, fd: fd, root: r, chown: os.Geteuid() == 0}, nil
}

func (t *tree) Close() error {
	t.root.Close()
	return unix.Close(t.fd)
}

// errNotDirInTree: a component of a path in the tree is a symlink or a
// file where a directory should be.
var errNotDirInTree = errors.New("not a directory")

// parent opens the directory holding p (absolute, clean, in guest terms),
// creating missing directories 0755 when create is set, and returns its fd
// (the caller closes it) and p's last element.
func (t *tree) parent(p string, create bool) (int, string, error) {
	if err := guest.CheckPath(p); err != nil {
		return -1, "", err
	}
	elems := strings.Split(strings.TrimPrefix(p, "/"), "/")
	fd, err := unix.Dup(t.fd)
	if err != nil {
		return -1, "", err
	}
	for i, e := range elems[:len(elems)-1] {
		next, err := unix.Openat(fd, e, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) && create {
			if err = unix.Mkdirat(fd, e, 0o755); err == nil || errors.Is(err, unix.EEXIST) {
				next, err = unix.Openat(fd, e, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
				if err == nil {
					err = t.own(next, 0o755)
				}
			}
		}
		unix.Close(fd)
		if err != nil {
			where := "/" + strings.Join(elems[:i+1], "/")
			if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
				return -1, "", fmt.Errorf("%s in the tree is not a directory (a symlink?); refusing to go through it to %s: %w", where, p, errNotDirInTree)
			}
			return -1, "", fmt.Errorf("opening %s in the tree: %w", where, err)
		}
		fd = next
	}
	return fd, elems[len(elems)-1], nil
}

// own gives the open fd mode (the umask does not apply) and, as root,
// root's ownership.
func (t *tree) own(fd int, mode fs.FileMode) error {
	if t.chown {
		if err := unix.Fchown(fd, 0, 0); err != nil {
			return err
		}
	}
	return unix.Fchmod(fd, uint32(mode.Perm()))
}

// write writes f into the tree, replacing what is at its path (a directory
// only by a directory).
func (t *tree) write(f guest.File) error {
	pfd, name, err := t.parent(f.Path, true)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	exists := unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
	isDir := exists && st.Mode&unix.S_IFMT == unix.S_IFDIR

	if f.IsDir() {
		if exists && !isDir {
			if err := unix.Unlinkat(pfd, name, 0); err != nil {
				return fmt.Errorf("replacing %s with a directory: %w", f.Path, err)
			}
		}
		if err := unix.Mkdirat(pfd, name, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("mkdir %s: %w", f.Path, err)
		}
		fd, err := unix.Openat(pfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening %s: %w", f.Path, err)
		}
		defer unix.Close(fd)
		return t.own(fd, f.Mode)
	}
	if isDir {
		return fmt.Errorf("%s is a directory in the tree; not replacing it with a file", f.Path)
	}
	if exists {
		if err := unix.Unlinkat(pfd, name, 0); err != nil {
			return fmt.Errorf("replacing %s: %w", f.Path, err)
		}
	}
	if f.IsSymlink() {
		if err := unix.Symlinkat(f.Target, pfd, name); err != nil {
			return fmt.Errorf("symlink %s -> %s: %w", f.Path, f.Target, err)
		}
		if t.chown {
			return unix.Fchownat(pfd, name, 0, 0, unix.AT_SYMLINK_NOFOLLOW)
		}
		return nil
	}
	if !f.Mode.IsRegular() {
		return fmt.Errorf("%s: unsupported mode %v", f.Path, f.Mode)
	}
	fd, err := unix.Openat(pfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("creating %s: %w", f.Path, err)
	}
	file := os.NewFile(uintptr(fd), filepath.Join(t.path, f.Path))
	defer file.Close()
	if _, err := file.Write(f.Content); err != nil {
		return fmt.Errorf("writing %s: %w", f.Path, err)
	}
	return t.own(fd, f.Mode)
}

// removeMatching removes the entries of the directory of pattern (absolute,
// in guest terms) whose names match its last element (path.Match). A
// directory of the pattern's path that is missing or a symlink holds
// nothing to remove.
func (t *tree) removeMatching(pattern string) error {
	pfd, glob, err := t.parent(pattern, false)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, errNotDirInTree) {
		return nil
	} else if err != nil {
		return err
	}
	dir := os.NewFile(uintptr(pfd), "")
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return err
	}
	rel := strings.TrimPrefix(path.Dir(pattern), "/")
	for _, n := range names {
		if ok, _ := path.Match(glob, n); !ok {
			continue
		}
		// os.Root.RemoveAll does not follow symlinks.
		if err := t.root.RemoveAll(path.Join(rel, n)); err != nil {
			return err
		}
	}
	return nil
}

var kernelVersionRE = regexp.MustCompile(`^[0-9][A-Za-z0-9.+_~-]{0,127}$`)

// kernelVersion returns the newest kernel in the tree's /lib/modules that
// has its /boot/vmlinuz-KVER.
func (t *tree) kernelVersion() (string, error) {
	d, err := t.root.Open("lib/modules")
	if err != nil {
		return "", fmt.Errorf("no kernel modules in the tree (is a linux-image package installed?): %w", err)
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return "", err
	}
	var kvers []string
	for _, n := range names {
		if !kernelVersionRE.MatchString(n) {
			continue
		}
		if fi, err := t.root.Lstat("boot/vmlinuz-" + n); err == nil && fi.Mode().IsRegular() {
			kvers = append(kvers, n)
		}
	}
	if len(kvers) == 0 {
		return "", fmt.Errorf("no kernel in the tree: /lib/modules has %q, none with its /boot/vmlinuz", names)
	}
	slices.SortFunc(kvers, compareVersions)
	return kvers[len(kvers)-1], nil
}

// compareVersions orders kernel versions by their runs of digits as
// numbers and the rest as strings (6.1.0-9 < 6.1.0-10), like sort -V.
func compareVersions(a, b string) int {
	for a != "" && b != "" {
		ad, bd := isDigit(a[0]), isDigit(b[0])
		na, nb := digitRun(a, ad), digitRun(b, bd)
		switch {
		case ad && bd:
			x, _ := strconv.ParseUint(strings.TrimLeft(a[:na], "0")+"0", 10, 64)
			y, _ := strconv.ParseUint(strings.TrimLeft(b[:nb], "0")+"0", 10, 64)
			if x != y {
				if x < y {
					return -1
				}
				return 1
			}
		case ad != bd:
			if ad {
				return 1
			}
			return -1
		default:
			if c := strings.Compare(a[:na], b[:nb]); c != 0 {
				return c
			}
		}
		a, b = a[na:], b[nb:]
	}
	return strings.Compare(a, b)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func digitRun(s string, digits bool) int {
	i := 0
	for i < len(s) && isDigit(s[i]) == digits {
		i++
	}
	return i
}
