package imagebuild

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/rpc"
)

// Spec is what an image is built from. Everything in it ends up as argv
// elements of mmdebstrap or as words of the image's sources.list, so
// Validate refuses anything that could split either or pass for an option.
type Spec struct {
	// Suite is a Debian (or Ubuntu) suite or codename with a pinned
	// keyring (Keyrings).
	Suite string
	// Mirror is the archive the build downloads from; SecurityMirror, when
	// set, is only written into the image's sources.list.
	Mirror, SecurityMirror string
	// Packages are installed besides guest.BasePackages.
	Packages []string
	// Variant is guest.VariantLean ("" too) or guest.VariantStock.
	Variant string
	// RootfsSize is rootfs.ext4's size: 0 is the tree's size plus
	// headroom; otherwise a multiple of 1 MiB from MinRootfsSize to
	// MaxRootfsSize, and at least 110% of the tree.
	RootfsSize int64
}

// Limits of a Spec.
const (
	// MaxPackages bounds the packages of one build, the base ones included.
	MaxPackages = 64
	// MirrorMax bounds mirror URLs.
	MirrorMax = 1024
	// MinRootfsSize and MaxRootfsSize bound Spec.RootfsSize, which must be
	// a multiple of RootfsSizeUnit.
	MinRootfsSize  = 64 << 20
	MaxRootfsSize  = 1 << 40
	RootfsSizeUnit = 1 << 20
)

