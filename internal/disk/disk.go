// Package disk makes a VM's disks from its image, unprivileged and without
// mounting anything: the system overlay over the read-only rootfs, and the
// work disk cloned from the image's work-seed (or built from scratch when
// the image has none) and grown to the VM's size, with the install's SSH
// key in /root/.ssh/authorized_keys.
package disk

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/runner"
)

// Overlay strategies, best first; all are files, made without root.
const (
	StrategyReflink    = "reflink"
	StrategyQcow2      = "qcow2"
	StrategySparseCopy = "sparse-copy"
)

// ErrUnsupported: the strategy does not work on this file system or VMM.
var ErrUnsupported = errors.New("strategy not supported here")

// Overlay makes the VM's system disk in dir from base by strategy and
// returns its path and format ("raw" or "qcow2").
func Overlay(ctx context.Context, r runner.Runner, strategy, base, dir string) (path, format string, err error) {
	switch strategy {
	case StrategyReflink:
		path = filepath.Join(dir, "root.ext4")
		if err := Reflink(base, path); err != nil {
			return "", "", err
		}
		return path, "raw", nil
	case StrategyQcow2:
		path = filepath.Join(dir, "root.qcow2")
		if _, err := r.Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base, path); err != nil {
			return "", "", fmt.Errorf("qcow2 overlay: %w", err)
		}
		return path, "qcow2", nil
	case StrategySparseCopy:
		path = filepath.Join(dir, "root.ext4")
		if err := CopySparse(base, path); err != nil {
			return "", "", fmt.Errorf("sparse copy of %s: %w", base, err)
		}
		return path, "raw", nil
	}
	return "", "", fmt.Errorf("overlay strategy %q: %w", strategy, ErrUnsupported)
}

// Reflink clones src to a new dst sharing its blocks (FICLONE): instant on
// btrfs, xfs and the like; ErrUnsupported elsewhere (ext4).
func Reflink(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err != nil {
		out.Close()
		os.Remove(dst)
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY) {
			return fmt.Errorf("reflink %s: %w (%v)", src, ErrUnsupported, err)
		}
		return fmt.Errorf("reflink %s: %w", src, err)
	}
	return out.Close()
}

// CopySparse copies src to a new file dst, leaving holes where src has
// all-zero 64 KiB blocks, so a mostly empty disk image stays small.
func CopySparse(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := copySparse(in, out, st.Size()); err != nil {
		out.Close()
		os.Remove(dst)
		return err
	}
	return out.Close()
}

// copySparse copies the data extents of in (SEEK_DATA/SEEK_HOLE), so the
// holes of a sparse image are neither read nor written; within an extent,
// all-zero blocks are skipped too. File systems without SEEK_DATA report the
// whole file as one extent.
func copySparse(in *os.File, out *os.File, size int64) error {
	buf := make([]byte, 1<<20)
	var off int64
	for off < size {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) { // only a hole is left
				break
			}
			data = off // no SEEK_DATA: copy everything
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		for pos := data; pos < hole; {
			n, rerr := in.ReadAt(buf[:min(int64(len(buf)), hole-pos)], pos)
			if n > 0 && !allZero(buf[:n]) {
				if _, err := out.WriteAt(buf[:n], pos); err != nil {
					return err
				}
			}
			pos += int64(n)
			if rerr == io.EOF {
				break
			}
			if rerr != nil {
				return rerr
			}
		}
		off = hole
	}
	return out.Truncate(size)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// WorkDisk makes the VM's work disk at out, size bytes, with keys installed
// (InstallKeys): the install's key in /root/.ssh/authorized_keys and the
// VM's host key under /root/.banger.
//
// With a seed (the image's /root as a small ext4) it is a clone of the seed
// (reflink when the file system can, else a sparse copy) checked with
// e2fsck and grown with resize2fs. Without a
// seed it is the slow way: /root is copied out of the image's rootfs and a
// new ext4 of the full size is made from it.
func WorkDisk(ctx context.Context, r runner.Runner, seed, rootfs, out string, size int64, keys Keys) (fromSeed bool, err error) {
	return WorkDiskCached(ctx, r, seed, rootfs, "", out, size, keys)
}

