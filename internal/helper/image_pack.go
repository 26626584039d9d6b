package helper

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
)

// Sizes of the packed file systems.
const (
	// rootfsHeadroom and rootfsSlackPct size an automatic rootfs: the
	// tree's apparent size plus 20% plus 64 MiB (REPORT.md: a 293 MiB tree
	// gives 416 MiB, 287 MiB used in the guest). The daemon grows each VM's
	// copy as needed.
	rootfsHeadroom = 64 << 20
	rootfsSlackPct = 20
	// workSeedSize is the work-seed's size unless /root needs more; each VM
	// grows its clone (resize2fs) to its disk size.
	workSeedSize = 16 << 20
)

// imagePack is image.pack.
func (h *Helper) imagePack(ctx context.Context, caller rpc.PeerCred, p helperapi.ImagePackParams) (helperapi.ImagePackResult, error) {
	var res helperapi.ImagePackResult
	if caller.UID != 0 && caller.UID != p.UID {
		return res, fmt.Errorf("argument uid %d: not the caller's (uid %d); only root may pack for another user: %w", p.UID, caller.UID, rpc.ErrForbidden)
	}
	if err := h.checkUID("uid", p.UID); err != nil {
		return res, err
	}
	if err := h.checkGID(caller, p.GID); err != nil {
		return res, err
	}
	s, done, err := h.beginStep(ctx, caller, helperapi.MethodImagePack, p.BuildID, p.LogPath)
	if err != nil {
		return res, err
	}
	defer done()
	ctx, cancel := context.WithTimeoutCause(ctx, packTimeout, fmt.Errorf("packing took more than %s", packTimeout))
	defer cancel()

	out, err := h.openOutDir(p.OutDir, p.UID, p.GID)
	if err != nil {
		return res, err
	}
	defer out.close()
	names := []string{OutRootfs, OutWorkSeed, OutKernel, OutInitrd, OutKernelConfig}
	for _, n := range names {
		if out.exists(n) {
			return res, fmt.Errorf("argument out_dir %q: %s already exists there (image.pack never overwrites): %w", p.OutDir, n, rpc.ErrConflict)
		}
	}
	st, err := h.readState(p.BuildID)
	if err != nil {
		return res, err
	}
	if st.Step != stepConfigured {
		return res, fmt.Errorf("build %s is at step %q, want %q (image.configure first): %w", p.BuildID, st.Step, stepConfigured, rpc.ErrConflict)
	}

	treePath := h.buildPath(p.BuildID, treeName)
	seedPath := h.buildPath(p.BuildID, seedName)
	t, err := openTree(treePath)
	if err != nil {
		return res, err
	}
	defer t.Close()
	s.logf("moving the tree's /root to the work-seed")
	homeMode, err := t.moveRoot(seedPath)
	if err != nil {
		return res, s.fail("moving /root out of the tree", err)
	}

	treeBytes, err := apparentSize(treePath)
	if err != nil {
		return res, err
	}
	rootfsSize := p.RootfsSize
	if rootfsSize == 0 {
		rootfsSize = roundMiB(treeBytes*(100+rootfsSlackPct)/100 + rootfsHeadroom)
	} else if need := treeBytes * 110 / 100; rootfsSize < need {
		return res, fmt.Errorf("argument rootfs_size %d: the tree holds %d MiB, so the rootfs needs at least %d MiB: %w",
			p.RootfsSize, treeBytes>>20, roundMiB(need)>>20, rpc.ErrBadRequest)
	}
	seedBytes, err := apparentSize(seedPath)
	if err != nil {
		return res, err
	}
	seedSize := max(int64(workSeedSize), roundMiB(seedBytes*(100+rootfsSlackPct)/100+8<<20))

	rootfsImg := h.buildPath(p.BuildID, scratchRootfs)
	seedImg := h.buildPath(p.BuildID, scratchSeed)
	for _, f := range []string{rootfsImg, seedImg} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return res, err
		}
	}
	if err := s.cmd(ctx, fmt.Sprintf("rootfs.ext4: %d MiB from a %d MiB tree", rootfsSize>>20, treeBytes>>20),
		mkfsArgv("banger-root", treePath, rootfsImg, rootfsSize)...); err != nil {
		return res, err
	}
	if err := s.cmd(ctx, fmt.Sprintf("work-seed.ext4: %d MiB from /root", seedSize>>20),
		mkfsArgv("banger-work", seedPath, seedImg, seedSize)...); err != nil {
		return res, err
	}
	// mke2fs -d makes the root directory 0755 (1.47.0 has no root_perms):
	// give it /root's mode, which it becomes in the guest.
	if err := s.cmd(ctx, fmt.Sprintf("work-seed.ext4: root directory mode %04o, as /root", homeMode),
		seedModeArgv(seedImg, homeMode)...); err != nil {
		return res, err
	}
	for _, img := range []string{rootfsImg, seedImg} {
		if err := s.cmd(ctx, "checking "+filepath.Base(img), "e2fsck", "-fn", img); err != nil {
			return res, err
		}
	}

	// Copy out. On any failure the files made so far are removed again.
	kver := st.KernelVersion
	var initrd *os.File
	if st.Initrd == "mini" {
		initrd, err = os.Open(h.buildPath(p.BuildID, miniInitrd))
	} else {
		initrd, err = t.root.Open("boot/initrd.img-" + kver)
	}
	if err != nil {
		return res, s.fail("opening the initrd", err)
	}
	defer initrd.Close()
	kernel, err := t.root.Open("boot/vmlinuz-" + kver)
	if err != nil {
		return res, s.fail("opening the kernel", err)
	}
	defer kernel.Close()
	config, err := t.root.Open("boot/config-" + kver)
	if err != nil {
		return res, s.fail("opening the kernel config", err)
	}
	defer config.Close()
	rootfsF, err := os.Open(rootfsImg)
	if err != nil {
		return res, err
	}
	defer rootfsF.Close()
	seedF, err := os.Open(seedImg)
	if err != nil {
		return res, err
	}
	defer seedF.Close()

	s.logf("copying %d files into %s (new files, owned by %d:%d)", len(names), p.OutDir, p.UID, p.GID)
	sizes := map[string]int64{}
	for _, c := range []struct {
		name string
		src  *os.File
	}{{OutRootfs, rootfsF}, {OutWorkSeed, seedF}, {OutKernel, kernel}, {OutInitrd, initrd}, {OutKernelConfig, config}} {
		n, err := out.copyIn(c.name, c.src)
		if err != nil {
			out.cleanup()
			return res, s.fail("copying "+c.name, err)
		}
		sizes[c.name] = n
	}
	if err := out.sync(); err != nil {
		out.cleanup()
		return res, err
	}
	// The copies are out; the scratch images are not needed any more.
	os.Remove(rootfsImg)
	os.Remove(seedImg)

	res = helperapi.ImagePackResult{
		KernelVersion: kver,
		Rootfs:        filepath.Join(p.OutDir, OutRootfs),
		RootfsSize:    sizes[OutRootfs],
		WorkSeed:      filepath.Join(p.OutDir, OutWorkSeed),
		WorkSeedSize:  sizes[OutWorkSeed],
		Kernel:        filepath.Join(p.OutDir, OutKernel),
		Initrd:        filepath.Join(p.OutDir, OutInitrd),
		KernelConfig:  filepath.Join(p.OutDir, OutKernelConfig),
		DurationMS:    time.Since(s.start).Milliseconds(),
	}
	s.logf("done in %s", time.Since(s.start).Round(time.Millisecond))
	h.log.InfoContext(ctx, "image packed", "build_id", p.BuildID, "out_dir", p.OutDir, "rootfs_bytes", res.RootfsSize,
		"initrd", st.Initrd, "duration_ms", res.DurationMS)
	return res, nil
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

