package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/rpc"
)

func goodConfigInfo() api.SSHInfo {
	info := goodSSHInfo()
	info.Alias = "web.banger"
	return info
}

func TestSSHConfigBlock(t *testing.T) {
	e, err := sshConfigFor(goodConfigInfo())
	if err != nil {
		t.Fatal(err)
	}
	db := goodConfigInfo()
	db.Name, db.Alias, db.Host, db.KnownHosts = "db", "", "10.0.0.3", "/home/u/.local/state/banger/vms/def/known_hosts"
	e2, err := sshConfigFor(db)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := renderSSHConfig(&b, []sshConfigEntry{e, e2}); err != nil {
		t.Fatal(err)
	}
	want := `# banger vm web
Host web.banger web
    HostName 10.0.0.2
    User root
    Port 22
    IdentityFile /home/u/.local/state/banger/id_ed25519
    IdentitiesOnly yes
    IdentityAgent none
    UserKnownHostsFile /home/u/.local/state/banger/vms/abc/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    HostKeyAlias 10.0.0.2
    UpdateHostKeys no
    PreferredAuthentications publickey
    ProxyJump none
    ConnectTimeout 10

# banger vm db
Host db
    HostName 10.0.0.3
    User root
    Port 22
    IdentityFile /home/u/.local/state/banger/id_ed25519
    IdentitiesOnly yes
    IdentityAgent none
    UserKnownHostsFile /home/u/.local/state/banger/vms/def/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    HostKeyAlias 10.0.0.3
    UpdateHostKeys no
    PreferredAuthentications publickey
    ProxyJump none
    ConnectTimeout 10
`
	if b.String() != want {
		t.Fatalf("got:\n%s\nwant:\n%s", b.String(), want)
	}
	if len(e.Options) != len(sshConfigKeys) {
		t.Fatalf("options %v and the printed keys %v differ", e.Options, sshConfigKeys)
	}
	js, _ := json.Marshal(e)
	if string(js) != `{"name":"web","hosts":["web.banger","web"],"options":{"ConnectTimeout":"10","GlobalKnownHostsFile":"/dev/null",`+
		`"HostKeyAlias":"10.0.0.2","HostName":"10.0.0.2","IdentitiesOnly":"yes","IdentityAgent":"none","IdentityFile":"/home/u/.local/state/banger/id_ed25519",`+
		`"Port":"22","PreferredAuthentications":"publickey","ProxyJump":"none","StrictHostKeyChecking":"yes","UpdateHostKeys":"no","User":"root",`+
		`"UserKnownHostsFile":"/home/u/.local/state/banger/vms/abc/known_hosts"}}` {
		t.Fatalf("json: %s", js)
	}
}

