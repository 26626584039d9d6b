package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/mount"
	"github.com/banger-dev/banger/internal/publish"
	"github.com/banger-dev/banger/internal/rpc"
)

func (a *app) vmCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "vm",
		Short: "Create, run, reach and remove microVMs",
		Long: `A VM boots an image with its own system overlay, a persistent work disk at
/root, an address on the bridge, a DNS name (<name>.<domain>) and SSH access
with the install's key.`,
	}
	cmd.AddCommand(a.vmCreateCommand(), a.vmRunCommand(), a.vmSSHCommand(), a.vmListCommand(),
		a.vmShowCommand(), a.vmStopCommand(), a.vmStartCommand(), a.vmRestartCommand(),
		a.vmDeleteCommand(), a.vmLogsCommand(), a.vmSSHConfigCommand(),
		a.vmExecCommand(), a.vmCpCommand(), a.vmPortForwardCommand(),
		a.vmPauseCommand(), a.vmResumeCommand(), a.vmSnapshotCommand(), a.vmRestoreCommand(), a.vmForkCommand())
	return cmd
}

type createFlags struct {
	p        api.VMCreateParams
	mounts   []string
	publish  []string
	disk     string
	noBuild  bool
	rm       bool
	detached bool
}

func (f *createFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.p.Name, "name", "", "VM name: a DNS label (required)")
	fl.StringVar(&f.p.Image, "image", "", "image to boot (default: default_image in config)")
	fl.IntVar(&f.p.VCPUs, "vcpus", 0, "virtual CPUs (default: vm.vcpus in config)")
	fl.IntVar(&f.p.MemoryMiB, "memory", 0, "memory in MiB (default: vm.memory_mib in config)")
	fl.StringVar(&f.disk, "disk-size", "", "work disk size, e.g. 4G (default: vm.disk_size in config)")
	fl.BoolVar(&f.noBuild, "no-build", false, "fail instead of building the default image when it does not exist")
	fl.StringVar(&f.p.From, "from", "", "make the VM from this snapshot (its image and size) instead of booting it")
	fl.BoolVar(&f.p.Cold, "cold", false, "boot the VM even when the image's warm template matches (and make no template)")
	fl.StringArrayVar(&f.mounts, "mount", nil, "share a host folder: HOSTDIR:GUESTPATH[:ro] (repeatable; qemu only; the VM then boots cold)")
	fl.StringArrayVar(&f.publish, "publish", nil, "publish a guest port: [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp] (repeatable; HOSTADDR defaults to 127.0.0.1)")
}

func (f *createFlags) params() (api.VMCreateParams, error) {
	p := f.p
	if p.Name == "" {
		return p, usageErrorf("--name is required")
	}
	if f.disk != "" {
		s, err := config.ParseSize(f.disk)
		if err != nil {
			return p, usageErrorf("--disk-size: %v", err)
		}
		p.DiskSizeBytes = int64(s)
	}
	p.BuildImage = !f.noBuild
	cwd, _ := os.Getwd()
	for _, arg := range f.mounts {
		m, err := mount.Parse(arg, cwd)
		if err != nil {
			return p, usageErrorf("--mount %s: %v", arg, err)
		}
		p.Mounts = append(p.Mounts, model.Mount(m))
	}
	for _, arg := range f.publish {
		q, err := publish.Parse(arg)
		if err != nil {
			return p, usageErrorf("--publish %s: %v", arg, err)
		}
		p.Publish = append(p.Publish, model.Publish(q))
	}
	return p, nil
}

// createVM begins a create and follows it to the end.
func (a *app) createVM(ctx context.Context, c *rpc.Client, p api.VMCreateParams) (api.VMInfo, error) {
	var o api.Operation
	if err := c.Call(ctx, api.MethodVMCreateBegin, p, &o); err != nil {
		return api.VMInfo{}, err
	}
	if a.output == "text" {
		fmt.Fprintf(a.stderr, "creating vm %s (%s)\n", p.Name, o.ID)
	}
	final, err := a.follow(ctx, c, api.MethodVMCreateStatus, o)
	if err != nil {
		return api.VMInfo{}, err
	}
	var info api.VMInfo
	_ = json.Unmarshal(final.Result, &info)
	return info, nil
}

