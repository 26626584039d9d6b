package cli

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
)

func goodSSHInfo() api.SSHInfo {
	return api.SSHInfo{Name: "web", User: "root", Host: "10.0.0.2",
		KeyPath: "/home/u/.local/state/banger/id_ed25519", KnownHosts: "/home/u/.local/state/banger/vms/abc/known_hosts"}
}

// checkDestination fails t unless "--" comes right before user@host, once,
// with only banger's own options before it.
func checkDestination(t *testing.T, args []string, dest string, command []string) {
	t.Helper()
	i := slices.Index(args, "--")
	if i < 0 || slices.Index(args[i+1:], "--") >= 0 {
		t.Fatalf("want exactly one --: %q", args)
	}
	if args[i+1] != dest {
		t.Fatalf("after --: %q, want %q", args[i+1:], dest)
	}
	if len(command) == 0 && len(args) != i+2 || len(command) > 0 && (len(args) != i+3 || args[i+2] != remoteCommand(command)) {
		t.Fatalf("the command after the destination: %q", args[i+1:])
	}
	for j := 0; j < i; j++ {
		if a := args[j]; strings.HasPrefix(a, "-") && !slices.Contains([]string{"-i", "-o", "-t"}, a) {
			t.Fatalf("unexpected option %q before --: %q", a, args)
		}
	}
}

func TestSSHArgvPutsDashDashBeforeDestination(t *testing.T) {
	for _, tc := range []struct {
		user, host  string
		command     []string
		interactive bool
	}{
		{"root", "10.0.0.2", nil, true},
		{"root", "10.0.0.2", []string{"-oProxyCommand=touch /tmp/x"}, false},
		{"_svc", "fd00::2", []string{"-v", "x"}, false},
		{"dev-1", "web.vm.banger", []string{"uname", "-r"}, false},
		{"root", "web.vm.banger.", nil, false},
	} {
		info := goodSSHInfo()
		info.User, info.Host = tc.user, tc.host
		args, err := sshArgv(info, tc.command, tc.interactive)
		if err != nil {
			t.Fatalf("%+v: %v", tc, err)
		}
		checkDestination(t, args, tc.user+"@"+tc.host, tc.command)
		if !slices.Contains(args, "UserKnownHostsFile="+info.KnownHosts) || !slices.Contains(args, "StrictHostKeyChecking=yes") || !slices.Contains(args, info.KeyPath) {
			t.Errorf("options: %q", args)
		}
	}
}

func TestSSHArgvRefusesHostileValues(t *testing.T) {
	type mut func(*api.SSHInfo)
	user := func(v string) mut { return func(i *api.SSHInfo) { i.User = v } }
	host := func(v string) mut { return func(i *api.SSHInfo) { i.Host = v } }
	key := func(v string) mut { return func(i *api.SSHInfo) { i.KeyPath = v } }
	kh := func(v string) mut { return func(i *api.SSHInfo) { i.KnownHosts = v } }
	cases := map[string]mut{
		"user option":           user("-oProxyCommand=touch /tmp/pwned"),
		"user dash":             user("-"),
		"user with space":       user("root -oProxyCommand=x"),
		"user empty":            user(""),
		"user upper":            user("Root"),
		"user at":               user("a@b"),
		"user newline":          user("root\n"),
		"user long":             user(strings.Repeat("a", 33)),
		"user digit first":      user("1root"),
		"host option":           host("-oProxyCommand=touch /tmp/pwned"),
		"host dash":             host("-10.0.0.2"),
		"host space":            host("10.0.0.2 -oProxyCommand=x"),
		"host empty":            host(""),
		"host semicolon":        host("a;b"),
		"host slash":            host("a/b"),
		"host zone":             host("fe80::1%eth0"),
		"host brackets":         host("[::1]"),
		"host empty label":      host("a..b"),
		"host label dash":       host("-a.b"),
		"host newline":          host("10.0.0.2\n"),
		"host upper":            host("WEB"),
		"host long label":       host(strings.Repeat("a", 64) + ".b"),
		"key relative":          key("id_ed25519"),
		"key option":            key("-oProxyCommand=x"),
		"key not clean":         key("/a/../b"),
		"key trailing slash":    key("/a/b/"),
		"key empty":             key(""),
		"key percent":           key("/a/%d"),
		"key dollar":            key("/a/${HOME}"),
		"key newline":           key("/a\nb"),
		"key nul":               key("/a\x00b"),
		"known_hosts space":     kh("/a b"),
		"known_hosts quote":     kh(`/a"b`),
		"known_hosts squote":    kh("/a'b"),
		"known_hosts tab":       kh("/a\tb"),
		"known_hosts backslash": kh(`/a\b`),
		"known_hosts relative":  kh("kh"),
		"known_hosts escape":    kh("/a\x1bb"),
	}
	for name, m := range cases {
		info := goodSSHInfo()
		m(&info)
		args, err := sshArgv(info, []string{"true"}, false)
		if err == nil {
			t.Errorf("%s: accepted: %q", name, args)
			continue
		}
		if !errors.Is(err, rpc.ErrForbidden) || rpc.HintOf(err) == "" || !strings.Contains(err.Error(), `vm "web"`) {
			t.Errorf("%s: want a forbidden refusal with a hint: %v", name, err)
		}
	}
}