// WorkDiskCached is WorkDisk with a cache of grown seeds in cacheDir (the
// image's directory): the first VM of a size pays for growing the seed and
// writing the install's key into it; later ones clone that copy and only
// write their own host key. cacheDir "" disables the cache.
func WorkDiskCached(ctx context.Context, r runner.Runner, seed, rootfs, cacheDir, out string, size int64, keys Keys) (fromSeed bool, err error) {
	if seed != "" && cacheDir != "" {
		grown, err := grownSeed(ctx, r, seed, cacheDir, size, keys.AuthorizedKey)
		if err != nil {
			return true, err
		}
		if err := clone(grown, out); err != nil {
			return true, err
		}
		return true, InstallHostKey(ctx, r, out, keys.HostKey)
	}
	if seed != "" {
		if err := clone(seed, out); err != nil {
			return false, fmt.Errorf("cloning the work-seed: %w", err)
		}
		st, err := os.Stat(out)
		if err != nil {
			return true, err
		}
		if size > st.Size() {
			if err := os.Truncate(out, size); err != nil {
				return true, err
			}
			// resize2fs wants a freshly checked file system; exit status 1
			// (errors corrected) is fine for a copy being prepared.
			if _, err := r.Run(ctx, "e2fsck", "-f", "-y", out); err != nil && !fsckFixed(err) {
				return true, fmt.Errorf("checking work disk: %w", err)
			}
			if _, err := r.Run(ctx, "resize2fs", out); err != nil {
				return true, fmt.Errorf("growing work disk: %w", err)
			}
		}
		fromSeed = true
	} else {
		scratch, err := os.MkdirTemp(filepath.Dir(out), ".root-")
		if err != nil {
			return false, err
		}
		defer os.RemoveAll(scratch)
		if err := Ext4FromRoot(ctx, r, rootfs, out, strconv.FormatInt(size/1024, 10)+"k", scratch); err != nil {
			return false, err
		}
	}
	return fromSeed, InstallKeys(ctx, r, out, keys)
}

// clone copies src to a new dst: a reflink where the file system can, else
// a sparse copy.
func clone(src, dst string) error {
	if err := Reflink(src, dst); err != nil {
		if !errors.Is(err, ErrUnsupported) {
			return err
		}
		if err := CopySparse(src, dst); err != nil {
			return fmt.Errorf("copying %s: %w", src, err)
		}
	}
	return nil
}

// GrownSeedPattern matches the cached grown seeds of an image directory
// (remove them when the seed changes).
const GrownSeedPattern = "work-seed-*.cache.ext4"

// grownSeed returns the cached copy of seed grown to size with the
// authorized key in it, making it first when missing. The name carries the
// size, the seed's size and modification time and a hash of the key, so a
// changed seed or key never reuses a stale copy.
func grownSeed(ctx context.Context, r runner.Runner, seed, cacheDir string, size int64, authorizedKey string) (string, error) {
	st, err := os.Stat(seed)
	if err != nil {
		return "", err
	}
	key, err := os.ReadFile(authorizedKey)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(append([]byte(fmt.Sprintf("%d:%d:", st.Size(), st.ModTime().UnixNano())), key...))
	p := filepath.Join(cacheDir, fmt.Sprintf("work-seed-%d-%s.cache.ext4", size, hex.EncodeToString(sum[:6])))
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	tmp, err := os.CreateTemp(cacheDir, ".grown-*.ext4")
	if err != nil {
		return "", err
	}
	tmp.Close()
	os.Remove(tmp.Name())
	defer os.Remove(tmp.Name())
	if _, err := WorkDisk(ctx, r, seed, "", tmp.Name(), size, Keys{AuthorizedKey: authorizedKey}); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return "", err
	}
	return p, nil
}

