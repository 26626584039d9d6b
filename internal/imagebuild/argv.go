package imagebuild

import (
	"fmt"
	"os"
	"strings"
)

// aptOpts are the apt settings of every build, beside --keyring: apt
// trusts the pinned keyring and nothing else (Dir::Etc::Trusted, and an
// empty Dir::Etc::TrustedParts instead of the host's /etc/apt/trusted.gpg.d,
// which may hold third-party keys), and refuses unsigned, weakly signed or
// downgraded-to-unsigned archives and unauthenticated packages whatever
// the host's apt.conf says. mmdebstrap writes them to the tree's
// apt.conf.d/99mmdebstrap, read after the host-side configuration it
// generates, so they win.
func aptOpts(keyring, trustedParts string) []string {
	return []string{
		fmt.Sprintf("Dir::Etc::Trusted %q", keyring),
		fmt.Sprintf("Dir::Etc::TrustedParts %q", trustedParts),
		`Acquire::AllowInsecureRepositories "false"`,
		`Acquire::AllowDowngradeToInsecureRepositories "false"`,
		`Acquire::AllowWeakRepositories "false"`,
		`APT::Get::AllowUnauthenticated "false"`,
	}
}

// mergedUsrHooks are mmdebstrap's hooks that make /bin, /sbin and /lib
// symlinks into /usr the way debootstrap does (its own setup_merged_usr
// when debootstrap is installed) and install usr-is-merged. Without them
// init-system-helpers pulls in usrmerge, and with it perl: 50 MiB that a
// debootstrap-built image never had.
const mergedUsrHooks = "/usr/share/mmdebstrap/hooks/merged-usr"

// mmdebstrapArgv is the command line of a build: a minbase system (what
// debootstrap --variant=minbase gives: Priority required and apt, merged
// /usr by symlinks) of s.Suite from s.Mirror with s.AllPackages, in user
// namespaces (unshare mode), its signature checked against keyring only, handed to hook as the
// customize hook and then thrown away (format null: mmdebstrap removes its
// temporary chroot). The signed-by guess is skipped (banger pins the
// keyring itself, and the image gets banger's sources.list), and so is
// mmdebstrap's final cleanup of a tree that is deleted anyway (the hook
// does what debootstrap leaves clean). Every value is validated: Spec for
// the suite, mirror and packages; checkConfPath for the paths written into
// apt's configuration; hook is a path Build made.
func mmdebstrapArgv(s Spec, keyring, trustedParts, hook string) []string {
	argv := []string{
		"mmdebstrap", "--mode=unshare", "--variant=minbase", "--format=null",
		"--include=" + strings.Join(s.AllPackages(), ","),
		"--keyring=" + keyring,
	}
	for _, o := range aptOpts(keyring, trustedParts) {
		argv = append(argv, "--aptopt="+o)
	}
	return append(argv,
		"--hook-dir="+mergedUsrHooks,
		"--skip=check/signed-by", "--skip=cleanup",
		"--customize-hook="+hook,
		s.Suite, "/dev/null", s.Mirror)
}

// checkConfPath accepts a path that may go into apt's configuration
// (quoted, with no way to escape a quote) and on mmdebstrap's command line
// as a hook it execs directly (no shell metacharacters, no '=' that env
// would read as a variable): absolute, clean, of [A-Za-z0-9._/+-] only.
func checkConfPath(what, p string) error {
	if p == "" || p[0] != '/' {
		return fmt.Errorf("%s %q: not an absolute path", what, p)
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._/+-", c) >= 0) {
			return fmt.Errorf("%s %q: character %q not allowed (want [A-Za-z0-9._/+-])", what, p, c)
		}
	}
	if strings.Contains(p, "//") || strings.Contains(p, "/./") || strings.Contains(p, "/../") || strings.HasSuffix(p, "/..") || strings.HasSuffix(p, "/.") {
		return fmt.Errorf("%s %q: not a clean path", what, p)
	}
	return nil
}

// buildEnv is mmdebstrap's environment: a fixed PATH and locale, the
// hook's parameters, TMPDIR (where mmdebstrap makes its temporary chroot),
// HOME and USER of the daemon, and its proxy settings if it has any (apt
// honours them).
func buildEnv(tmpdir, params string) []string {
	env := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LC_ALL=C.UTF-8", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive",
		"TMPDIR=" + tmpdir,
		EnvHook + "=" + params,
	}
	for _, k := range []string{"HOME", "USER", "LOGNAME", "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}