var (
	suiteRE   = regexp.MustCompile(`^[a-z]{1,32}(-[a-z]{1,32})?$`)
	packageRE = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]{1,62}$`)
)

// Validate checks every field without looking at the host; every refusal
// is rpc.ErrBadRequest and names the field. The suite's keyring is checked
// by Keyrings.For, which does look at the host.
func (s Spec) Validate() error {
	if err := ValidateSuite("suite", s.Suite); err != nil {
		return err
	}
	if err := ValidateMirror("mirror", s.Mirror); err != nil {
		return err
	}
	if s.SecurityMirror != "" {
		if err := ValidateMirror("security_mirror", s.SecurityMirror); err != nil {
			return err
		}
	}
	if err := ValidatePackages("packages", s.Packages); err != nil {
		return err
	}
	if n := len(s.AllPackages()); n > MaxPackages {
		return rpc.BadArg("packages", fmt.Sprintf("%d packages", n), fmt.Sprintf("at most %d with the %d base ones", MaxPackages, len(guest.BasePackages)))
	}
	if !guest.ValidVariant(s.Variant) {
		return rpc.BadArg("variant", s.Variant, "want lean or stock")
	}
	if r := s.RootfsSize; r != 0 && (r < MinRootfsSize || r > MaxRootfsSize || r%RootfsSizeUnit != 0) {
		return rpc.BadArg("rootfs_size", strconv.FormatInt(r, 10),
			fmt.Sprintf("want 0 (automatic) or a multiple of 1 MiB from %d MiB to %d GiB", MinRootfsSize>>20, MaxRootfsSize>>30))
	}
	return nil
}

// AllPackages is guest.BasePackages followed by s.Packages not already in
// it: every image gets what the guest contract needs.
func (s Spec) AllPackages() []string {
	out := slices.Clone(guest.BasePackages)
	for _, p := range s.Packages {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// variant is s.Variant with "" read as lean.
func (s Spec) variant() string {
	if s.Variant == "" {
		return guest.VariantLean
	}
	return s.Variant
}

// ValidateSuite accepts a suite or codename: bookworm, trixie, sid,
// stable, stable-backports...: [a-z]+ with at most one -[a-z]+. Whether
// banger can verify it is Keyrings' business.
func ValidateSuite(arg, suite string) error {
	if !suiteRE.MatchString(suite) {
		return rpc.BadArg(arg, suite, "want a Debian suite such as bookworm ([a-z]+, optionally -[a-z]+)")
	}
	return nil
}

// mirrorPunct is the punctuation a mirror URL may hold besides letters and
// digits: no white space, quotes, backslashes, brackets of any kind, '$'
// (apt expands $(ARCH) in sources.list), '%', '*', '^', '|' or backticks.
const mirrorPunct = "-._~:/?#@!&+,;="

// ValidateMirror accepts an http or https URL of an archive: letters,
// digits and mirrorPunct only; a host; no user name or password; no query
// or fragment; at most MirrorMax bytes. It becomes one
// argv element of mmdebstrap, which takes a whole sources.list line there
// too ("deb [trusted=yes] http://..."): nothing it holds may make it one,
// and no '[' may open apt options. It is also one word of the image's
// sources.list. An IPv6 literal host needs brackets and is refused; use a
// name.
func ValidateMirror(arg, mirror string) error {
	switch {
	case mirror == "":
		return rpc.BadArg(arg, mirror, "empty")
	case len(mirror) > MirrorMax:
		return rpc.BadArg(arg, mirror, fmt.Sprintf("longer than %d bytes", MirrorMax))
	}
	for i := 0; i < len(mirror); i++ {
		c := mirror[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(mirrorPunct, c) >= 0) {
			return rpc.BadArg(arg, mirror, fmt.Sprintf("character %q not allowed in a mirror URL (want letters, digits and %s)", c, mirrorPunct))
		}
	}
	u, err := url.Parse(mirror)
	switch {
	case err != nil:
		return rpc.BadArg(arg, mirror, "not a URL")
	case u.Scheme != "http" && u.Scheme != "https" || !strings.HasPrefix(mirror, u.Scheme+"://"):
		return rpc.BadArg(arg, mirror, "want an http:// or https:// URL")
	case u.Opaque != "" || u.Host == "" || u.Hostname() == "":
		return rpc.BadArg(arg, mirror, "no host")
	case u.User != nil || strings.Contains(u.Host, "@"):
		return rpc.BadArg(arg, mirror, "user name or password in the URL")
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.ContainsAny(mirror, "?#"):
		return rpc.BadArg(arg, mirror, "query or fragment in the URL")
	}
	if p := u.Port(); p != "" || strings.HasSuffix(u.Host, ":") {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return rpc.BadArg(arg, mirror, "bad port")
		}
	}
	return nil
}

// ValidatePackages accepts 0 to MaxPackages Debian package names: Debian
// policy's [a-z0-9][a-z0-9+.-]+, at most 63 bytes. None can start with '-'
// and pass for an option, hold ',' or white space and split mmdebstrap's
// --include list, start with '?', '~', '!' or '(' (an apt pattern), hold
// '/' (a path to a .deb, or a release), '=' (a version) or ':' (an
// architecture). A name ending in '-' (apt's "remove this" suffix) or
// ".deb" is refused too.
func ValidatePackages(arg string, pkgs []string) error {
	if len(pkgs) > MaxPackages {
		return rpc.BadArg(arg, fmt.Sprintf("%d packages", len(pkgs)), fmt.Sprintf("at most %d", MaxPackages))
	}
	for _, p := range pkgs {
		switch {
		case !packageRE.MatchString(p):
			return rpc.BadArg(arg, p, "not a Debian package name ([a-z0-9][a-z0-9+.-]{1,62})")
		case strings.HasSuffix(p, "-"):
			return rpc.BadArg(arg, p, "a trailing '-' asks apt to remove the package")
		case strings.HasSuffix(p, ".deb"):
			return rpc.BadArg(arg, p, "a .deb file, not a package name")
		}
	}
	return nil
}

// Keyring files of the archives banger knows.
const (
	DebianKeyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
	UbuntuKeyring = "/usr/share/keyrings/ubuntu-archive-keyring.gpg"
)

// Keyrings maps a suite to the one keyring its archive's Release file must
// be signed by. A suite not in the map is never built: banger cannot tell
// which keys may sign it.
type Keyrings map[string]string

// DefaultKeyrings are Debian's codenames and aliases and Ubuntu's
// codenames, each with its distribution's archive keyring (packages
// debian-archive-keyring and ubuntu-archive-keyring).
func DefaultKeyrings() Keyrings {
	k := Keyrings{}
	for _, s := range []string{
		"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
		"oldoldstable", "oldstable", "stable", "testing", "unstable",
	} {
		k[s] = DebianKeyring
	}
	for _, s := range []string{
		"focal", "jammy", "noble", "oracular", "plucky", "questing",
	} {
		k[s] = UbuntuKeyring
	}
	return k
}

// keyringPackage names the Debian package that installs a keyring file.
func keyringPackage(file string) string {
	switch file {
	case DebianKeyring:
		return "debian-archive-keyring"
	case UbuntuKeyring:
		return "ubuntu-archive-keyring"
	}
	return ""
}

// For returns the keyring of suite after checking that it is a readable
// regular file. A suite without one, or whose keyring is missing, is
// rpc.ErrBadRequest with the way out as hint: nothing is downloaded for a
// suite banger cannot verify.
func (k Keyrings) For(suite string) (string, error) {
	file, ok := k[suite]
	if !ok {
		known := make([]string, 0, len(k))
		for s := range k {
			known = append(known, s)
		}
		slices.Sort(known)
		return "", rpc.WithHint(fmt.Errorf("suite %q has no pinned archive keyring, so its signature could not be verified; refusing to build it: %w", suite, rpc.ErrBadRequest),
			"use one of: "+strings.Join(known, ", "))
	}
	fi, err := os.Stat(file)
	if err == nil && !fi.Mode().IsRegular() {
		err = errors.New("not a regular file")
	}
	if err == nil {
		var f *os.File
		if f, err = os.Open(file); err == nil {
			f.Close()
		}
	}
	if err != nil {
		hint := "install the archive keyring of " + suite
		if pkg := keyringPackage(file); pkg != "" {
			hint = "install it: sudo apt-get install " + pkg
		}
		return "", rpc.WithHint(fmt.Errorf("the archive keyring of suite %q, %s, is not usable (%v); refusing to build without verifying the archive's signature: %w",
			suite, file, errors.Unwrap(err), rpc.ErrBadRequest), hint)
	}
	return file, nil
}