// The real ssh accepts banger's argv: "--" ends its options, so what
// follows is the destination and the command even when they look like
// options. ssh -G prints the resolved configuration and exits without
// connecting (and resolves nothing: the host is an address).
func TestSSHArgvWithRealSSH(t *testing.T) {
	ssh, err := exec.LookPath("ssh")
	if err != nil {
		t.Skip("needs OpenSSH's ssh (apt-get install openssh-client)")
	}
	dir := t.TempDir()
	info := goodSSHInfo()
	info.KeyPath, info.KnownHosts = filepath.Join(dir, "id_ed25519"), filepath.Join(dir, "known_hosts")
	for _, p := range []string{info.KeyPath, info.KnownHosts} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	marker := filepath.Join(dir, "MARKER")
	resolved := func(args ...string) map[string][]string {
		t.Helper()
		cmd := exec.Command(ssh, append([]string{"-G", "-F", "/dev/null"}, args...)...)
		cmd.Env = []string{"HOME=" + dir, "PATH=/usr/bin:/bin"}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("ssh -G %q: %v\n%s", args, err, out)
		}
		cfg := map[string][]string{}
		for _, l := range strings.Split(string(out), "\n") {
			if k, v, ok := strings.Cut(l, " "); ok {
				cfg[k] = append(cfg[k], v)
			}
		}
		return cfg
	}

	// Control: without "--" a destination that looks like an option is one.
	if cfg := resolved("-oProxyCommand=touch "+marker, "root@10.0.0.2"); !slices.Contains(cfg["proxycommand"], "touch "+marker) {
		t.Fatalf("control: ssh did not take the option: %v", cfg["proxycommand"])
	}

	for _, interactive := range []bool{false, true} {
		args, err := sshArgv(info, []string{"-oProxyCommand=touch " + marker}, interactive)
		if err != nil {
			t.Fatal(err)
		}
		cfg := resolved(args...)
		want := map[string]string{"user": "root", "hostname": "10.0.0.2", "hostkeyalias": "10.0.0.2",
			"userknownhostsfile": info.KnownHosts, "stricthostkeychecking": "true", "identitiesonly": "yes"}
		if !interactive {
			want["batchmode"] = "yes"
		}
		for k, v := range want {
			if !slices.Contains(cfg[k], v) {
				t.Errorf("%s: %v, want %s (argv %q)", k, cfg[k], v, args)
			}
		}
		if !slices.Contains(cfg["identityfile"], info.KeyPath) {
			t.Errorf("identityfile %v lacks %s", cfg["identityfile"], info.KeyPath)
		}
		if len(cfg["proxycommand"]) > 0 {
			t.Errorf("the command after the destination was parsed as an option: proxycommand %v", cfg["proxycommand"])
		}
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatalf("marker exists: %v", err)
	}
}
