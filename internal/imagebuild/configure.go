package imagebuild

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/banger-dev/banger/internal/guest"
)

// Initrd kinds of a build.
const (
	// InitrdMini is guest.WriteInitrd's busybox initrd (the lean image).
	InitrdMini = "mini"
	// InitrdTools is the tree's own initramfs-tools initrd (the stock
	// image, or a tree that cannot give a mini one).
	InitrdTools = "initramfs-tools"
)

// mmdebstrapLeftovers are what mmdebstrap has in the tree while the
// customize hook runs and removes itself only later (its cleanup, skipped
// here because the tree is thrown away once packed), or leaves for good:
// its apt settings, including 99mmdebstrap, whose pinned keyring and
// insecure-repository switches are build settings with host paths (the
// guest's apt keeps Debian's defaults, which refuse unsigned archives
// anyway), the policy-rc.d that keeps services from starting during the
// build, apt's logs of the build. Together with the renamed
// start-stop-daemon (restoreStartStopDaemon) and the mounts of /proc, /sys
// and /dev (pack's view), removing them leaves the tree as debootstrap
// leaves one.
var mmdebstrapLeftovers = []string{
	"/etc/apt/apt.conf.d/00mmdebstrap",
	"/etc/apt/apt.conf.d/99mmdebstrap",
	"/etc/dpkg/dpkg.cfg.d/99mmdebstrap",
	"/usr/sbin/policy-rc.d",
	"/var/log/apt/history.log",
	"/var/log/apt/term.log",
	"/var/log/apt/eipp.log.xz",
}

// configured is what configure found and made.
type configured struct {
	KernelVersion string
	Initrd        string
	mini          []byte
}

// configure turns the bootstrapped tree into a banger guest: the guest
// files of the variant (written without following symlinks), the apt
// sources, the tree's initramfs-tools initrd rebuilt for its newest kernel,
// the removals of guest.RemoveFor and mmdebstrapLeftovers, and the mini
// initrd (lean) in memory.
func (h *hook) configure(ctx context.Context) (configured, error) {
	var res configured
	p := h.params
	files := guest.FilesFor(p.Variant)
	h.logf("writing %d guest files, links and masks (internal/guest, %s variant)", len(files), variantName(p.Variant))
	for _, f := range files {
		if err := h.tree.write(f); err != nil {
			return res, fmt.Errorf("writing the guest files: %w", err)
		}
	}
	agent, err := os.ReadFile(p.Agent)
	if err != nil {
		return res, fmt.Errorf("reading banger-agent: %w", err)
	}
	h.logf("writing %s (banger-agent, %d bytes)", guest.AgentPath, len(agent))
	if err := h.tree.write(guest.File{Path: guest.AgentPath, Mode: 0o755, Content: agent}); err != nil {
		return res, fmt.Errorf("writing banger-agent: %w", err)
	}
	h.logf("writing /etc/apt/sources.list for %s from %s (security: %q)", p.Suite, p.Mirror, p.SecurityMirror)
	if err := h.tree.write(guest.File{Path: "/etc/apt/sources.list", Mode: 0o644, Content: guest.AptSources(p.Suite, p.Mirror, p.SecurityMirror)}); err != nil {
		return res, fmt.Errorf("writing sources.list: %w", err)
	}
	kver, err := h.tree.kernelVersion()
	if err != nil {
		return res, fmt.Errorf("finding the kernel: %w", err)
	}
	h.logf("kernel %s", kver)
	if err := h.cmd(ctx, "update-initramfs for "+kver+" (chroot)", "chroot", h.path, "update-initramfs", "-c", "-k", kver); err != nil {
		return res, err
	}
	remove := slices.Concat(guest.RemoveFor(p.Variant), mmdebstrapLeftovers)
	h.logf("removing %s", strings.Join(remove, " "))
	for _, pat := range remove {
		if err := h.tree.removeMatching(pat); err != nil {
			return res, fmt.Errorf("cleaning the tree: %w", err)
		}
	}
	if err := h.restoreStartStopDaemon(); err != nil {
		return res, err
	}

	res.KernelVersion, res.Initrd = kver, InitrdMini
	if p.Variant == guest.VariantStock {
		err = fmt.Errorf("the stock variant boots with Debian's initrd: %w", errNoMiniInitrd)
	} else {
		res.mini, err = h.tree.miniInitrd(kver)
	}
	switch {
	case errors.Is(err, errNoMiniInitrd):
		res.Initrd = InitrdTools
		h.logf("no mini initrd (%v); the image uses the tree's /boot/initrd.img-%s", err, kver)
	case err != nil:
		return res, fmt.Errorf("making the mini initrd: %w", err)
	default:
		h.logf("mini initrd: %d bytes (busybox and %d modules)", len(res.mini), len(guest.InitrdModules))
	}
	return res, nil
}

// restoreStartStopDaemon puts back the start-stop-daemon mmdebstrap moved
// to start-stop-daemon.REAL for the build (replacing its fake), as its
// cleanup would; with no .REAL there is nothing to do, and mmdebstrap's
// cleanup then finds nothing to do either.
func (h *hook) restoreStartStopDaemon() error {
	const real, fake = "sbin/start-stop-daemon.REAL", "sbin/start-stop-daemon"
	fi, err := h.tree.root.Lstat(real)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("/%s is not a regular file", real)
	}
	h.logf("restoring /%s (mmdebstrap's fake one is replaced)", fake)
	return h.tree.root.Rename(real, fake)
}

func variantName(v string) string {
	if v == "" {
		return guest.VariantLean
	}
	return v
}

// errNoMiniInitrd says the tree cannot give a mini initrd (no static
// busybox, compressed modules): the image then uses the tree's
// initramfs-tools initrd.
var errNoMiniInitrd = errors.New("no mini initrd")

// miniInitrd makes the mini initrd (guest.WriteInitrd) of kernel kver from
// the tree's busybox and modules.
func (t *tree) miniInitrd(kver string) ([]byte, error) {
	busybox, err := t.root.ReadFile("bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("%w: no /bin/busybox in the tree (busybox-static): %v", errNoMiniInitrd, err)
	}
	if len(busybox) < 4 || string(busybox[:4]) != "\x7fELF" {
		return nil, fmt.Errorf("%w: /bin/busybox is not an ELF binary", errNoMiniInitrd)
	}
	modDir := "lib/modules/" + kver
	dep, err := t.root.ReadFile(modDir + "/modules.dep")
	if err != nil {
		return nil, fmt.Errorf("reading modules.dep: %w", err)
	}
	builtin, _ := t.root.ReadFile(modDir + "/modules.builtin")
	paths, err := guest.ModulePaths(dep, builtin, guest.InitrdModules)
	if errors.Is(err, guest.ErrCompressedModules) {
		return nil, fmt.Errorf("%w: %v", errNoMiniInitrd, err)
	} else if err != nil {
		return nil, err
	}
	var mods []guest.Module
	for _, p := range paths {
		data, err := t.root.ReadFile(modDir + "/" + p.Path)
		if err != nil {
			return nil, fmt.Errorf("reading module %s: %w", p.Name, err)
		}
		mods = append(mods, guest.Module{Name: p.Name, Data: data})
	}
	var b bytes.Buffer
	if err := guest.WriteInitrd(&b, busybox, mods); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
