package helperapi

import "github.com/banger-dev/banger/internal/guest"

import (
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// Image build methods. debootstrap and the chroot steps need root, so the
// helper does them, in a scratch directory of its own that only root can
// reach (--build-dir, default /var/lib/banger-helper/builds), never in a
// directory the caller controls: a chroot into a tree the caller could swap
// would hand them root. Each step runs in fresh mount and PID namespaces, so
// an interrupted step leaves no mounts and no processes behind. Only the
// finished files leave the scratch directory, created anew (O_EXCL,
// O_NOFOLLOW) in the caller's image directory and owned by the caller.
//
// Raw output of every step is appended to LogPath, a regular file owned by
// the caller under a state root (the image's build.log).
const (
	// MethodImageBootstrap: ImageBootstrapParams -> ImageStepResult.
	MethodImageBootstrap = "image.bootstrap"
	// MethodImageConfigure: ImageConfigureParams -> ImageConfigureResult.
	MethodImageConfigure = "image.configure"
	// MethodImagePack: ImagePackParams -> ImagePackResult.
	MethodImagePack = "image.pack"
	// MethodImageDiscard: ImageDiscardParams -> DeleteResult.
	MethodImageDiscard = "image.discard"
)

// ImageBootstrapParams asks for a minbase debootstrap of Suite from Mirror
// with Packages included, into the scratch tree of BuildID. A tree left by
// an earlier attempt with the same BuildID is removed first.
type ImageBootstrapParams struct {
	BuildID  string   `json:"build_id"`
	Suite    string   `json:"suite"`
	Mirror   string   `json:"mirror"`
	Packages []string `json:"packages"`
	LogPath  string   `json:"log_path"`
}

// ImageStepResult answers a build step.
type ImageStepResult struct {
	DurationMS int64 `json:"duration_ms"`
}

// ImageConfigureParams asks the helper to turn the bootstrapped tree of
// BuildID into a banger guest: the guest files of package guest (the unit
// that applies banger.* kernel parameters, fstab with the work disk at
// /root, sshd settings, masked units), apt sources pointing at Mirror (and
// SecurityMirror when set), and an initrd with what virtio-mmio block needs.
//
// Variant "stock" (guest.VariantStock) leaves Debian's units and fstab as
// they are and boots with the initramfs-tools initrd: the reference image
// the default (lean) one is measured against.
type ImageConfigureParams struct {
	BuildID        string `json:"build_id"`
	Suite          string `json:"suite"`
	Mirror         string `json:"mirror"`
	SecurityMirror string `json:"security_mirror,omitempty"`
	Variant        string `json:"variant,omitempty"`
	LogPath        string `json:"log_path"`
}

// ImageConfigureResult names the kernel the tree boots.
type ImageConfigureResult struct {
	KernelVersion string `json:"kernel_version"`
	DurationMS    int64  `json:"duration_ms"`
}

// ImagePackParams asks for the finished files of BuildID in OutDir, a
// directory owned by UID under a state root that must not hold them yet:
// rootfs.ext4 (the tree without /root, made with mke2fs -d, RootfsSize
// bytes or, when 0, the tree's size plus headroom), work-seed.ext4 (the
// tree's /root), vmlinuz, initrd.img and kernel.config, all owned by
// UID:GID.
type ImagePackParams struct {
	BuildID    string `json:"build_id"`
	OutDir     string `json:"out_dir"`
	RootfsSize int64  `json:"rootfs_size,omitempty"`
	UID        uint32 `json:"uid"`
	GID        uint32 `json:"gid"`
	LogPath    string `json:"log_path"`
}

// ImagePackResult lists what image.pack wrote.
type ImagePackResult struct {
	KernelVersion string `json:"kernel_version"`
	Rootfs        string `json:"rootfs"`
	RootfsSize    int64  `json:"rootfs_size"`
	WorkSeed      string `json:"work_seed"`
	WorkSeedSize  int64  `json:"work_seed_size"`
	Kernel        string `json:"kernel"`
	Initrd        string `json:"initrd"`
	KernelConfig  string `json:"kernel_config"`
	DurationMS    int64  `json:"duration_ms"`
}

// ImageDiscardParams asks for the scratch tree of BuildID to be removed
// (idempotent; after a failure, and after image.pack succeeded).
type ImageDiscardParams struct {
	BuildID string `json:"build_id"`
}

// Image build limits.
const (
	// BuildIDMax bounds build ids.
	BuildIDMax = 63
	// MaxPackages bounds the packages of one bootstrap.
	MaxPackages = 64
	// MirrorMax bounds mirror URLs.
	MirrorMax = 1024
	// MinRootfsSize and MaxRootfsSize bound ImagePackParams.RootfsSize,
	// which must be a multiple of RootfsSizeUnit.
	MinRootfsSize  = 64 << 20
	MaxRootfsSize  = 1 << 40
	RootfsSizeUnit = 1 << 20
)

var (
	buildIDRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	suiteRE   = regexp.MustCompile(`^[a-z]{1,32}(-[a-z]{1,32})?$`)
	packageRE = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]{1,62}$`)
)

// ValidateBuildID accepts a build id: 1-63 of [a-z0-9-], starting with a
// letter or digit. It names the helper's scratch directory, so it can hold
// neither '/' nor "..".
func ValidateBuildID(arg, id string) error {
	if !buildIDRE.MatchString(id) {
		return badArg(arg, id, "want 1-63 of [a-z0-9-], starting with a letter or digit")
	}
	return nil
}

// ValidateSuite accepts a Debian suite or codename: bookworm, trixie, sid,
// stable, oldstable, stable-backports...: [a-z]+ with at most one -[a-z]+.
func ValidateSuite(arg, suite string) error {
	if !suiteRE.MatchString(suite) {
		return badArg(arg, suite, "want a Debian suite such as bookworm ([a-z]+, optionally -[a-z]+)")
	}
	return nil
}

// ValidateMirror accepts an http or https URL of a Debian archive: printable
// ASCII without spaces, quotes, backslashes or angle brackets, a host, no
// user name or password, no query or fragment, at most MirrorMax bytes. It
// ends up as one argv element of debootstrap and as one word of a line of
// the image's sources.list, so nothing it holds may split either.
func ValidateMirror(arg, mirror string) error {
	switch {
	case mirror == "":
		return badArg(arg, mirror, "empty")
	case len(mirror) > MirrorMax:
		return badArg(arg, mirror, fmt.Sprintf("longer than %d bytes", MirrorMax))
	}
	for i := 0; i < len(mirror); i++ {
		c := mirror[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("\"'\\<>^`{|}", c) >= 0 {
			return badArg(arg, mirror, fmt.Sprintf("character %q not allowed in a mirror URL", c))
		}
	}
	u, err := url.Parse(mirror)
	switch {
	case err != nil:
		return badArg(arg, mirror, "not a URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return badArg(arg, mirror, "want an http:// or https:// URL")
	case u.Opaque != "" || u.Host == "" || u.Hostname() == "":
		return badArg(arg, mirror, "no host")
	case u.User != nil:
		return badArg(arg, mirror, "user name or password in the URL")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.ContainsAny(mirror, "?#"):
		return badArg(arg, mirror, "query or fragment in the URL")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return badArg(arg, mirror, "bad port")
		}
	}
	return nil
}

