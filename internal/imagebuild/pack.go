package imagebuild

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Sizes of the packed file systems.
const (
	// rootfsHeadroom and rootfsSlackPct size an automatic rootfs: the
	// tree's apparent size plus 20% plus 64 MiB (a 293 MiB tree gives 416
	// MiB, 287 MiB used in the guest). The daemon grows each VM's copy as
	// needed.
	rootfsHeadroom = 64 << 20
	rootfsSlackPct = 20
	// workSeedSize is the work-seed's size unless /root needs more; each VM
	// grows its clone (resize2fs) to its disk size.
	workSeedSize = 16 << 20
)

// devNode is an entry of a built image's /dev: what debootstrap's
// setup_devices_simple and mmdebstrap's device table make. The guest
// mounts a devtmpfs over it at boot (the mini initrd and initramfs-tools
// both move theirs there), so this is only what the image holds on disk.
type devNode struct {
	name         string
	major, minor int // character device, when target is ""
	target       string
	dir          bool
}

var devNodes = []devNode{
	{name: "console", major: 5, minor: 1},
	{name: "fd", target: "/proc/self/fd"},
	{name: "full", major: 1, minor: 7},
	{name: "null", major: 1, minor: 3},
	{name: "ptmx", major: 5, minor: 2},
	{name: "pts", dir: true},
	{name: "random", major: 1, minor: 8},
	{name: "shm", dir: true},
	{name: "stderr", target: "/proc/self/fd/2"},
	{name: "stdin", target: "/proc/self/fd/0"},
	{name: "stdout", target: "/proc/self/fd/1"},
	{name: "tty", major: 5, minor: 0},
	{name: "urandom", major: 1, minor: 9},
	{name: "zero", major: 1, minor: 5},
}

// devRequests is the debugfs script that makes devNodes' character devices
// (mode 0666, root's) in an image whose /dev holds the rest: a user
// namespace may not mknod, debugfs writes the inodes into the image.
func devRequests() string {
	var b strings.Builder
	b.WriteString("cd /dev\n")
	for _, d := range devNodes {
		if d.target == "" && !d.dir {
			fmt.Fprintf(&b, "mknod %s c %d %d\nsif %s mode 020666\n", d.name, d.major, d.minor, d.name)
		}
	}
	return b.String()
}

// mkfsArgv makes an ext4 of size bytes (whole MiB) at img from the
// directory src, without mounting anything; every inode keeps its owner
// from src, and the root directory is root's. "-T default" whatever the
// size: a 16 MiB work-seed would otherwise get mke2fs's "small" layout (1
// KiB blocks, an inode per 4 KiB), which every VM's work disk grown from it
// would keep: 513 block groups and four times the inodes for 4 GiB.
func mkfsArgv(label, src, img string, size int64) []string {
	return []string{"mke2fs", "-q", "-F", "-t", "ext4", "-T", "default", "-L", label, "-m", "0", "-E", "root_owner=0:0",
		"-d", src, img, strconv.FormatInt(size>>20, 10) + "M"}
}

// seedModeArgv sets the mode of img's root directory (debugfs, on the
// unmounted image; the request is built from a number only).
func seedModeArgv(img string, mode fs.FileMode) []string {
	return []string{"debugfs", "-w", "-R", fmt.Sprintf("sif / mode 0%o", 0o40000|uint32(mode.Perm())), img}
}

func roundMiB(n int64) int64 { return (n + 1<<20 - 1) &^ (1<<20 - 1) }

// fdPath names an open file for a command the hook runs, which inherits
// the descriptor (inheritable clears its close-on-exec flag): the command
// reopens the very file, whatever its path. The files so named are the
// hook's own (the tree, its scratch files, a memfd), never the output
// files: those are the daemon's user's, 0600, and a subordinate uid may not
// reopen them; the hook writes them through their descriptors.
func fdPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// scratchFile is an empty file of the hook's own in a fresh 0700 directory
// under dir, with no name by the time it is returned: the name and the
// directory are removed at once (the file lives while it is open, so
// nothing is left behind, whatever ends the hook, and an unlinked file
// cannot be linked back into a directory). Commands reach it through
// fdPath.
func scratchFile(dir, name string) (*os.File, error) {
	d, err := os.MkdirTemp(dir, "banger-pack-")
	if err != nil {
		return nil, fmt.Errorf("making a scratch directory under %s (the build's temp dir; the namespace's root must be able to write there): %w", dir, err)
	}
	defer os.RemoveAll(d)
	if err := os.Chmod(d, 0o700); err != nil {
		return nil, fmt.Errorf("chmod 0700 %s: %w", d, err)
	}
	p := filepath.Join(d, name)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating scratch file %s: %w", p, err)
	}
	if err := os.Remove(p); err != nil {
		f.Close()
		return nil, fmt.Errorf("unlinking scratch file %s: %w", p, err)
	}
	return f, nil
}

func inheritable(fd int) error {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0)
	return err
}

// packed is what pack made.
type packed struct {
	RootfsSize, WorkSeedSize int64
}

