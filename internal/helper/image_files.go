package helper

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/rpc"
)

// openLog opens the caller's build log for appending, with the checks of
// openStateFile (files.go): the path with symlinks resolved must lie inside
// a state root, the resolved path is opened with O_NOFOLLOW (and O_NONBLOCK,
// so a FIFO cannot hang the call), the kernel's path of the open descriptor
// must be the checked one, and it must be a regular file owned by the caller
// (any owner for root). The caller creates the log; the helper never does.
func (h *Helper) openLog(caller rpc.PeerCred, path string) (*os.File, error) {
	roots := h.realRoots()
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		if isNotExist(err) {
			return nil, fmt.Errorf("argument log_path %q: does not exist (the caller creates its log): %w", path, rpc.ErrBadRequest)
		}
		return nil, fmt.Errorf("argument log_path %q: resolving: %v: %w", path, err, rpc.ErrBadRequest)
	}
	if !underRoots(real, roots) {
		return nil, fmt.Errorf("argument log_path %q: resolves to %q, outside the state roots %q: %w", path, real, h.cfg.StateDirs, rpc.ErrBadRequest)
	}
	fd, err := unix.Open(real, unix.O_WRONLY|unix.O_APPEND|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		if err == unix.ELOOP {
			return nil, fmt.Errorf("argument log_path %q: became a symlink: %w", path, rpc.ErrBadRequest)
		}
		if err == unix.ENXIO || err == unix.EISDIR {
			return nil, fmt.Errorf("argument log_path %q: not a regular file: %w", path, rpc.ErrBadRequest)
		}
		return nil, fmt.Errorf("opening the log %q: %w", real, err)
	}
	f := os.NewFile(uintptr(fd), real)
	fail := func(err error) (*os.File, error) {
		f.Close()
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fail(fmt.Errorf("stat %q: %w", real, err))
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fail(fmt.Errorf("argument log_path %q: not a regular file: %w", path, rpc.ErrBadRequest))
	}
	if caller.UID != 0 && st.Uid != caller.UID {
		return fail(fmt.Errorf("argument log_path %q: owned by uid %d, not by the caller (uid %d): %w", path, st.Uid, caller.UID, rpc.ErrForbidden))
	}
	opened, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return fail(fmt.Errorf("reading the path of the open %q: %w", real, err))
	}
	if opened != real || !underRoots(opened, roots) {
		return fail(fmt.Errorf("argument log_path %q: changed while being checked (now %q): %w", path, opened, rpc.ErrBadRequest))
	}
	// Back to blocking writes.
	if err := unix.SetNonblock(fd, false); err != nil {
		return fail(err)
	}
	return f, nil
}

// outDir is the caller's image directory, held open: files are created
// relative to this descriptor, so a path component swapped after the check
// changes nothing.
type outDir struct {
	path string
	fd   int
	uid  uint32
	gid  uint32
	// made are the files created so far (name -> device and inode), removed
	// again by cleanup unless keep was called.
	made map[string][2]uint64
}

// openOutDir opens the output directory of image.pack after checking that
// it is a real directory (no symlink anywhere in its path: the resolved
// path must be the path given) strictly inside a state root, owned by uid.
func (h *Helper) openOutDir(path string, uid, gid uint32) (*outDir, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		if isNotExist(err) {
			return nil, fmt.Errorf("argument out_dir %q: %w", path, os.ErrNotExist)
		}
		return nil, fmt.Errorf("argument out_dir %q: resolving: %v: %w", path, err, rpc.ErrBadRequest)
	}
	if real != path {
		return nil, fmt.Errorf("argument out_dir %q: has a symlink in its path (resolves to %q): %w", path, real, rpc.ErrBadRequest)
	}
	roots := h.realRoots()
	if !underRoots(real, roots) {
		return nil, fmt.Errorf("argument out_dir %q: outside the state roots %q: %w", path, h.cfg.StateDirs, rpc.ErrBadRequest)
	}
	fd, err := unix.Open(real, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if err == unix.ELOOP || err == unix.ENOTDIR {
			return nil, fmt.Errorf("argument out_dir %q: not a directory: %w", path, rpc.ErrBadRequest)
		}
		return nil, fmt.Errorf("opening %q: %w", real, err)
	}
	d := &outDir{path: real, fd: fd, uid: uid, gid: gid, made: map[string][2]uint64{}}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		d.close()
		return nil, err
	}
	if st.Uid != uid {
		d.close()
		return nil, fmt.Errorf("argument out_dir %q: owned by uid %d, not by uid %d: %w", path, st.Uid, uid, rpc.ErrForbidden)
	}
	opened, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil || opened != real || !underRoots(opened, roots) {
		d.close()
		return nil, fmt.Errorf("argument out_dir %q: changed while being checked (now %q): %w", path, opened, rpc.ErrBadRequest)
	}
	return d, nil
}

