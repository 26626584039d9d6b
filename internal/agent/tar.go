package agent

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/rpc"
)

// The tar helpers both ends use, so that a copy behaves the same into the
// guest and out of it: WriteTar on the sending side, ExtractTar on the
// receiving one.

// TreeSize reports whether path (a symlink at the top followed) is a
// directory and the total size of the regular files WriteTar would send.
func TreeSize(p string) (dir bool, size int64, err error) {
	root, top, err := resolveTop(p)
	if err != nil {
		return false, 0, err
	}
	if !top.IsDir() {
		if top.Mode().IsRegular() {
			size = top.Size()
		}
		return false, size, nil
	}
	err = filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			size += fi.Size()
		}
		return nil
	})
	return true, size, err
}

// resolveTop follows a symlink at the top of a copy.
func resolveTop(p string) (string, fs.FileInfo, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return "", nil, err
	}
	if lfi, err := os.Lstat(p); err == nil && lfi.Mode()&fs.ModeSymlink != 0 {
		if p, err = filepath.EvalSymlinks(p); err != nil {
			return "", nil, err
		}
	}
	return p, fi, nil
}

// WriteTar writes the tree at p as a tar whose entries are name (p itself)
// and name/... (what it holds), in lexical order: regular files, directories
// and symlinks (as links), each with its permission bits (setuid, setgid
// and sticky included), numeric uid and gid, and mtime (PAX, to the
// nanosecond). A symlink at the top is followed. Sockets, devices and
// fifos are skipped. A file that changes size while it is read is an
// error.
func WriteTar(w io.Writer, p, name string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	root, top, err := resolveTop(p)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(w)
	buf := make([]byte, 256<<10)
	err = filepath.WalkDir(root, func(q string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi := top
		entry := name
		if q != root {
			if fi, err = d.Info(); err != nil {
				return err
			}
			rel, err := filepath.Rel(root, q)
			if err != nil {
				return err
			}
			entry = name + "/" + filepath.ToSlash(rel)
		}
		return writeEntry(tw, q, entry, fi, buf)
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// unixPerm is fi's permission bits as the kernel has them (07777).
func unixPerm(m fs.FileMode) int64 {
	perm := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		perm |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		perm |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		perm |= 0o1000
	}
	return perm
}

func writeEntry(tw *tar.Writer, p, entry string, fi fs.FileInfo, buf []byte) error {
	hdr := &tar.Header{Name: entry, Mode: unixPerm(fi.Mode()), ModTime: fi.ModTime(), Format: tar.FormatPAX}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		hdr.Uid, hdr.Gid = int(st.Uid), int(st.Gid)
	}
	switch {
	case fi.Mode().IsRegular():
		hdr.Typeflag = tar.TypeReg
		hdr.Size = fi.Size()
	case fi.IsDir():
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
	case fi.Mode()&fs.ModeSymlink != 0:
		hdr.Typeflag = tar.TypeSymlink
		target, err := os.Readlink(p)
		if err != nil {
			return err
		}
		hdr.Linkname = target
	default:
		return nil // a socket, device or fifo: nothing to copy
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if hdr.Typeflag != tar.TypeReg {
		return nil
	}
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	n, err := io.CopyBuffer(onlyWriter{tw}, onlyReader{io.LimitReader(f, hdr.Size)}, buf)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if n != hdr.Size {
		return fmt.Errorf("%s shrank from %d to %d bytes while it was copied", p, hdr.Size, n)
	}
	return nil
}

// ExtractTar extracts a tar made as WriteTar makes it (first entry name,
// all others under name/) into dir, whole or not at all: it extracts into a
// new temporary directory inside dir, refusing any entry that would leave
// it (an absolute name, a ".." component, a name outside name/, an entry
// whose parent is not a directory of the tar, so nothing is written
// through a symlink), duplicates, sparse entries and entry types other
// than file, directory and symlink; it keeps modes, mtimes and (when run as root)
// numeric ownership. It commits only once r reaches EOF without an error,
// so a caller feeding it through an io.Pipe aborts it by closing the pipe
// with an error. Then it renames name into place: a file or symlink
// replaces a file or symlink of that name; an existing directory, or a
// file where name is a directory, is a conflict (rpc.ErrConflict), and so
// is dir/name being a directory already, which is checked before r is read.
// On any failure nothing is left in dir. It returns the number of regular
// files and their bytes.
func ExtractTar(r io.Reader, dir, name string) (files int, size int64, err error) {
	return extractTar(r, dir, name, name, true)
}

// extractTar is ExtractTar of a tar whose top entry is tarName, placed in
// dir as name. A tar from a source not trusted with this machine's users
// (trusted false: the guest, for the host) gets no owners (its files are
// the caller's) and loses setuid and setgid bits.
func extractTar(r io.Reader, dir, tarName, name string, trusted bool) (files int, size int64, err error) {
	if err := CheckName(name); err != nil {
		return 0, 0, err
	}
	if err := CheckName(tarName); err != nil {
		return 0, 0, err
	}
	if fi, err := os.Stat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, 0, rpc.Errorf(rpc.ErrNotFound, "directory %s does not exist", dir)
		}
		return 0, 0, err
	} else if !fi.IsDir() {
		return 0, 0, rpc.Errorf(rpc.ErrBadRequest, "%s is not a directory", dir)
	}
	dst := filepath.Join(dir, name)
	if fi, err := os.Lstat(dst); err == nil && fi.IsDir() {
		return 0, 0, rpc.Errorf(rpc.ErrConflict, "%s is a directory already", dst)
	}
	tmp, err := os.MkdirTemp(dir, ".banger-copy-")
	if err != nil {
		return 0, 0, err
	}
	committed := false
	defer func() {
		if !committed {
			forceRemoveAll(tmp)
		}
	}()

	x := extractor{tmp: tmp, name: tarName, root: trusted && os.Geteuid() == 0, trusted: trusted, dirs: map[string]bool{}, seen: map[string]bool{},
		buf: make([]byte, 256<<10)}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, 0, tarErr(err)
		}
		if err := x.entry(tr, hdr); err != nil {
			return 0, 0, err
		}
	}
	if len(x.seen) == 0 {
		return 0, 0, rpc.Errorf(rpc.ErrBadRequest, "the tar holds no entry")
	}
	// Commit only at a clean end of the stream (anything after the tar's
	// trailer is read and dropped).
	if _, err := io.CopyBuffer(io.Discard, onlyReader{r}, x.buf); err != nil {
		return 0, 0, err
	}
	// Directories last, deepest first, so that their contents do not
	// change their mtimes; name itself after the rename.
	for i := len(x.dirMeta) - 1; i >= 1; i-- {
		if err := x.setMeta(x.dirMeta[i].target, x.dirMeta[i].hdr, false); err != nil {
			return 0, 0, err
		}
	}
	src := filepath.Join(tmp, tarName)
	if x.topDir {
		if err := renameNoReplace(src, dst); err != nil {
			return 0, 0, err
		}
	} else {
		if fi, err := os.Lstat(dst); err == nil && fi.IsDir() {
			return 0, 0, rpc.Errorf(rpc.ErrConflict, "%s is a directory already", dst)
		}
		if err := os.Rename(src, dst); err != nil {
			return 0, 0, renameErr(err, dst)
		}
	}
	committed = true
	os.Remove(tmp)
	if x.topDir {
		if err := x.setMeta(dst, x.dirMeta[0].hdr, false); err != nil {
			return x.files, x.bytes, err
		}
	}
	return x.files, x.bytes, nil
}