// InstallHostKey writes the VM's host key pair (hostKey and hostKey+".pub")
// to /.banger on the disk with one debugfs run; "" does nothing.
func InstallHostKey(ctx context.Context, r runner.Runner, disk, hostKey string) error {
	if hostKey == "" {
		return nil
	}
	if strings.ContainsAny(hostKey, " \t\n\"'\\") {
		return fmt.Errorf("key path %q: debugfs cannot take whitespace or quotes", hostKey)
	}
	cmds := hostKeyCommands(hostKey)
	cmdFile := disk + ".debugfs"
	if err := os.WriteFile(cmdFile, []byte(strings.Join(cmds, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(cmdFile)
	if _, err := r.Run(ctx, "debugfs", "-w", "-f", cmdFile, disk); err != nil {
		return fmt.Errorf("writing the host key: %w", err)
	}
	return nil
}

// Ext4FromRoot makes out, an ext4 of size (mke2fs's syntax: "16M",
// "4194304k") holding the /root directory of the ext4 image rootfs, without
// mounting anything and without root: debugfs copies /root out, mke2fs -d
// builds the file system from it, and debugfs then gives every inode to
// root and /root (the new file system's top) mode 0700. scratch is a
// private directory for the copy.
func Ext4FromRoot(ctx context.Context, r runner.Runner, rootfs, out, size, scratch string) error {
	if strings.ContainsAny(scratch, " \t\n\"'\\") {
		return fmt.Errorf("scratch directory %q: debugfs commands cannot quote it", scratch)
	}
	if _, err := r.Run(ctx, "debugfs", "-R", "rdump /root "+scratch, rootfs); err != nil {
		return fmt.Errorf("copying /root out of %s: %w", rootfs, err)
	}
	tree := filepath.Join(scratch, "root")
	if st, err := os.Stat(tree); err != nil || !st.IsDir() {
		return fmt.Errorf("%s has no /root directory", rootfs)
	}
	// "-T default": 4 KiB blocks and an inode per 16 KiB at any size, so
	// a small seed grows into the same layout a full-size disk gets.
	if _, err := r.Run(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-T", "default", "-L", "banger-work", "-m", "0",
		"-E", "root_owner=0:0", "-d", tree, out, size); err != nil {
		return fmt.Errorf("making %s: %w", out, err)
	}
	cmds, err := chownCommands(tree)
	if err != nil {
		return err
	}
	cmds = append(cmds, "sif / mode 040700")
	cmdFile := filepath.Join(scratch, "chown.debugfs")
	if err := os.WriteFile(cmdFile, []byte(strings.Join(cmds, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	if _, err := r.Run(ctx, "debugfs", "-w", "-f", cmdFile, out); err != nil {
		return fmt.Errorf("setting owners in %s: %w", out, err)
	}
	return nil
}

// chownCommands lists the debugfs commands that make every entry under tree
// owned by root. Names debugfs cannot take unquoted are refused.
func chownCommands(tree string) ([]string, error) {
	var cmds []string
	err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(tree, p)
		if rel == "." {
			return nil
		}
		if strings.ContainsAny(rel, " \t\n\"'\\") {
			return fmt.Errorf("cannot set the owner of %q (whitespace or quotes in the name)", rel)
		}
		rel = "/" + filepath.ToSlash(rel)
		cmds = append(cmds, "sif "+rel+" uid 0", "sif "+rel+" gid 0")
		return nil
	})
	return cmds, err
}

// Keys are what a work disk carries for SSH: the install's public key
// (root's authorized_keys) and, optionally, the VM's own host key pair
// (HostKey is the private half; HostKey+".pub" the public one), which the
// guest's banger-init installs for sshd, so the host knows it in advance.
type Keys struct {
	AuthorizedKey string
	HostKey       string
}

// put and mkdir are debugfs commands for a root-owned file and directory.
func put(dir, name, src, mode string) []string {
	return []string{
		"rm " + dir + "/" + name,
		"write " + src + " " + dir + "/" + name,
		"sif " + dir + "/" + name + " mode " + mode,
		"sif " + dir + "/" + name + " uid 0",
		"sif " + dir + "/" + name + " gid 0",
	}
}

func mkdir(dir string) []string {
	return []string{"mkdir " + dir, "sif " + dir + " mode 040700", "sif " + dir + " uid 0", "sif " + dir + " gid 0"}
}

func hostKeyCommands(hostKey string) []string {
	cmds := mkdir(".banger")
	cmds = append(cmds, put(".banger", "ssh_host_ed25519_key", hostKey, "0100600")...)
	return append(cmds, put(".banger", "ssh_host_ed25519_key.pub", hostKey+".pub", "0100644")...)
}

// InstallKeys writes keys onto the ext4 image disk with debugfs (no mount,
// no root): /.ssh/authorized_keys (0600) and /.banger/ssh_host_ed25519_key
// (0600) with its .pub (0644), all owned by root; the disk is the guest's
// /root.
func InstallKeys(ctx context.Context, r runner.Runner, disk string, keys Keys) error {
	for _, p := range []string{keys.AuthorizedKey, keys.HostKey} {
		if strings.ContainsAny(p, " \t\n\"'\\") {
			return fmt.Errorf("key path %q: debugfs cannot take whitespace or quotes", p)
		}
	}
	cmds := append(mkdir(".ssh"), put(".ssh", "authorized_keys", keys.AuthorizedKey, "0100600")...)
	if keys.HostKey != "" {
		cmds = append(cmds, hostKeyCommands(keys.HostKey)...)
	}
	cmdFile := disk + ".debugfs"
	if err := os.WriteFile(cmdFile, []byte(strings.Join(cmds, "\n")+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(cmdFile)
	// debugfs reports per-command errors (mkdir of an existing directory,
	// rm of a missing file) on stderr and goes on; the result is checked
	// below.
	if _, err := r.Run(ctx, "debugfs", "-w", "-f", cmdFile, disk); err != nil {
		return fmt.Errorf("writing keys: %w", err)
	}
	out, err := r.Run(ctx, "debugfs", "-R", "cat /.ssh/authorized_keys", disk)
	if err != nil {
		return fmt.Errorf("reading back authorized_keys: %w", err)
	}
	want, err := os.ReadFile(keys.AuthorizedKey)
	if err != nil {
		return err
	}
	if !strings.Contains(string(out), strings.TrimSpace(string(want))) {
		return fmt.Errorf("authorized_keys on %s does not hold the key", disk)
	}
	return nil
}

// fsckFixed reports whether e2fsck's failure is exit status 1: errors were
// found and corrected.
func fsckFixed(err error) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee) && ee.ExitCode() == 1
}

// WriteConfigDisk writes a VM's config disk (guest.ConfigDisk) at out with
// the host key pair at hostKey and hostKey+".pub": mode 0600, written to a
// temporary name and renamed, so a crash never leaves half of one. shares
// are the host folders the guest mounts.
func WriteConfigDisk(out, hostKey string, shares []guest.Share) error {
	priv, err := os.ReadFile(hostKey)
	if err != nil {
		return err
	}
	pub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		return err
	}
	data, err := guest.ConfigDisk(priv, pub, shares)
	if err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("writing the config disk: %w", err)
	}
	if err := os.Rename(tmp, out); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing the config disk: %w", err)
	}
	return nil
}