func (a *app) vmCreateCommand() *cobra.Command {
	var f createFlags
	cmd := &cobra.Command{
		Use:   "create --name NAME",
		Short: "Create and boot a VM, showing each stage as it completes",
		Long: `Creates a VM and waits until its guest agent (or SSH) answers. When the image
has a warm template of the same size (banger image warm; the first cold create
of the default size makes one), the VM is restored from it and given its own
identity instead of booting: the "restore" stage says so, and the log says why a
create booted cold. --cold always boots; --from makes it from a snapshot.

--mount HOSTDIR:GUESTPATH[:ro] shares a host folder (virtio-fs, one virtiofsd
each, run as you): the guest mounts it at GUESTPATH before the VM is ready, and
again at every start. Files the guest's root writes are yours on the host; :ro
is enforced on the host. Such a VM boots cold, runs under qemu (Firecracker has
no virtio-fs) and cannot be snapshotted or forked (qemu 7.2 cannot migrate it).

--publish [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp] makes bangerd listen on
HOSTADDR:HOSTPORT (127.0.0.1 unless given) while the VM runs and forward each
connection (or UDP flow) to the guest's 127.0.0.1:GUESTPORT through the guest
agent: no NAT rule, nothing reachable from elsewhere unless you give an address
that is. vm show lists both.

If bangerd goes away while this command follows the create, banger waits up
to 60 s for a daemon to answer again (starting one), then reports where the
VM ended.`,
		Example: `  banger vm create --name web
  banger vm create --name big --vcpus 4 --memory 4096 --disk-size 20G
  banger vm create --name web2 --from web-before-upgrade
  banger vm create --name clean --cold
  banger vm create --name dev --mount .:/root/src --mount ~/data:/data:ro --publish 8080:80`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := f.params()
			if err != nil {
				return err
			}
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			info, err := a.createVM(cmd.Context(), c, p)
			if err != nil {
				return err
			}
			return a.showVM(info)
		},
	}
	f.register(cmd)
	return cmd
}

func (a *app) vmRunCommand() *cobra.Command {
	var f createFlags
	cmd := &cobra.Command{
		Use:   "run --name NAME [--rm] -- COMMAND [ARGS...]",
		Short: "Create and boot a VM, run a command in it, exit with its status",
		Long: `Creates the VM (or reuses one of that name, starting it if stopped), runs the command as root
with stdout and stderr streamed, and exits with the command's exit status
(128+N for a signal N). As with ssh, several words keep their boundaries and
a single word is a shell command line (-- 'ls | wc -l'). It runs through the
guest agent (as vm exec does), or over SSH on an image older than the agent
(guest contract < 3). --rm deletes the VM afterwards.
Progress goes to stderr.`,
		Example: `  banger vm run --name demo -- cat /etc/hostname
  banger vm run --name ci --rm -- sh -c 'cd /root && make test'`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch dash := cmd.ArgsLenAtDash(); {
			case dash < 0 && len(args) > 0:
				return usageErrorf("unexpected %q: give the command after --: banger vm run --name NAME -- COMMAND", args)
			case dash > 0:
				return usageErrorf("unexpected %q before --: banger vm run --name NAME -- COMMAND", args[:dash])
			case len(args) == 0:
				return usageErrorf("give the command after --: banger vm run --name NAME -- COMMAND")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := f.params()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			c, err := a.client(ctx)
			if err != nil {
				return err
			}
			// An existing VM of that name is reused: started when stopped.
			var vm api.VMInfo
			switch err := c.Call(ctx, api.MethodVMShow, api.VMRef{Name: p.Name}, &vm); {
			case err == nil && vm.Alive:
			case err == nil && vm.Runtime.State == "stopped":
				if vm, err = a.startVM(ctx, c, p.Name); err != nil {
					return err
				}
			default:
				if vm, err = a.createVM(ctx, c, p); err != nil {
					return err
				}
			}
			// Through the guest agent where the image has it, else SSH.
			var code int
			var runErr error
			if vm.Agent {
				argv := args
				if len(args) == 1 {
					// One word is a shell command line, as over SSH.
					argv = []string{"sh", "-c", args[0]}
				}
				code, runErr = a.agentExec(ctx, p.Name, argv, execOptions{})
			} else {
				code, runErr = a.sshRun(ctx, c, p.Name, args, false)
			}
			if f.rm {
				if err := c.Call(ctx, api.MethodVMDelete, api.VMRef{Name: p.Name}, nil); err != nil && runErr == nil {
					runErr = err
				}
			}
			if runErr != nil {
				return runErr
			}
			if code != 0 {
				return &exitError{code: code}
			}
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().BoolVar(&f.rm, "rm", false, "delete the VM when the command ends")
	return cmd
}

func (a *app) vmSSHCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "ssh NAME [-- COMMAND [ARGS...]]",
		Short: "Open a shell in a VM, or run a command there, with the system's ssh",
		Long: `Uses the system's ssh with banger's key and the VM's own known_hosts (its
host key was pinned at first boot). Without a command it opens an
interactive shell. Exits with the remote command's status.

Several words after -- are run as exactly those arguments; a single word
is a shell command line (pipes and all).`,
		Example: `  banger vm ssh demo
  banger vm ssh demo -- uname -r`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 {
				return usageErrorf("name the VM: banger vm ssh NAME")
			}
			if dash := cmd.ArgsLenAtDash(); dash > 1 || (dash < 0 && len(args) > 1) {
				if dash < 0 {
					dash = len(args)
				}
				return usageErrorf("unexpected %q after the name: put the command after --: banger vm ssh NAME -- COMMAND", args[1:dash])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			code, err := a.sshRun(cmd.Context(), c, args[0], args[1:], len(args) == 1)
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitError{code: code}
			}
			return nil
		},
	}
}