type extractor struct {
	tmp, name string
	root      bool            // chown entries
	trusted   bool            // keep setuid and setgid
	dirs      map[string]bool // directories made, by entry name
	seen      map[string]bool
	dirMeta   []dirEntry
	topDir    bool
	files     int
	bytes     int64
	buf       []byte
}

type dirEntry struct {
	target string
	hdr    *tar.Header
}

func tarErr(err error) error {
	if errors.Is(err, tar.ErrHeader) || errors.Is(err, tar.ErrFieldTooLong) || errors.Is(err, tar.ErrInsecurePath) {
		return rpc.Errorf(rpc.ErrBadRequest, "reading the tar: %v", err)
	}
	return fmt.Errorf("reading the tar: %w", err)
}

// entryName checks a tar entry's name and returns it without a trailing
// slash.
func (x *extractor) entryName(raw string) (string, error) {
	n := strings.TrimSuffix(raw, "/")
	bad := func(why string) error {
		return rpc.Errorf(rpc.ErrBadRequest, "tar entry %q %s", raw, why)
	}
	switch {
	case n == "":
		return "", bad("has no name")
	case strings.HasPrefix(n, "/"):
		return "", bad("is absolute")
	case strings.IndexByte(n, 0) >= 0:
		return "", bad("holds a NUL byte")
	}
	for _, c := range strings.Split(n, "/") {
		if c == ".." {
			return "", bad("leaves its directory")
		}
	}
	if path.Clean(n) != n {
		return "", bad("is not a clean path")
	}
	if n != x.name && !strings.HasPrefix(n, x.name+"/") {
		return "", bad(fmt.Sprintf("is not %s or under it", x.name))
	}
	return n, nil
}

