package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
)

func (a *app) vmSSHConfigCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "ssh-config [NAME]",
		Short: "Print an OpenSSH config block for a VM (for all running VMs without NAME)",
		Long: `Prints a Host block per VM that OpenSSH (ssh, scp, sftp, rsync -e ssh), VS Code
Remote-SSH and ansible understand: the VM answers as <name>.<domain> and as
<name>, as root, with banger's key only, its host key checked against the
VM's own pinned known_hosts. Use it with -F, or save it and Include it from
~/.ssh/config (before any "Host *" block: ssh takes the first value of each
option). Without NAME it covers every running VM; regenerate it after a VM
is created or deleted. -o json gives the same blocks as data.`,
		Example: `  banger vm ssh-config > ~/.ssh/banger.conf    # and "Include banger.conf" in ~/.ssh/config
  ssh -F <(banger vm ssh-config web) web uname -r
  scp -F <(banger vm ssh-config web) ./build.tar web:/root/
  rsync -a -e "ssh -F $HOME/.ssh/banger.conf" ./src/ web:/root/src/`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usageErrorf("%s takes at most one VM name, got %q", cmd.CommandPath(), args)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := a.client(ctx)
			if err != nil {
				return err
			}
			infos, err := sshInfos(ctx, c, args)
			if err != nil {
				return err
			}
			entries := make([]sshConfigEntry, 0, len(infos))
			for _, info := range infos {
				e, err := sshConfigFor(info)
				if err != nil {
					return err
				}
				entries = append(entries, e)
			}
			if a.output == "json" {
				return writeJSON(a.stdout, entries)
			}
			return renderSSHConfig(a.stdout, entries)
		},
	}
}

// sshInfos asks the daemon for the ssh details of the named VM, or of every
// running VM when names is empty. A VM that stops or goes away between the
// list and its ssh_info is left out; a named one that is not running is the
// daemon's conflict (with its hint: start it).
func sshInfos(ctx context.Context, c *rpc.Client, names []string) ([]api.SSHInfo, error) {
	quiet := false
	if len(names) == 0 {
		var list []api.VMInfo
		if err := c.Call(ctx, api.MethodVMList, nil, &list); err != nil {
			return nil, err
		}
		for _, v := range list {
			if v.Alive {
				names = append(names, v.Name)
			}
		}
		quiet = true
	}
	infos := make([]api.SSHInfo, 0, len(names))
	for _, n := range names {
		var info api.SSHInfo
		err := c.Call(ctx, api.MethodVMSSHInfo, api.VMRef{Name: n}, &info)
		if quiet && (errors.Is(err, rpc.ErrConflict) || errors.Is(err, rpc.ErrNotFound)) {
			continue
		}
		if err != nil {
			return nil, err
		}
		infos = append(infos, info)
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Name < infos[j].Name })
	return infos, nil
}

// sshConfigEntry is one VM's block: the Host patterns and the options.
// -o json prints it as is.
type sshConfigEntry struct {
	Name    string            `json:"name"`
	Hosts   []string          `json:"hosts"`
	Options map[string]string `json:"options"`
}

// sshConfigKeys are the options of a block in the order they are printed.
// Beyond what `vm ssh` passes: Port, ProxyJump none and
// PreferredAuthentications hold against a later "Host *" of the user's
// (ssh takes the first value it reads; ProxyJump none also stops a later
// ProxyCommand), GlobalKnownHostsFile /dev/null and UpdateHostKeys no keep
// the VM's one pinned key the only one trusted and its file unwritten. No
// BatchMode: nothing here prompts (a key without a passphrase, a pinned
// host key, public keys only), and the caller's own choice stands.
var sshConfigKeys = []string{
	"HostName", "User", "Port",
	"IdentityFile", "IdentitiesOnly", "IdentityAgent",
	"UserKnownHostsFile", "GlobalKnownHostsFile", "StrictHostKeyChecking", "HostKeyAlias", "UpdateHostKeys",
	"PreferredAuthentications", "ProxyJump", "ConnectTimeout",
}

// sshConfigFor makes a VM's block from the daemon's answer, after checking
// every value that goes into it (checkSSHInfo, and the name and alias as
// DNS names), so that none can end a line, split into two words, start a
// pattern or be expanded by ssh. A value that fails is refused
// (rpc.ErrForbidden) and nothing is printed.
func sshConfigFor(info api.SSHInfo) (sshConfigEntry, error) {
	err := checkSSHInfo(info)
	if err == nil {
		err = checkHostPatterns(info)
	}
	if err != nil {
		return sshConfigEntry{}, rpc.WithHint(fmt.Errorf("refusing to write an ssh config for vm %q: %w", info.Name, err),
			"bangerd never answers this: check who serves its socket (banger daemon status) and stop that daemon (banger daemon stop)")
	}
	hosts := []string{info.Name}
	if info.Alias != "" && info.Alias != info.Name {
		hosts = []string{info.Alias, info.Name}
	}
	return sshConfigEntry{Name: info.Name, Hosts: hosts, Options: map[string]string{
		"HostName":                 info.Host,
		"User":                     info.User,
		"Port":                     "22",
		"IdentityFile":             info.KeyPath,
		"IdentitiesOnly":           "yes",
		"IdentityAgent":            "none",
		"UserKnownHostsFile":       info.KnownHosts,
		"GlobalKnownHostsFile":     "/dev/null",
		"StrictHostKeyChecking":    "yes",
		"HostKeyAlias":             info.Host,
		"UpdateHostKeys":           "no",
		"PreferredAuthentications": "publickey",
		"ProxyJump":                "none",
		"ConnectTimeout":           "10",
	}}, nil
}

// checkHostPatterns accepts the VM's name as one DNS label and its alias
// (<name>.<domain>, may be empty) as a DNS name that is not an address:
// neither holds a pattern character of ssh_config ('*', '?', '!', ',').
func checkHostPatterns(info api.SSHInfo) error {
	if !dnsLabel.MatchString(info.Name) {
		return rpc.Errorf(rpc.ErrForbidden, "the daemon's vm name %q is not a DNS label", info.Name)
	}
	if info.Alias == "" {
		return nil
	}
	if _, err := netip.ParseAddr(info.Alias); err == nil || strings.HasSuffix(info.Alias, ".") {
		return rpc.Errorf(rpc.ErrForbidden, "the daemon's alias %q for vm %s is not a DNS name", info.Alias, info.Name)
	}
	if err := checkSSHHost(info.Alias); err != nil {
		return rpc.Errorf(rpc.ErrForbidden, "the daemon's alias %q for vm %s is not a DNS name", info.Alias, info.Name)
	}
	return nil
}

// renderSSHConfig writes the blocks as ssh_config text, one "Host" line and
// its indented options each, separated by a blank line.
func renderSSHConfig(w io.Writer, entries []sshConfigEntry) error {
	var b strings.Builder
	for i, e := range entries {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "# banger vm %s\nHost %s\n", e.Name, strings.Join(e.Hosts, " "))
		for _, k := range sshConfigKeys {
			fmt.Fprintf(&b, "    %s %s\n", k, e.Options[k])
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