// Every value from the daemon that goes into the config is checked: what
// could end a line, add a word or a pattern, or be expanded by ssh is
// refused (forbidden, with a hint) and nothing is printed.
func TestSSHConfigRefusesHostileValues(t *testing.T) {
	type mut func(*api.SSHInfo)
	name := func(v string) mut { return func(i *api.SSHInfo) { i.Name = v } }
	alias := func(v string) mut { return func(i *api.SSHInfo) { i.Alias = v } }
	user := func(v string) mut { return func(i *api.SSHInfo) { i.User = v } }
	host := func(v string) mut { return func(i *api.SSHInfo) { i.Host = v } }
	key := func(v string) mut { return func(i *api.SSHInfo) { i.KeyPath = v } }
	kh := func(v string) mut { return func(i *api.SSHInfo) { i.KnownHosts = v } }
	cases := map[string]mut{
		"name newline":           name("web\n    ProxyCommand touch /tmp/pwned"),
		"name space":             name("web *"),
		"name star":              name("*"),
		"name question":          name("we?"),
		"name negation":          name("!web"),
		"name comma":             name("web,db"),
		"name empty":             name(""),
		"name upper":             name("Web"),
		"name dot":               name("web.banger"),
		"name hash":              name("#web"),
		"alias newline":          alias("web.banger\nHost *"),
		"alias carriage return":  alias("web.banger\r"),
		"alias space":            alias("web.banger other"),
		"alias star":             alias("*.banger"),
		"alias negation":         alias("!web.banger"),
		"alias address":          alias("10.0.0.9"),
		"alias v6 address":       alias("fd00::9"),
		"alias trailing dot":     alias("web.banger."),
		"alias quote":            alias(`web"banger`),
		"user newline":           user("root\n    ProxyCommand x"),
		"user space":             user("root x"),
		"user percent":           user("%u"),
		"host newline":           host("10.0.0.2\n    ProxyCommand x"),
		"host space":             host("10.0.0.2 x"),
		"host percent":           host("%h"),
		"host dash":              host("-oProxyCommand=x"),
		"key newline":            key("/a\n    ProxyCommand touch /tmp/pwned"),
		"key space":              key("/a b"),
		"key tab":                key("/a\tb"),
		"key quote":              key(`/a"b`),
		"key squote":             key("/a'b"),
		"key percent":            key("/a/%d/id"),
		"key dollar":             key("/a/${HOME}"),
		"key backslash":          key(`/a\b`),
		"key relative":           key("id_ed25519"),
		"key tilde":              key("~/id"),
		"key empty":              key(""),
		"known_hosts newline":    kh("/a\nHost *"),
		"known_hosts cr":         kh("/a\rb"),
		"known_hosts space":      kh("/a b"),
		"known_hosts percent":    kh("/a%%"),
		"known_hosts quote":      kh(`/a"b`),
		"known_hosts nul":        kh("/a\x00b"),
		"known_hosts not clean":  kh("/a/../b"),
		"known_hosts nbsp":       kh("/a\u00a0b"),
		"known_hosts line sep":   kh("/a\u2028b"),
		"known_hosts escape":     kh("/a\x1b[2Jb"),
		"known_hosts relative":   kh("known_hosts"),
		"known_hosts dash":       kh("-known_hosts"),
		"known_hosts whitespace": kh(" /a"),
	}
	for what, m := range cases {
		info := goodConfigInfo()
		m(&info)
		e, err := sshConfigFor(info)
		if err == nil {
			var b bytes.Buffer
			_ = renderSSHConfig(&b, []sshConfigEntry{e})
			t.Errorf("%s: accepted:\n%s", what, b.String())
			continue
		}
		if !errors.Is(err, rpc.ErrForbidden) || rpc.HintOf(err) == "" || !strings.Contains(err.Error(), fmt.Sprintf("refusing to write an ssh config for vm %q", info.Name)) {
			t.Errorf("%s: want a forbidden refusal naming the vm, with a hint: %v", what, err)
		}
	}
	// Control: what a real install has passes.
	for _, ok := range []mut{alias(""), alias("web.vm.example"), kh("/var/lib/banger/vms/0123/known_hosts"), key("/root/.local/state/banger/id_ed25519"), kh("/srv/a#b/known_hosts")} {
		info := goodConfigInfo()
		ok(&info)
		if _, err := sshConfigFor(info); err != nil {
			t.Errorf("refused %+v: %v", info, err)
		}
	}
}

// sshResolved runs the real `ssh -G -F file host`, which prints the
// configuration ssh would use and exits without connecting or resolving
// (canonicalisation is off; the HostName is an address).
func sshResolved(t *testing.T, ssh, file, home, host string) map[string][]string {
	t.Helper()
	cmd := exec.Command(ssh, "-G", "-F", file, host)
	cmd.Env = []string{"HOME=" + home, "PATH=/usr/bin:/bin"}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ssh -G -F %s %s: %v\n%s", file, host, err, out)
	}
	cfg := map[string][]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, " "); ok {
			cfg[k] = append(cfg[k], v)
		}
	}
	return cfg
}