func (x *extractor) entry(tr *tar.Reader, hdr *tar.Header) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	// A sparse entry's holes read as zeros that the stream never carried:
	// a few bytes could fill the disk. WriteTar makes none.
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return rpc.Errorf(rpc.ErrBadRequest, "tar entry %q is sparse; sparse files are not copied", hdr.Name)
		}
	}
	n, err := x.entryName(hdr.Name)
	if err != nil {
		return err
	}
	if len(x.seen) == 0 && n != x.name {
		return rpc.Errorf(rpc.ErrBadRequest, "the tar starts with %q, not %q", hdr.Name, x.name)
	}
	if x.seen[n] {
		return rpc.Errorf(rpc.ErrBadRequest, "tar entry %q comes twice", hdr.Name)
	}
	x.seen[n] = true
	if n != x.name && !x.dirs[path.Dir(n)] {
		// Its parent is a file or a symlink of the tar, or not in it.
		return rpc.Errorf(rpc.ErrBadRequest, "tar entry %q is not inside a directory of the tar", hdr.Name)
	}
	target := filepath.Join(x.tmp, filepath.FromSlash(n))
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := os.Mkdir(target, 0o700); err != nil {
			return err
		}
		x.dirs[n] = true
		x.dirMeta = append(x.dirMeta, dirEntry{target, hdr})
		if n == x.name {
			x.topDir = true
		}
		return nil
	case tar.TypeReg:
		f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
		if err != nil {
			return err
		}
		w, err := io.CopyBuffer(onlyWriter{f}, onlyReader{tr}, x.buf)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return tarErr(err)
		}
		x.files++
		x.bytes += w
		return x.setMeta(target, hdr, false)
	case tar.TypeSymlink:
		if hdr.Linkname == "" || strings.IndexByte(hdr.Linkname, 0) >= 0 {
			return rpc.Errorf(rpc.ErrBadRequest, "tar entry %q: a symlink to %q", hdr.Name, hdr.Linkname)
		}
		if err := os.Symlink(hdr.Linkname, target); err != nil {
			return err
		}
		return x.setMeta(target, hdr, true)
	}
	return rpc.Errorf(rpc.ErrBadRequest, "tar entry %q is of type %q; only files, directories and symlinks are copied", hdr.Name, hdr.Typeflag)
}

// setMeta gives target the entry's owner (as root), mode and mtime.
func (x *extractor) setMeta(target string, hdr *tar.Header, link bool) error {
	if x.root {
		if err := os.Lchown(target, hdr.Uid, hdr.Gid); err != nil {
			return err
		}
	}
	if !link {
		// After chown, which clears setuid and setgid.
		mode := hdr.Mode
		if !x.trusted {
			mode &^= 0o6000
		}
		if err := os.Chmod(target, fs.FileMode(mode&0o777)|modeBits(mode)); err != nil {
			return err
		}
	}
	if hdr.ModTime.IsZero() {
		return nil
	}
	ts := []unix.Timespec{{Sec: 0, Nsec: unix.UTIME_OMIT}, unix.NsecToTimespec(hdr.ModTime.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, target, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "utimensat", Path: target, Err: err}
	}
	return nil
}

// modeBits turns unix setuid, setgid and sticky bits into fs.FileMode's.
func modeBits(mode int64) fs.FileMode {
	var m fs.FileMode
	if mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// renameNoReplace moves a directory into place unless something has the
// name already.
func renameNoReplace(src, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// A filesystem without RENAME_NOREPLACE: check, then rename.
		if _, lerr := os.Lstat(dst); lerr == nil {
			return rpc.Errorf(rpc.ErrConflict, "%s exists already", dst)
		}
		err = os.Rename(src, dst)
	}
	if err != nil {
		return renameErr(err, dst)
	}
	return nil
}

func renameErr(err error, dst string) error {
	switch {
	case errors.Is(err, unix.EEXIST), errors.Is(err, unix.ENOTEMPTY), errors.Is(err, unix.EISDIR), errors.Is(err, unix.ENOTDIR):
		return rpc.Errorf(rpc.ErrConflict, "%s exists already and is not replaced by what is copied", dst)
	}
	return &fs.PathError{Op: "rename", Path: dst, Err: err}
}

// forceRemoveAll removes a tree even where its directories are read-only.
func forceRemoveAll(p string) {
	filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(q, 0o700)
		}
		return nil
	})
	os.RemoveAll(p)
}
