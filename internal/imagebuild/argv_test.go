package imagebuild

import (
	"slices"
	"strings"
	"testing"
)

// The exact command line of a build.
func TestMmdebstrapArgv(t *testing.T) {
	s := Spec{Suite: "bookworm", Mirror: "http://deb.debian.org/debian", SecurityMirror: "http://security.debian.org/debian-security", Packages: []string{"vim", "openssh-server"}}
	got := mmdebstrapArgv(s, DebianKeyring, "/var/tmp/banger-build-1/trusted.gpg.d", "/var/tmp/banger-build-1/hook")
	want := []string{
		"mmdebstrap", "--mode=unshare", "--variant=minbase", "--format=null",
		"--include=systemd-sysv,openssh-server,linux-image-cloud-amd64,iproute2,kmod,procps,busybox-static,iputils-ping,rsync,vim",
		"--keyring=/usr/share/keyrings/debian-archive-keyring.gpg",
		`--aptopt=Dir::Etc::Trusted "/usr/share/keyrings/debian-archive-keyring.gpg"`,
		`--aptopt=Dir::Etc::TrustedParts "/var/tmp/banger-build-1/trusted.gpg.d"`,
		`--aptopt=Acquire::AllowInsecureRepositories "false"`,
		`--aptopt=Acquire::AllowDowngradeToInsecureRepositories "false"`,
		`--aptopt=Acquire::AllowWeakRepositories "false"`,
		`--aptopt=APT::Get::AllowUnauthenticated "false"`,
		"--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
		"--skip=check/signed-by", "--skip=cleanup",
		"--customize-hook=/var/tmp/banger-build-1/hook",
		"bookworm", "/dev/null", "http://deb.debian.org/debian",
	}
	if !slices.Equal(got, want) {
		t.Errorf("argv\n got %q\nwant %q", got, want)
	}
	// The security mirror is for the image's sources.list only: never
	// fetched during the build.
	for _, a := range got {
		if strings.Contains(a, "security") {
			t.Errorf("the security mirror is on the command line: %q", a)
		}
	}
}

// Paths that go into apt's configuration or become the hook.
func TestCheckConfPath(t *testing.T) {
	for _, p := range []string{"/var/tmp/banger-build-123/hook", DebianKeyring, "/a/b+c/d_e.f-g"} {
		if err := checkConfPath("p", p); err != nil {
			t.Errorf("%q: %v", p, err)
		}
	}
	for _, p := range []string{"", "relative", `/a"b`, "/a b", "/a;b", "/a=b", "/a$b", "/a`b", "/a\nb", "/a//b", "/a/../b", "/a/./b", "/a/..", "/ä"} {
		if err := checkConfPath("p", p); err == nil {
			t.Errorf("%q accepted", p)
		}
	}
}

// mmdebstrap's environment: fixed PATH and locale, TMPDIR, the hook's
// parameters; nothing else of the daemon's but HOME/USER and proxies.
func TestBuildEnv(t *testing.T) {
	t.Setenv("http_proxy", "http://proxy:3128")
	t.Setenv("BANGER_SECRET", "x")
	t.Setenv("APT_CONFIG", "/tmp/evil.conf")
	env := buildEnv("/var/tmp/banger-build-1", `{"protocol":1}`)
	for _, want := range []string{"TMPDIR=/var/tmp/banger-build-1", EnvHook + `={"protocol":1}`, "http_proxy=http://proxy:3128", "LC_ALL=C.UTF-8"} {
		if !slices.Contains(env, want) {
			t.Errorf("env lacks %q: %q", want, env)
		}
	}
	for _, e := range env {
		if strings.HasPrefix(e, "BANGER_SECRET=") || strings.HasPrefix(e, "APT_CONFIG=") {
			t.Errorf("env passes %q", e)
		}
	}
}