// ValidatePackages accepts 0 to MaxPackages Debian package names
// ([a-z0-9][a-z0-9+.-]{1,62}: none can start with '-' and pass for an
// option, or hold ',' and split debootstrap's --include list).
func ValidatePackages(arg string, pkgs []string) error {
	if len(pkgs) > MaxPackages {
		return badArg(arg, fmt.Sprintf("%d packages", len(pkgs)), fmt.Sprintf("at most %d", MaxPackages))
	}
	for _, p := range pkgs {
		if !packageRE.MatchString(p) {
			return badArg(arg, p, "not a Debian package name ([a-z0-9][a-z0-9+.-]{1,62})")
		}
	}
	return nil
}

// Validate checks every argument of image.bootstrap.
func (p ImageBootstrapParams) Validate() error {
	if err := ValidateBuildID("build_id", p.BuildID); err != nil {
		return err
	}
	if err := ValidateSuite("suite", p.Suite); err != nil {
		return err
	}
	if err := ValidateMirror("mirror", p.Mirror); err != nil {
		return err
	}
	if err := ValidatePackages("packages", p.Packages); err != nil {
		return err
	}
	return ValidatePath("log_path", p.LogPath)
}

// Validate checks every argument of image.configure.
func (p ImageConfigureParams) Validate() error {
	if err := ValidateBuildID("build_id", p.BuildID); err != nil {
		return err
	}
	if err := ValidateSuite("suite", p.Suite); err != nil {
		return err
	}
	if err := ValidateMirror("mirror", p.Mirror); err != nil {
		return err
	}
	if p.SecurityMirror != "" {
		if err := ValidateMirror("security_mirror", p.SecurityMirror); err != nil {
			return err
		}
	}
	if !guest.ValidVariant(p.Variant) {
		return badArg("variant", p.Variant, "want lean or stock")
	}
	return ValidatePath("log_path", p.LogPath)
}

// Validate checks every argument of image.pack.
func (p ImagePackParams) Validate() error {
	if err := ValidateBuildID("build_id", p.BuildID); err != nil {
		return err
	}
	if err := ValidatePath("out_dir", p.OutDir); err != nil {
		return err
	}
	if s := p.RootfsSize; s != 0 && (s < MinRootfsSize || s > MaxRootfsSize || s%RootfsSizeUnit != 0) {
		return badArg("rootfs_size", strconv.FormatInt(s, 10),
			fmt.Sprintf("want 0 (automatic) or a multiple of 1 MiB from %d MiB to %d GiB", MinRootfsSize>>20, MaxRootfsSize>>30))
	}
	if err := ValidateID("uid", p.UID); err != nil {
		return err
	}
	if err := ValidateID("gid", p.GID); err != nil {
		return err
	}
	return ValidatePath("log_path", p.LogPath)
}

// Validate checks every argument of image.discard.
func (p ImageDiscardParams) Validate() error { return ValidateBuildID("build_id", p.BuildID) }
