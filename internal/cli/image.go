package cli

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/model"
)

func (a *app) imageCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build, import, list, show and delete VM images",
		Long: `An image is what a VM boots: rootfs.ext4 (the read-only system), work-seed.ext4
(the image's /root, cloned into each VM's work disk), the kernel as vmlinuz and
as an ELF vmlinux (for Firecracker), and an initrd.`,
	}
	cmd.AddCommand(a.imageBuildCommand(), a.imageImportCommand(), a.imageListCommand(),
		a.imageShowCommand(), a.imageDeleteCommand(), a.imageRebuildSeedCommand(), a.imageWarmCommand())
	return cmd
}

func (a *app) imageBuildCommand() *cobra.Command {
	var p api.ImageBuildParams
	var size string
	var detach bool
	cmd := &cobra.Command{
		Use:   "build --name NAME",
		Short: "Build a bootable Debian image with mmdebstrap, as you (no root helper)",
		Long: `Builds a Debian image: mmdebstrap of a minimal system with the cloud kernel,
systemd and sshd, banger's guest unit (applies the VM's address, gateway, DNS
and host name from the kernel command line), the work disk at /root, and an
initrd with the virtio-mmio drivers. It runs as the daemon's user, in user
namespaces (package scripts run as your subordinate ids: sudo banger system
install --user NAME gives you a range), and the archive's signature is checked
against the suite's keyring (debian-archive-keyring) and nothing else. Takes a
minute or so; every step's output goes to the image's build.log.

The mirror defaults to image.mirror in the config, else the mirror this host's
apt uses.`,
		Example: `  banger image build --name default
  banger image build --name dev --package git --package curl --size 4G`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if p.Name == "" {
				return usageErrorf("--name is required")
			}
			if size != "" {
				s, err := config.ParseSize(size)
				if err != nil {
					return usageErrorf("--size: %v", err)
				}
				p.RootfsSize = int64(s)
			}
			ctx := cmd.Context()
			c, err := a.client(ctx)
			if err != nil {
				return err
			}
			var o api.Operation
			if err := c.Call(ctx, api.MethodImageBuildBegin, p, &o); err != nil {
				return err
			}
			if detach {
				if a.output == "json" {
					return writeJSON(a.stdout, o)
				}
				a.printf("%s\n", o.ID)
				return nil
			}
			if a.output == "text" {
				fmt.Fprintf(a.stderr, "building image %s (%s; log: %s)\n", p.Name, o.ID, o.LogPath)
			}
			final, err := a.follow(ctx, c, api.MethodImageBuildStatus, o)
			if err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, final)
			}
			var img model.Image
			_ = json.Unmarshal(final.Result, &img)
			a.printf("image %s built in %s (kernel %s)\n", p.Name, humanDuration(final.EndedAt.Sub(final.StartedAt)), img.KernelVersion)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&p.Name, "name", "", "image name (required)")
	f.StringVar(&p.Suite, "suite", "", "Debian suite (default: image.suite in config)")
	f.StringVar(&p.Mirror, "mirror", "", "Debian mirror URL (default: config, else this host's apt mirror)")
	f.StringArrayVar(&p.ExtraPackages, "package", nil, "extra Debian package to install (repeatable)")
	f.StringVar(&size, "size", "", "rootfs size, e.g. 2G (default: image.rootfs_size in config)")
	f.StringVar(&p.Variant, "variant", "", "lean (default: udev and idle units masked, a small initrd) or stock (Debian's defaults, for comparison)")
	f.BoolVar(&detach, "detach", false, "print the operation id and return; follow with banger daemon logs --op ID --follow")
	return cmd
}