func (d *outDir) close() { unix.Close(d.fd) }

// exists reports whether name is taken in the directory (by anything, a
// dangling symlink included).
func (d *outDir) exists(name string) bool {
	var st unix.Stat_t
	return unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil
}

// copyIn creates name anew in the directory (O_CREAT|O_EXCL|O_NOFOLLOW: an
// existing file or symlink of that name is a conflict, never overwritten or
// followed), copies src into it keeping holes, gives it to uid:gid with
// mode 0644 and syncs it. It returns the size.
func (d *outDir) copyIn(name string, in *os.File) (int64, error) {
	fd, err := unix.Openat(d.fd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		if errors.Is(err, unix.EEXIST) {
			return 0, fmt.Errorf("%s already exists in %s: %w", name, d.path, rpc.ErrConflict)
		}
		return 0, fmt.Errorf("creating %s in %s: %w", name, d.path, err)
	}
	out := os.NewFile(uintptr(fd), filepath.Join(d.path, name))
	defer out.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	d.made[name] = [2]uint64{st.Dev, st.Ino}
	if err := unix.Fchown(fd, int(d.uid), int(d.gid)); err != nil {
		return 0, fmt.Errorf("chown %s: %w", name, err)
	}
	if err := unix.Fchmod(fd, 0o644); err != nil {
		return 0, err
	}
	n, err := copySparse(out, in)
	if err != nil {
		return 0, fmt.Errorf("copying %s: %w", name, err)
	}
	if err := out.Sync(); err != nil {
		return 0, err
	}
	return n, out.Close()
}

// cleanup removes the files copyIn made (those still the same inode), after
// a failure.
func (d *outDir) cleanup() {
	for name, id := range d.made {
		var st unix.Stat_t
		if unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Dev == id[0] && st.Ino == id[1] {
			unix.Unlinkat(d.fd, name, 0)
		}
	}
	d.made = map[string][2]uint64{}
}

// sync flushes the directory entries.
func (d *outDir) sync() error { return unix.Fsync(d.fd) }

// chunk is the unit of sparse copying: an all-zero chunk is skipped.
const chunk = 64 << 10

// copySparse copies src to dst (empty, fresh) keeping src's holes
// (SEEK_DATA/SEEK_HOLE) and making holes of all-zero chunks, so a mostly
// empty file system image stays sparse. It returns src's size.
func copySparse(dst, src *os.File) (int64, error) {
	fi, err := src.Stat()
	if err != nil {
		return 0, err
	}
	size := fi.Size()
	buf := make([]byte, chunk)
	zero := make([]byte, chunk)
	sfd := int(src.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(sfd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		} else if err != nil {
			data = off // no SEEK_DATA here: copy everything
		}
		hole, err := unix.Seek(sfd, data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		for pos := data; pos < hole; {
			n := min(int64(chunk), hole-pos)
			b := buf[:n]
			if _, err := src.ReadAt(b, pos); err != nil && !errors.Is(err, io.EOF) {
				return 0, err
			}
			if !bytes.Equal(b, zero[:n]) {
				if _, err := dst.WriteAt(b, pos); err != nil {
					return 0, err
				}
			}
			pos += n
		}
		off = hole
	}
	if err := dst.Truncate(size); err != nil {
		return 0, err
	}
	return size, nil
}