// moveRoot moves what the tree's /root holds into seed (made with /root's
// mode if missing), leaving /root an empty mountpoint for the work disk,
// and returns /root's mode. Entries are renamed without following symlinks
// and without replacing anything; a seed left by an earlier attempt is kept.
func (t *tree) moveRoot(seed string) (fs.FileMode, error) {
	rootFD, err := unix.Openat(t.fd, "root", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("opening the tree's /root: %w", err)
	}
	rootDir := os.NewFile(uintptr(rootFD), "root")
	defer rootDir.Close()
	var st unix.Stat_t
	if err := unix.Fstat(rootFD, &st); err != nil {
		return 0, err
	}
	mode := fs.FileMode(st.Mode & 0o777)
	if err := os.Mkdir(seed, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return 0, err
	}
	seedFD, err := unix.Open(seed, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(seedFD)
	if err := t.own(seedFD, mode); err != nil {
		return 0, err
	}
	names, err := rootDir.Readdirnames(-1)
	if err != nil {
		return 0, err
	}
	for _, n := range names {
		if err := unix.Renameat2(rootFD, n, seedFD, n, unix.RENAME_NOREPLACE); err != nil {
			return 0, fmt.Errorf("moving /root/%s: %w", n, err)
		}
	}
	return mode, nil
}