// pack turns the configured tree into the image's files: the tree's /root
// becomes work-seed.ext4, the rest rootfs.ext4 (with an empty /root
// mountpoint and a plain /dev), the kernel, its config and the initrd are
// copied out. The file systems are made and checked in scratch files of
// the hook's own (scratchFile) and copied, sparse, into the output files'
// descriptors, which no command is given. The tree is seen through a private mount namespace (the
// hook's): mmdebstrap's /proc, /sys and /dev mounts are detached there and
// tmpfs mounts hide /root and /dev, so mke2fs -d copies what the image
// should hold and mmdebstrap's own cleanup afterwards finds its mounts and
// files as it left them.
func (h *hook) pack(ctx context.Context, c configured) (packed, error) {
	var res packed
	rootFD, err := unix.Openat(h.tree.fd, "root", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return res, fmt.Errorf("opening the tree's /root: %w", err)
	}
	defer unix.Close(rootFD)
	var st unix.Stat_t
	if err := unix.Fstat(rootFD, &st); err != nil {
		return res, fmt.Errorf("fstat of the tree's /root: %w", err)
	}
	homeMode := fs.FileMode(st.Mode & 0o777)

	// The work-seed: /root, made 0700 root's (mke2fs 1.47.0 makes the
	// root directory 0755 and has no root_perms).
	seedBytes, err := apparentSize(h.path + "/root")
	if err != nil {
		return res, err
	}
	seedSize := max(int64(workSeedSize), roundMiB(seedBytes*(100+rootfsSlackPct)/100+8<<20))
	seed, err := scratchFile(h.params.Scratch, OutWorkSeed)
	if err != nil {
		return res, err
	}
	defer seed.Close()
	rootfs, err := scratchFile(h.params.Scratch, OutRootfs)
	if err != nil {
		return res, err
	}
	defer rootfs.Close()
	seedImg, rootfsImg := int(seed.Fd()), int(rootfs.Fd())
	for _, fd := range []int{rootFD, seedImg, rootfsImg} {
		if err := inheritable(fd); err != nil {
			return res, fmt.Errorf("passing descriptor %d to the commands: %w", fd, err)
		}
	}
	if err := h.cmd(ctx, fmt.Sprintf("work-seed.ext4: %d MiB from /root", seedSize>>20),
		mkfsArgv("banger-work", fdPath(rootFD), fdPath(seedImg), seedSize)...); err != nil {
		return res, err
	}
	if err := h.cmd(ctx, fmt.Sprintf("work-seed.ext4: root directory mode %04o, as /root", homeMode),
		seedModeArgv(fdPath(seedImg), homeMode)...); err != nil {
		return res, err
	}

	// The rootfs's view of the tree.
	h.logf("hiding /root and /dev, detaching mmdebstrap's mounts (in the hook's own mount namespace)")
	if err := h.hideForPack(homeMode); err != nil {
		return res, fmt.Errorf("preparing the tree for mke2fs: %w", err)
	}
	treeBytes, err := apparentSize(h.path)
	if err != nil {
		return res, err
	}
	rootfsSize := h.params.RootfsSize
	if rootfsSize == 0 {
		rootfsSize = roundMiB(treeBytes*(100+rootfsSlackPct)/100 + rootfsHeadroom)
	} else if need := treeBytes * 110 / 100; rootfsSize < need {
		return res, fmt.Errorf("rootfs size %d MiB: the tree holds %d MiB, so the rootfs needs at least %d MiB (set image.rootfs_size or --rootfs-size)",
			rootfsSize>>20, treeBytes>>20, roundMiB(need)>>20)
	}
	if err := h.cmd(ctx, fmt.Sprintf("rootfs.ext4: %d MiB from a %d MiB tree", rootfsSize>>20, treeBytes>>20),
		mkfsArgv("banger-root", h.path, fdPath(rootfsImg), rootfsSize)...); err != nil {
		return res, err
	}
	script, err := memfile("banger-devices", []byte(devRequests()))
	if err != nil {
		return res, err
	}
	defer script.Close()
	if err := h.cmd(ctx, "rootfs.ext4: device nodes in /dev",
		"debugfs", "-w", "-f", fdPath(int(script.Fd())), fdPath(rootfsImg)); err != nil {
		return res, err
	}
	for _, c := range []struct {
		name     string
		src, dst *os.File
	}{{OutRootfs, rootfs, h.out.rootfs}, {OutWorkSeed, seed, h.out.seed}} {
		if err := h.cmd(ctx, "checking "+c.name, "e2fsck", "-fn", fdPath(int(c.src.Fd()))); err != nil {
			return res, err
		}
		if _, err := copySparse(c.dst, c.src); err != nil {
			return res, fmt.Errorf("copying %s into the image directory: %w", c.name, err)
		}
	}

	// Kernel, its config, the initrd.
	kver := c.KernelVersion
	copies := []struct {
		name string
		dst  *os.File
		src  func() (io.ReadCloser, error)
	}{
		{OutKernel, h.out.kernel, func() (io.ReadCloser, error) { return h.tree.root.Open("boot/vmlinuz-" + kver) }},
		{OutKernelConfig, h.out.config, func() (io.ReadCloser, error) { return h.tree.root.Open("boot/config-" + kver) }},
		{OutInitrd, h.out.initrd, func() (io.ReadCloser, error) {
			if c.Initrd == InitrdMini {
				return io.NopCloser(bytes.NewReader(c.mini)), nil
			}
			return h.tree.root.Open("boot/initrd.img-" + kver)
		}},
	}
	for _, cp := range copies {
		src, err := cp.src()
		if err != nil {
			return res, fmt.Errorf("opening the %s: %w", cp.name, err)
		}
		n, err := copyInto(cp.dst, src)
		src.Close()
		if err != nil {
			return res, fmt.Errorf("writing %s: %w", cp.name, err)
		}
		h.logf("%s: %d bytes", cp.name, n)
	}
	for _, f := range []*os.File{h.out.rootfs, h.out.seed, h.out.kernel, h.out.initrd, h.out.config} {
		if err := f.Sync(); err != nil {
			return res, fmt.Errorf("syncing %s: %w", f.Name(), err)
		}
	}
	res.RootfsSize, res.WorkSeedSize = rootfsSize, seedSize
	return res, nil
}