// sshRun runs the system's ssh against the VM and returns the remote exit
// status (ssh's own failures are 255).
func (a *app) sshRun(ctx context.Context, c *rpc.Client, name string, command []string, interactive bool) (int, error) {
	var info api.SSHInfo
	if err := c.Call(ctx, api.MethodVMSSHInfo, api.VMRef{Name: name}, &info); err != nil {
		return 0, err
	}
	args, err := sshArgv(info, command, interactive)
	if err != nil {
		return 0, err
	}
	sshBin := "ssh"
	cmd := exec.CommandContext(ctx, sshBin, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, a.stdout, a.stderr
	if !interactive {
		cmd.Stdin = nil
	}
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), nil
		}
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 0, rpc.WithHint(fmt.Errorf("running ssh: %w", err), "install openssh-client")
	}
	return 0, nil
}

// sshArgv is the argv of the system's ssh (without "ssh") for a VM: banger's
// options, then "--", then user@host and the remote command, so nothing
// after the options is ever parsed as one. Everything in info came from
// the daemon and is checked first: a user name, an IP address or DNS name,
// and absolute clean paths that ssh will neither split nor expand. A
// value that fails is refused (rpc.ErrForbidden) rather than handed to ssh.
func sshArgv(info api.SSHInfo, command []string, interactive bool) ([]string, error) {
	if err := checkSSHInfo(info); err != nil {
		return nil, rpc.WithHint(fmt.Errorf("refusing to run ssh for vm %q: %w", info.Name, err),
			"bangerd never answers this: check who serves its socket (banger daemon status) and stop that daemon (banger daemon stop)")
	}
	args := []string{
		"-i", info.KeyPath, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
		"-o", "UserKnownHostsFile=" + info.KnownHosts, "-o", "StrictHostKeyChecking=yes",
		"-o", "HostKeyAlias=" + info.Host, "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
	}
	if interactive {
		args = append(args, "-t")
	} else {
		args = append(args, "-o", "BatchMode=yes")
	}
	args = append(args, "--", info.User+"@"+info.Host)
	if len(command) > 0 {
		args = append(args, remoteCommand(command))
	}
	return args, nil
}

// sshUser is what banger accepts as an SSH login name from the daemon.
var sshUser = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

// dnsLabel is one label of a host name.
var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// checkSSHInfo validates the daemon's answer to vm.ssh_info.
func checkSSHInfo(info api.SSHInfo) error {
	if !sshUser.MatchString(info.User) {
		return rpc.Errorf(rpc.ErrForbidden, "the daemon's ssh user %q is not a user name (want %s)", info.User, sshUser)
	}
	if err := checkSSHHost(info.Host); err != nil {
		return err
	}
	if err := checkSSHPath("key path", info.KeyPath); err != nil {
		return err
	}
	return checkSSHPath("known_hosts path", info.KnownHosts)
}

// checkSSHHost accepts an IP address literal (without a zone) or a DNS name
// of lower-case labels.
func checkSSHHost(host string) error {
	if addr, err := netip.ParseAddr(host); err == nil {
		if addr.Zone() != "" {
			return rpc.Errorf(rpc.ErrForbidden, "the daemon's ssh host %q has a zone", host)
		}
		return nil
	}
	labels := strings.Split(strings.TrimSuffix(host, "."), ".")
	ok := host != "" && len(host) <= 253
	for _, l := range labels {
		ok = ok && dnsLabel.MatchString(l)
	}
	if !ok {
		return rpc.Errorf(rpc.ErrForbidden, "the daemon's ssh host %q is neither an IP address nor a DNS name", host)
	}
	return nil
}