// OpenSSH itself reads the block as banger means it, for both names of the
// VM, even with a user's "Host *" after it that sets every option otherwise
// (as when the block is Included at the top of ~/.ssh/config), and it does
// not take other hosts.
func TestSSHConfigWithRealSSH(t *testing.T) {
	ssh, err := exec.LookPath("ssh")
	if err != nil {
		t.Skip("needs OpenSSH's ssh (apt-get install openssh-client)")
	}
	dir := t.TempDir()
	info := goodConfigInfo()
	info.KeyPath, info.KnownHosts = filepath.Join(dir, "id_ed25519"), filepath.Join(dir, "vms", "abc", "known_hosts")
	e, err := sshConfigFor(info)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := renderSSHConfig(&b, []sshConfigEntry{e}); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(dir, "MARKER")
	b.WriteString("\nHost *\n    HostName 192.0.2.1\n    User mallory\n    Port 2222\n    IdentityFile " + filepath.Join(dir, "other_key") +
		"\n    IdentitiesOnly no\n    IdentityAgent " + filepath.Join(dir, "agent.sock") +
		"\n    UserKnownHostsFile " + filepath.Join(dir, "other_known_hosts") + "\n    GlobalKnownHostsFile " + filepath.Join(dir, "global_known_hosts") +
		"\n    StrictHostKeyChecking no\n    HostKeyAlias other\n    UpdateHostKeys yes\n    PreferredAuthentications password,keyboard-interactive" +
		"\n    ProxyCommand touch " + marker + "\n    ProxyJump bastion.example\n    ConnectTimeout 99\n")
	file := filepath.Join(dir, "config")
	if err := os.WriteFile(file, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"hostname": "10.0.0.2", "user": "root", "port": "22",
		"identitiesonly": "yes", "identityagent": "none",
		"userknownhostsfile": info.KnownHosts, "globalknownhostsfile": "/dev/null",
		"stricthostkeychecking": "true", "hostkeyalias": "10.0.0.2", "updatehostkeys": "false",
		"preferredauthentications": "publickey", "connecttimeout": "10",
	}
	for _, name := range []string{"web", "web.banger"} {
		cfg := sshResolved(t, ssh, file, dir, name)
		for k, v := range want {
			if !slices.Equal(cfg[k], []string{v}) {
				t.Errorf("%s: %s %q, want %q", name, k, cfg[k], v)
			}
		}
		// IdentityFile adds up in ssh_config; banger's key is the first tried.
		if len(cfg["identityfile"]) == 0 || cfg["identityfile"][0] != info.KeyPath {
			t.Errorf("%s: identityfile %q, want %s first", name, cfg["identityfile"], info.KeyPath)
		}
		for _, k := range []string{"proxycommand", "proxyjump"} {
			if len(cfg[k]) > 0 {
				t.Errorf("%s: %s %q, want none", name, k, cfg[k])
			}
		}
	}
	// Control: the user's "Host *" is read, and takes the other hosts.
	cfg := sshResolved(t, ssh, file, dir, "db")
	if !slices.Equal(cfg["hostname"], []string{"192.0.2.1"}) || !slices.Equal(cfg["user"], []string{"mallory"}) || len(cfg["proxycommand"]) != 1 {
		t.Fatalf("control: %v %v %v", cfg["hostname"], cfg["user"], cfg["proxycommand"])
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatalf("marker exists: %v", err)
	}
}