// hideForPack makes the tree look, in this mount namespace, as the rootfs
// must: every mount under it detached (mmdebstrap's /proc, /sys, /dev
// nodes, devpts and shm), then an empty tmpfs (mode as /root's) over /root
// and a tmpfs over /dev holding the directories and symlinks of devNodes.
// Mount points are opened from the tree without following symlinks and
// mounted on through their descriptors, so a symlink in the tree cannot
// send a mount elsewhere. Only the two tmpfs mounts may be left.
func (h *hook) hideForPack(homeMode fs.FileMode) error {
	for range 64 {
		ms := h.mnt.mountsUnder(h.path)
		if len(ms) == 0 {
			break
		}
		top := ms[0]
		for _, m := range ms {
			if len(m) < len(top) {
				top = m
			}
		}
		if err := h.mnt.detach(top); err != nil {
			return fmt.Errorf("detaching %s: %w", top, err)
		}
	}
	if left := h.mnt.mountsUnder(h.path); len(left) > 0 {
		return fmt.Errorf("mounts left under the tree: %q", left)
	}
	for _, m := range []struct {
		dir  string
		mode fs.FileMode
	}{{"root", homeMode}, {"dev", 0o755}} {
		fd, err := unix.Openat(h.tree.fd, m.dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening /%s in the tree (not a directory?): %w", m.dir, err)
		}
		err = h.mnt.tmpfs(fdPath(fd), m.mode)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("a tmpfs over /%s: %w", m.dir, err)
		}
	}
	dev, err := unix.Openat(h.tree.fd, "dev", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(dev)
	for _, d := range devNodes {
		switch {
		case d.dir:
			if err := unix.Mkdirat(dev, d.name, 0o755); err != nil {
				return err
			}
			if err := chmodAt(dev, d.name, 0o755); err != nil {
				return err
			}
		case d.target != "":
			if err := unix.Symlinkat(d.target, dev, d.name); err != nil {
				return err
			}
		}
	}
	want := []string{h.path + "/dev", h.path + "/root"}
	if got := h.mnt.mountsUnder(h.path); len(got) != len(want) || !sameSet(got, want) {
		return fmt.Errorf("mounts under the tree are %q, want only %q", got, want)
	}
	return nil
}

func chmodAt(dirfd int, name string, mode uint32) error {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Fchmod(fd, mode)
}

func sameSet(a, b []string) bool {
	seen := map[string]int{}
	for _, x := range a {
		seen[x]++
	}
	for _, x := range b {
		seen[x]--
	}
	for _, n := range seen {
		if n != 0 {
			return false
		}
	}
	return true
}

// memfile is an anonymous file holding data, inheritable by the commands
// the hook runs (debugfs -f reads its requests from it): nothing is
// written to any file system.
func memfile(name string, data []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, 0)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// apparentSize is du --apparent-size: the sizes of every file, directory
// and symlink under dir, a hard-linked file counted once.
func apparentSize(dir string) (int64, error) {
	var total int64
	seen := map[[2]uint64]bool{}
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 && !fi.IsDir() {
			id := [2]uint64{st.Dev, st.Ino}
			if seen[id] {
				return nil
			}
			seen[id] = true
		}
		total += fi.Size()
		return nil
	})
	return total, err
}

// copyInto writes src into dst (an empty output file) from its start,
// keeping runs of zeros as holes when src is a file (copySparse), and
// returns the size.
func copyInto(dst *os.File, src io.Reader) (int64, error) {
	if f, ok := src.(*os.File); ok {
		return copySparse(dst, f)
	}
	if _, err := dst.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	n, err := io.Copy(dst, src)
	if err != nil {
		return n, err
	}
	return n, dst.Truncate(n)
}

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