func (a *app) imageImportCommand() *cobra.Command {
	var p api.ImageImportParams
	cmd := &cobra.Command{
		Use:   "import --name NAME [DIR]",
		Short: "Register a prebuilt kernel and rootfs (e.g. a Firecracker set) as an image",
		Long: `Copies a prebuilt set into banger's image store: a kernel (ELF vmlinux or
bzImage vmlinuz), an optional initrd, a rootfs ext4 and an optional work-seed.
DIR is searched for rootfs.ext4, vmlinux or vmlinuz, initrd.img and
work-seed.ext4; flags name files explicitly. Without a work-seed, one is made
from the rootfs's /root.`,
		Example: `  banger image import --name fc ./firecracker-files
  banger image import --name fc --kernel ~/vmlinux --rootfs ~/rootfs.ext4`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usageErrorf("%s takes at most one directory, got %q", cmd.CommandPath(), args)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if p.Name == "" {
				return usageErrorf("--name is required")
			}
			if len(args) == 1 {
				p.Dir = args[0]
			}
			for _, s := range []*string{&p.Dir, &p.Rootfs, &p.Kernel, &p.Initrd, &p.WorkSeed} {
				if *s != "" {
					abs, err := filepath.Abs(*s)
					if err != nil {
						return err
					}
					*s = abs
				}
			}
			var info api.ImageInfo
			if err := a.call(cmd.Context(), api.MethodImageImport, p, &info); err != nil {
				return err
			}
			return a.showImage(info)
		},
	}
	f := cmd.Flags()
	f.StringVar(&p.Name, "name", "", "image name (required)")
	f.StringVar(&p.Rootfs, "rootfs", "", "rootfs ext4 file")
	f.StringVar(&p.Kernel, "kernel", "", "kernel: ELF vmlinux or bzImage vmlinuz")
	f.StringVar(&p.Initrd, "initrd", "", "initrd file")
	f.StringVar(&p.WorkSeed, "work-seed", "", "work-seed ext4 file")
	return cmd
}

func (a *app) imageListCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List images",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var list []api.ImageInfo
			if err := a.call(cmd.Context(), api.MethodImageList, nil, &list); err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, list)
			}
			rows := make([][]string, 0, len(list))
			for _, i := range list {
				seed := "yes"
				if !i.HasWorkSeed() {
					seed = "no"
				}
				rows = append(rows, []string{i.Name, i.Source, i.KernelVersion, fmt.Sprintf("%dM", i.RootfsSize>>20), seed, fmt.Sprint(len(i.UsedBy)), i.CreatedAt.Local().Format(time.DateTime)})
			}
			return table(a.stdout, []string{"NAME", "SOURCE", "KERNEL", "ROOTFS", "SEED", "VMS", "CREATED"}, rows)
		},
	}
}

func (a *app) imageShowCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show an image's files, kernel, checksums, build log and the VMs using it",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var info api.ImageInfo
			if err := a.call(cmd.Context(), api.MethodImageShow, api.ImageRef{Name: args[0]}, &info); err != nil {
				return err
			}
			return a.showImage(info)
		},
	}
}

func (a *app) showImage(i api.ImageInfo) error {
	if a.output == "json" {
		return writeJSON(a.stdout, i)
	}
	seed := i.WorkSeedPath
	if seed == "" {
		seed = "none (VM work disks are built the slow way; add one: banger image rebuild-seed " + i.Name + ")"
	}
	used := strings.Join(i.UsedBy, ", ")
	if used == "" {
		used = "-"
	}
	return kv(a.stdout, [][2]string{
		{"name", i.Name},
		{"source", i.Source},
		{"suite", i.Suite},
		{"kernel", i.KernelVersion},
		{"dir", i.Dir},
		{"rootfs", fmt.Sprintf("%s (%d MiB, sha256 %s)", i.RootfsPath, i.RootfsSize>>20, short(i.RootfsSHA256))},
		{"work-seed", seed},
		{"vmlinuz", i.KernelPath},
		{"vmlinux", i.VmlinuxPath},
		{"initrd", i.InitrdPath},
		{"build log", i.BuildLogPath},
		{"created", i.CreatedAt.Local().Format(time.DateTime)},
		{"used by", used},
	})
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

func (a *app) imageDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Delete an image (refused while a VM uses it)",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var info api.ImageInfo
			if err := a.call(cmd.Context(), api.MethodImageDelete, api.ImageRef{Name: args[0]}, &info); err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, info)
			}
			a.printf("image %s deleted\n", args[0])
			return nil
		},
	}
}

func (a *app) imageRebuildSeedCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "rebuild-seed NAME",
		Short: "Make or refresh an image's work-seed from its rootfs's /root",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var info api.ImageInfo
			if err := a.call(cmd.Context(), api.MethodImageRebuildSeed, api.ImageRef{Name: args[0]}, &info); err != nil {
				return err
			}
			return a.showImage(info)
		},
	}
}