// fakeDaemon serves ping, vm.list and vm.ssh_info on the CLI's socket in a
// runtime directory of its own (BANGER_RUNTIME_DIR).
func fakeDaemon(t *testing.T, list []api.VMInfo, infos map[string]api.SSHInfo) {
	t.Helper()
	isolateCLI(t)
	rt, err := os.MkdirTemp("", "bgc-") // short: a socket path has 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(rt) })
	t.Setenv("BANGER_RUNTIME_DIR", rt)
	ln, err := net.Listen("unix", filepath.Join(rt, "bangerd.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := rpc.NewServer("", slog.New(slog.NewTextHandler(io.Discard, nil)))
	rpc.Register(srv, api.MethodDaemonPing, func(context.Context, struct{}) (api.Ping, error) { return api.Ping{PID: os.Getpid()}, nil })
	rpc.Register(srv, api.MethodVMList, func(context.Context, struct{}) ([]api.VMInfo, error) { return list, nil })
	rpc.Register(srv, api.MethodVMSSHInfo, func(_ context.Context, p api.VMRef) (api.SSHInfo, error) {
		switch p.Name {
		case "stopping":
			return api.SSHInfo{}, rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "vm %s is not running (state stopped)", p.Name), "start it: banger vm start "+p.Name)
		case "gone":
			return api.SSHInfo{}, rpc.Errorf(rpc.ErrNotFound, "vm %q", p.Name)
		case "broken":
			return api.SSHInfo{}, errors.New("the store is on fire")
		}
		info, ok := infos[p.Name]
		if !ok {
			return api.SSHInfo{}, rpc.Errorf(rpc.ErrConflict, "vm %s is not running (state stopped)", p.Name)
		}
		return info, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
}

// run runs the real root command, nothing trapped, against the fake daemon.
func runCLI(args ...string) cliRun {
	var out, errb bytes.Buffer
	a := &app{stdout: &out, stderr: &errb, opID: op.New()}
	code := a.execute(a.rootCommand(), args)
	return cliRun{code: code, stdout: out.String(), stderr: errb.String(), opID: a.opID}
}

// vm ssh-config asks the daemon: every running VM without a name (those
// that stop or go away meanwhile left out, sorted), the named one, or the
// daemon's error with its code and hint; a hostile answer prints nothing.
func TestSSHConfigCommand(t *testing.T) {
	vm := func(name string, alive bool) api.VMInfo { return api.VMInfo{VM: model.VM{Name: name}, Alive: alive} }
	web, db := goodConfigInfo(), goodConfigInfo()
	db.Name, db.Alias, db.Host = "db", "db.banger", "10.0.0.3"
	evil := goodConfigInfo()
	evil.Name, evil.Alias, evil.KnownHosts = "evil", "evil.banger", "/a\n    ProxyCommand touch /tmp/pwned"
	fakeDaemon(t, []api.VMInfo{vm("web", true), vm("old", false), vm("stopping", true), vm("gone", true), vm("db", true)},
		map[string]api.SSHInfo{"web": web, "db": db, "evil": evil})

	r := runCLI("vm", "ssh-config")
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("all: exit %d\n%s", r.code, r.stderr)
	}
	eDB, _ := sshConfigFor(db)
	eWeb, _ := sshConfigFor(web)
	var want bytes.Buffer
	_ = renderSSHConfig(&want, []sshConfigEntry{eDB, eWeb})
	if r.stdout != want.String() {
		t.Fatalf("all:\n%s\nwant:\n%s", r.stdout, want.String())
	}

	r = runCLI("vm", "ssh-config", "web", "-o", "json")
	var got []sshConfigEntry
	if err := json.Unmarshal([]byte(r.stdout), &got); r.code != 0 || err != nil || len(got) != 1 || got[0].Name != "web" ||
		!slices.Equal(got[0].Hosts, []string{"web.banger", "web"}) || got[0].Options["UserKnownHostsFile"] != web.KnownHosts {
		t.Fatalf("web -o json: exit %d, %v: %+v\n%s", r.code, err, got, r.stdout)
	}

	r = runCLI("vm", "ssh-config", "old")
	if r.code != ExitConflict || r.stdout != "" || !strings.Contains(r.stderr, "not running") || !strings.Contains(r.stderr, "code:  conflict") {
		t.Fatalf("stopped VM: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runCLI("vm", "ssh-config", "stopping")
	if r.code != ExitConflict || !strings.Contains(r.stderr, "hint:  start it: banger vm start stopping") {
		t.Fatalf("stopped VM's hint: exit %d\n%s", r.code, r.stderr)
	}
	r = runCLI("vm", "ssh-config", "broken")
	if r.code != ExitError || r.stdout != "" || !strings.Contains(r.stderr, "the store is on fire") || !strings.Contains(r.stderr, "op id: "+r.opID) {
		t.Fatalf("daemon failure: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = runCLI("vm", "ssh-config", "evil")
	if r.code != ExitForbidden || r.stdout != "" || !strings.Contains(r.stderr, `refusing to write an ssh config for vm "evil"`) || !strings.Contains(r.stderr, "hint:  bangerd never answers this") {
		t.Fatalf("hostile answer: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	r = runCLI("vm", "ssh-config", "evil", "-o", "json")
	var refusal map[string]rpc.ErrorResponse
	if err := json.Unmarshal([]byte(r.stdout), &refusal); r.code != ExitForbidden || err != nil || len(refusal) != 1 ||
		refusal["error"].Code != rpc.CodeForbidden || refusal["error"].OpID != r.opID {
		t.Fatalf("hostile answer, json: exit %d, %v\n%s", r.code, err, r.stdout)
	}
}

// With no VM running, the config is empty (and -o json an empty list).
func TestSSHConfigNoVMs(t *testing.T) {
	fakeDaemon(t, []api.VMInfo{{VM: model.VM{Name: "old"}}}, nil)
	if r := runCLI("vm", "ssh-config"); r.code != 0 || r.stdout != "" || r.stderr != "" {
		t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if r := runCLI("vm", "ssh-config", "-o", "json"); r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("json: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