// checkSSHPath accepts an absolute, clean path without the characters ssh
// would split an option value at or expand (whitespace, quotes, backslash,
// '%', '$') and without control characters. Absolute, it cannot start with '-'.
func checkSSHPath(what, p string) error {
	bad := func(why string) error {
		return rpc.Errorf(rpc.ErrForbidden, "the daemon's %s %q %s", what, p, why)
	}
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return bad("is not an absolute, clean path")
	}
	for _, r := range p {
		if unicode.IsControl(r) || unicode.IsSpace(r) || strings.ContainsRune(`"'\%$`, r) {
			return bad(fmt.Sprintf("holds %q, which ssh would split or expand (move banger's state to a path without it)", r))
		}
	}
	return nil
}

func (a *app) vmListCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List VMs",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var list []api.VMInfo
			if err := a.call(cmd.Context(), api.MethodVMList, nil, &list); err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, list)
			}
			rows := make([][]string, 0, len(list))
			for _, v := range list {
				rows = append(rows, []string{v.Name, string(v.Runtime.State), v.Runtime.GuestIP, v.Image, v.VMM,
					fmt.Sprintf("%d", v.Spec.VCPUs), fmt.Sprintf("%dM", v.Spec.MemoryMiB), fmt.Sprintf("%dM", v.Spec.DiskSizeBytes>>20), v.ID[:8]})
			}
			return table(a.stdout, []string{"NAME", "STATE", "IP", "IMAGE", "VMM", "CPUS", "MEMORY", "DISK", "ID"}, rows)
		},
	}
}

func (a *app) vmShowCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show a VM: spec, address, disks, log paths and the stages of its last boot",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var info api.VMInfo
			if err := a.call(cmd.Context(), api.MethodVMShow, api.VMRef{Name: args[0]}, &info); err != nil {
				return err
			}
			return a.showVM(info)
		},
	}
}

func (a *app) showVM(v api.VMInfo) error {
	if a.output == "json" {
		return writeJSON(a.stdout, v)
	}
	state := string(v.Runtime.State)
	if v.Runtime.State == "running" && !v.Alive {
		state += " (VMM not found)"
	}
	pairs := [][2]string{
		{"name", v.Name},
		{"id", v.ID},
		{"state", state},
		{"image", v.Image},
		{"vmm", v.VMM},
		{"spec", fmt.Sprintf("%d vCPUs, %d MiB, work disk %d MiB", v.Spec.VCPUs, v.Spec.MemoryMiB, v.Spec.DiskSizeBytes>>20)},
		{"ip", v.Runtime.GuestIP},
		{"dns", v.Runtime.DNSName},
		{"mac", v.Runtime.MAC},
		{"overlay", v.Runtime.SystemOverlay + ": " + v.Runtime.OverlayPath},
		{"work disk", v.Runtime.WorkDiskPath},
		{"console log", v.Runtime.ConsolePath},
		{"vmm log", v.Runtime.LogPath},
		{"api socket", v.Runtime.APISockPath},
		{"dir", v.Runtime.VMDir},
	}
	if v.Handles != nil {
		pairs = append(pairs, [2]string{"pid", fmt.Sprint(v.Handles.PID)}, [2]string{"tap", v.Handles.TapDevice})
	}
	for _, m := range v.Mounts {
		st := "virtiofsd not running"
		if m.Alive {
			st = fmt.Sprintf("virtiofsd pid %d", m.PID)
		}
		mode := ""
		if m.ReadOnly {
			mode = " (read-only)"
		}
		pairs = append(pairs, [2]string{"mount", fmt.Sprintf("%s -> %s%s, %s", m.HostDir, m.GuestPath, mode, st)})
	}
	for _, q := range v.Ports {
		st := "not listening"
		switch {
		case q.Listening:
			st = fmt.Sprintf("listening, %d connection(s)", q.Connections)
		case q.Error != "":
			st = q.Error
		}
		pairs = append(pairs, [2]string{"publish", fmt.Sprintf("%s:%d -> guest %d/%s, %s", q.HostAddr, q.HostPort, q.GuestPort, q.Proto, st)})
	}
	if v.Runtime.LastError != "" {
		pairs = append(pairs, [2]string{"last error", v.Runtime.LastError})
	}
	if len(v.Runtime.LastBoot) > 0 {
		var parts []string
		var total int64
		for _, s := range v.Runtime.LastBoot {
			parts = append(parts, fmt.Sprintf("%s %s", s.Name, humanDuration(time.Duration(s.DurationMS)*time.Millisecond)))
			total += s.DurationMS
		}
		pairs = append(pairs, [2]string{"last boot", fmt.Sprintf("%s (%s)", humanDuration(time.Duration(total)*time.Millisecond), strings.Join(parts, ", "))})
	}
	return kv(a.stdout, pairs)
}

