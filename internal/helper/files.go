package helper

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/rpc"
)

// openStateFile opens the regular file at path for a loop device, after
// making sure it really lies under a state root and belongs to the caller:
//
//   - the path, with every symlink resolved, must lie inside a state root
//     (itself resolved), so a symlink pointing out is refused;
//   - the resolved path is opened with O_NOFOLLOW, and the path the kernel
//     reports for the open descriptor (/proc/self/fd/N) must be that same
//     path: a component swapped for a symlink in between is caught;
//   - the descriptor must be a regular file owned by the caller (any owner
//     when the caller is root), so neither a hard link nor a symlinked state
//     root can hand over another user's file.
//
// The loop device is then configured from this very descriptor, so what was
// checked is what gets attached.
func (h *Helper) openStateFile(caller rpc.PeerCred, path string, readOnly bool) (*os.File, unix.Stat_t, error) {
	var st unix.Stat_t
	roots := h.realRoots()
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		if isNotExist(err) {
			return nil, st, fmt.Errorf("argument path %q: %w", path, os.ErrNotExist)
		}
		return nil, st, fmt.Errorf("argument path %q: resolving: %v: %w", path, err, rpc.ErrBadRequest)
	}
	if !underRoots(real, roots) {
		return nil, st, fmt.Errorf("argument path %q: resolves to %q, outside the state roots %q: %w", path, real, h.cfg.StateDirs, rpc.ErrBadRequest)
	}
	if fi, err := os.Lstat(real); err != nil {
		return nil, st, fmt.Errorf("argument path %q: %w", path, err)
	} else if !fi.Mode().IsRegular() {
		return nil, st, fmt.Errorf("argument path %q: not a regular file: %w", path, rpc.ErrBadRequest)
	}
	flags := unix.O_RDWR
	if readOnly {
		flags = unix.O_RDONLY
	}
	fd, err := unix.Open(real, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		if err == unix.ELOOP {
			return nil, st, fmt.Errorf("argument path %q: became a symlink: %w", path, rpc.ErrBadRequest)
		}
		return nil, st, fmt.Errorf("opening %q: %w", real, err)
	}
	f := os.NewFile(uintptr(fd), real)
	fail := func(err error) (*os.File, unix.Stat_t, error) {
		f.Close()
		return nil, st, err
	}
	if err := unix.Fstat(fd, &st); err != nil {
		return fail(fmt.Errorf("stat %q: %w", real, err))
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fail(fmt.Errorf("argument path %q: not a regular file: %w", path, rpc.ErrBadRequest))
	}
	if caller.UID != 0 && st.Uid != caller.UID {
		return fail(fmt.Errorf("argument path %q: owned by uid %d, not by the caller (uid %d): %w", path, st.Uid, caller.UID, rpc.ErrForbidden))
	}
	opened, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return fail(fmt.Errorf("reading the path of the open %q: %w", real, err))
	}
	if opened != real || !underRoots(opened, roots) {
		return fail(fmt.Errorf("argument path %q: changed while being checked (now %q): %w", path, opened, rpc.ErrBadRequest))
	}
	return f, st, nil
}

// backingFile is what sysfs says backs a loop device: its path as the kernel
// sees it and whether the file has been deleted since.
type backingFile struct {
	Path    string
	Deleted bool
}

// loopBacking reads /sys/block/loopN/loop/backing_file. ok is false for a
// loop device that is not attached (or does not exist).
func (h *Helper) loopBacking(name string) (b backingFile, ok bool, err error) {
	raw, err := os.ReadFile(filepath.Join(h.cfg.SysRoot, "block", name, "loop", "backing_file"))
	if err != nil {
		if isNotExist(err) {
			return b, false, nil
		}
		return b, false, fmt.Errorf("reading the backing file of %s: %w", name, err)
	}
	p := strings.TrimSuffix(string(raw), "\n")
	if s, cut := strings.CutSuffix(p, " (deleted)"); cut {
		return backingFile{Path: s, Deleted: true}, true, nil
	}
	return backingFile{Path: p}, true, nil
}

// checkLoopOwned verifies that the attached loop device name (loopN) is
// backed by a file under a state root owned by the caller. A deleted backing
// file passes when allowDeleted (tearing down what was banger's), as there is
// nothing left to stat.
func (h *Helper) checkLoopOwned(caller rpc.PeerCred, arg, name string, allowDeleted bool) (backingFile, error) {
	b, ok, err := h.loopBacking(name)
	if err != nil {
		return b, err
	}
	dev := "/dev/" + name
	if !ok {
		return b, fmt.Errorf("argument %s %q: not attached: %w", arg, dev, rpc.ErrNotFound)
	}
	if !underRoots(b.Path, h.realRoots()) {
		return b, fmt.Errorf("argument %s %q: backed by %q, outside the state roots: %w", arg, dev, b.Path, rpc.ErrForbidden)
	}
	if b.Deleted {
		if !allowDeleted {
			return b, fmt.Errorf("argument %s %q: its backing file %q was deleted: %w", arg, dev, b.Path, rpc.ErrConflict)
		}
		return b, nil
	}
	if caller.UID == 0 {
		return b, nil
	}
	var st unix.Stat_t
	if err := unix.Lstat(b.Path, &st); err != nil {
		return b, fmt.Errorf("stat %q: %w", b.Path, err)
	}
	if st.Uid != caller.UID {
		return b, fmt.Errorf("argument %s %q: backed by %q of uid %d, not the caller's (uid %d): %w", arg, dev, b.Path, st.Uid, caller.UID, rpc.ErrForbidden)
	}
	// The file now at that path must be the one the device holds, not one
	// put in its place since.
	info, err := loopStatus(filepath.Join(h.cfg.DevRoot, name))
	if err != nil {
		return b, err
	}
	if info.Device != st.Dev || info.Inode != st.Ino {
		return b, fmt.Errorf("argument %s %q: %q is no longer the file it holds: %w", arg, dev, b.Path, rpc.ErrForbidden)
	}
	return b, nil
}

// sysDev reads /sys/block/NAME/dev, "MAJ:MIN".
func (h *Helper) sysDev(name string) (uint32, uint32, error) {
	raw, err := os.ReadFile(filepath.Join(h.cfg.SysRoot, "block", name, "dev"))
	if err != nil {
		return 0, 0, fmt.Errorf("reading the device number of %s: %w", name, err)
	}
	maj, min, ok := strings.Cut(strings.TrimSpace(string(raw)), ":")
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(min, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("device number of %s: malformed %q", name, raw)
	}
	return uint32(ma), uint32(mi), nil
}

// sysSectors reads /sys/block/NAME/size, in 512-byte sectors.
func (h *Helper) sysSectors(name string) (uint64, error) {
	raw, err := os.ReadFile(filepath.Join(h.cfg.SysRoot, "block", name, "size"))
	if err != nil {
		return 0, fmt.Errorf("reading the size of %s: %w", name, err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size of %s: malformed %q", name, raw)
	}
	return n, nil
}

// chownNode makes uid the owner of the block device node path (group
// unchanged), after checking that it is the block device maj:min: a node is
// changed only when it is the device that was verified.
func chownNode(path string, maj, min, uid uint32) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK || unix.Major(st.Rdev) != maj || unix.Minor(st.Rdev) != min {
		return fmt.Errorf("%s is not the block device %d:%d", path, maj, min)
	}
	if st.Uid == uid {
		return nil
	}
	if err := unix.Lchown(path, int(uid), -1); err != nil {
		return fmt.Errorf("chown %s to uid %d: %w", path, uid, err)
	}
	return nil
}
