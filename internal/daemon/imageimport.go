package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/rpc"
)

// imageImport registers a prebuilt set: a kernel (ELF vmlinux or bzImage
// vmlinuz), an optional initrd, a rootfs ext4 and an optional work-seed, as
// a Firecracker user has them. Files are copied into the image directory
// (sparse), a vmlinux is extracted from a bzImage, and a work-seed is made
// from the rootfs's /root when the set has none.
func (d *Daemon) imageImport(ctx context.Context, p api.ImageImportParams) (api.ImageInfo, error) {
	if err := model.ValidateName("image", p.Name); err != nil {
		return api.ImageInfo{}, fmt.Errorf("%v: %w", err, rpc.ErrBadRequest)
	}
	find := func(explicit string, names ...string) string {
		if explicit != "" || p.Dir == "" {
			return explicit
		}
		for _, n := range names {
			if st, err := os.Stat(filepath.Join(p.Dir, n)); err == nil && st.Mode().IsRegular() {
				return filepath.Join(p.Dir, n)
			}
		}
		return ""
	}
	rootfs := find(p.Rootfs, fileRootfs, "rootfs.img")
	kernel := find(p.Kernel, fileVmlinux, fileVmlinuz, "vmlinux.bin", "bzImage")
	initrd := find(p.Initrd, fileInitrd, "initrd", "initramfs.img")
	seed := find(p.WorkSeed, fileWorkSeed)
	if rootfs == "" || kernel == "" {
		return api.ImageInfo{}, rpc.WithHint(rpc.Errorf(rpc.ErrBadRequest, "import needs a rootfs ext4 and a kernel (found rootfs %q, kernel %q)", rootfs, kernel),
			"put rootfs.ext4 and vmlinux or vmlinuz in the directory, or name them with --rootfs and --kernel")
	}
	for _, f := range []string{rootfs, kernel, initrd, seed} {
		if f == "" {
			continue
		}
		if !filepath.IsAbs(f) {
			return api.ImageInfo{}, rpc.Errorf(rpc.ErrBadRequest, "%s: give an absolute path", f)
		}
		if st, err := os.Stat(f); err != nil || !st.Mode().IsRegular() {
			return api.ImageInfo{}, rpc.Errorf(rpc.ErrBadRequest, "%s: not a readable regular file", f)
		}
	}

	d.imagesMu.Lock()
	defer d.imagesMu.Unlock()
	if other, busy := d.imageBuilds[p.Name]; busy {
		return api.ImageInfo{}, rpc.Errorf(rpc.ErrConflict, "image %q is being built by %s", p.Name, other)
	}
	if _, err := d.store.GetImage(ctx, p.Name); err == nil {
		return api.ImageInfo{}, rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "image %q already exists", p.Name), "delete it first or choose another --name")
	} else if !errors.Is(err, rpc.ErrNotFound) {
		return api.ImageInfo{}, err
	}
	dir := d.layout.ImageDir(p.Name)
	if err := d.clearImageDir(ctx, dir); err != nil {
		return api.ImageInfo{}, err
	}
	img := model.Image{Name: p.Name, Dir: dir, Source: "imported", BuildLogPath: filepath.Join(dir, fileBuildLog), CreatedAt: time.Now().UTC()}
	fail := func(err error) (api.ImageInfo, error) {
		d.removeImageFiles(dir)
		return api.ImageInfo{}, rpc.WithHint(fmt.Errorf("importing image %q: %w", p.Name, err), "see "+img.BuildLogPath)
	}

	img.RootfsPath = filepath.Join(dir, fileRootfs)
	if err := disk.CopySparse(rootfs, img.RootfsPath); err != nil {
		return fail(err)
	}
	if image.IsELF(kernel) {
		img.VmlinuxPath = filepath.Join(dir, fileVmlinux)
		img.KernelPath = img.VmlinuxPath
		if err := disk.CopySparse(kernel, img.VmlinuxPath); err != nil {
			return fail(err)
		}
	} else {
		img.KernelPath = filepath.Join(dir, fileVmlinuz)
		if err := disk.CopySparse(kernel, img.KernelPath); err != nil {
			return fail(err)
		}
		img.VmlinuxPath = filepath.Join(dir, fileVmlinux)
		if err := image.ExtractVmlinux(img.KernelPath, img.VmlinuxPath); err != nil {
			d.log.WarnContext(ctx, "no vmlinux for firecracker", "image", p.Name, "error", err.Error())
			img.VmlinuxPath = ""
		}
	}
	img.KernelVersion = image.KernelVersion(img.KernelPath)
	if initrd != "" {
		img.InitrdPath = filepath.Join(dir, fileInitrd)
		if err := disk.CopySparse(initrd, img.InitrdPath); err != nil {
			return fail(err)
		}
	}
	if seed != "" {
		img.WorkSeedPath = filepath.Join(dir, fileWorkSeed)
		if err := disk.CopySparse(seed, img.WorkSeedPath); err != nil {
			return fail(err)
		}
	} else if err := d.makeWorkSeed(ctx, &img); err != nil {
		return fail(err)
	}
	var err error
	if img.RootfsSHA256, err = sha256File(img.RootfsPath); err != nil {
		return fail(err)
	}
	if st, err := os.Stat(img.RootfsPath); err == nil {
		img.RootfsSize = st.Size()
	}
	if img.WorkSeedPath != "" {
		st, _ := os.Stat(img.WorkSeedPath)
		img.WorkSeedSize = st.Size()
		if img.WorkSeedSHA, err = sha256File(img.WorkSeedPath); err != nil {
			return fail(err)
		}
	}
	if err := d.registerImage(ctx, &img); err != nil {
		return fail(err)
	}
	d.log.InfoContext(ctx, "image imported", "image", p.Name, "rootfs", rootfs, "kernel", kernel)
	return d.imageInfo(ctx, img)
}