func (a *app) vmSimple(use, short, method string, force bool, done string) *cobra.Command {
	var f bool
	cmd := &cobra.Command{
		Use:   use + " NAME",
		Short: short,
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var info api.VMInfo
			if err := a.call(cmd.Context(), method, api.VMRef{Name: args[0], Force: f}, &info); err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, info)
			}
			a.printf("vm %s %s\n", args[0], done)
			return nil
		},
	}
	if force {
		cmd.Flags().BoolVarP(&f, "force", "f", false, "skip the graceful power-off: kill the VMM at once")
	}
	return cmd
}

func (a *app) vmStopCommand() *cobra.Command {
	return a.vmSimple("stop", "Power a VM off: ACPI power button, then a kill after vm.stop_timeout", api.MethodVMStop, true, "stopped")
}

func (a *app) vmDeleteCommand() *cobra.Command {
	cmd := a.vmSimple("delete", "Stop a VM and remove it: its disks, TAP, address and record", api.MethodVMDelete, true, "deleted")
	cmd.Aliases = []string{"rm"}
	return cmd
}

func (a *app) startVM(ctx context.Context, c *rpc.Client, name string) (api.VMInfo, error) {
	var o api.Operation
	if err := c.Call(ctx, api.MethodVMStartBegin, api.VMRef{Name: name}, &o); err != nil {
		return api.VMInfo{}, err
	}
	if a.output == "text" {
		fmt.Fprintf(a.stderr, "starting vm %s (%s)\n", name, o.ID)
	}
	final, err := a.follow(ctx, c, api.MethodVMStartStatus, o)
	if err != nil {
		return api.VMInfo{}, err
	}
	var info api.VMInfo
	_ = json.Unmarshal(final.Result, &info)
	return info, nil
}

func (a *app) vmStartCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "start NAME",
		Short: "Boot a stopped VM with its disks as they were",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			info, err := a.startVM(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			return a.showVM(info)
		},
	}
}

func (a *app) vmRestartCommand() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "restart NAME",
		Short: "Stop a VM, then start it",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			if err := c.Call(cmd.Context(), api.MethodVMStop, api.VMRef{Name: args[0], Force: force}, nil); err != nil {
				return err
			}
			info, err := a.startVM(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			return a.showVM(info)
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "kill the VMM instead of a graceful power-off")
	return cmd
}

func (a *app) vmLogsCommand() *cobra.Command {
	var follow, vmmLog bool
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Show a VM's serial console (or, with --vmm, the VMM's own output)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var info api.VMInfo
			if err := a.call(cmd.Context(), api.MethodVMShow, api.VMRef{Name: args[0]}, &info); err != nil {
				return err
			}
			path := info.Runtime.ConsolePath
			if vmmLog {
				path = info.Runtime.LogPath
			}
			saved := a.output
			a.output = "json" // raw lines: these logs are not banger's JSON
			defer func() { a.output = saved }()
			return a.showLogs(cmd.Context(), path, logsOptions{follow: follow})
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	cmd.Flags().BoolVar(&vmmLog, "vmm", false, "show the VMM's log instead of the console")
	return cmd
}

// remoteCommand turns the words after -- into the one string ssh hands to
// the remote shell. Several words keep their boundaries exactly (each is
// quoted), so `-- sh -c 'exit 7'` runs sh with two arguments; a single word
// is taken as a shell command line, as ssh users expect (`-- 'ls | wc -l'`).
func remoteCommand(words []string) string {
	if len(words) == 1 {
		return words[0]
	}
	quoted := make([]string, len(words))
	for i, w := range words {
		quoted[i] = shellQuote(w)
	}
	return strings.Join(quoted, " ")
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,@%+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
}
