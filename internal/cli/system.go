package cli

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/runner"
	"github.com/banger-dev/banger/internal/subid"
)

// unitPath is where `system install` writes the helper's unit.
const unitPath = "/etc/systemd/system/banger-helper.service"

type installOptions struct {
	users      []string
	subnet     string
	helperBin  string
	grantsFile string
	dryRun     bool
	logLevel   string
}

func (a *app) systemCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "system",
		Short: "Install banger's root helper and grant users a network (as root); verify nothing leaked",
	}
	o := installOptions{grantsFile: helperapi.DefaultGrantsFile}
	install := &cobra.Command{
		Use:   "install",
		Short: "Install the root helper and grant each user a network of its own",
		Long: `bangerd runs as you; the few steps that need root (your bridge, TAPs and NAT,
port 53 on your bridge) go through banger-helper, a small root service on
/run/banger/helper.sock. It admits root and the users granted here, each only
for its own network: bridge banger<N>, TAPs tap<N>-* and one private subnet,
which must overlap no address or route of this host. Image builds need no
root; they run as you, in a user namespace, which needs a subordinate uid and
gid range: this command adds one to /etc/subuid and /etc/subgid for each user
who has none.

It records the grants in ` + helperapi.DefaultGrantsFile + ` (root's), copies
banger-helper to /usr/local/libexec/banger, writes ` + unitPath + `
and (re)starts it. Run it again to add a user, or with --subnet to move one;
a user's existing grant is kept otherwise. Without systemd it prints the
command that starts the helper.`,
		Example: `  sudo banger system install --user alice
  sudo banger system install --user alice --subnet 10.77.0.0/24
  sudo banger system install --user alice --user bob
  banger system install --user alice --dry-run   # print what would change`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.systemInstall(cmd, o)
		},
	}
	install.Flags().StringArrayVar(&o.users, "user", nil, "user to grant a network (repeatable; default: $SUDO_USER)")
	install.Flags().StringVar(&o.subnet, "subnet", "", "the user's subnet, a private IPv4 /16 to /30 (one --user only; default: the first free 172.30.N.0/24)")
	install.Flags().StringVar(&o.helperBin, "helper-binary", "", "banger-helper to install (default: next to this banger)")
	install.Flags().BoolVar(&o.dryRun, "dry-run", false, "print the grants, the unit and what would be done; change nothing")
	install.Flags().StringVar(&o.logLevel, "log-level", "info", "the helper's log level")
	cmd.AddCommand(install, a.systemVerifyCommand())
	return cmd
}

func (a *app) systemInstall(cmd *cobra.Command, o installOptions) error {
	if len(o.users) == 0 {
		if su := os.Getenv("SUDO_USER"); su != "" {
			o.users = []string{su}
		}
	}
	if len(o.users) == 0 {
		return usageErrorf("name the user to grant: --user NAME")
	}
	if o.subnet != "" && len(o.users) != 1 {
		return usageErrorf("--subnet applies to one --user; run install once per user")
	}
	unit := helperapi.DefaultUnitOptions()
	unit.LogLevel = o.logLevel
	unit.GrantsFile = o.grantsFile
	if err := unit.Validate(); err != nil {
		return err
	}
	grants, err := helperapi.LoadGrants(o.grantsFile)
	if err != nil {
		return err
	}
	uses, err := hostnet.List()
	if err != nil {
		return err
	}
	subuids, err := subid.Read(subid.UIDFile)
	if err != nil {
		return err
	}
	var added []helperapi.Grant
	for _, name := range o.users {
		g, err := grantFor(grants, name, o.subnet, uses, subuids)
		if err != nil {
			return err
		}
		grants.Put(g)
		added = append(added, g)
	}
	if err := grants.Validate(); err != nil {
		return err
	}
	text := helperapi.UnitFile(unit)
	src := o.helperBin
	if src == "" {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		src = filepath.Join(filepath.Dir(self), "banger-helper")
	}
	if o.dryRun {
		a.printf("# would write %s:\n%s", o.grantsFile, grants.Marshal())
		a.printf("# would install %s -> %s\n# would write %s:\n%s", src, unit.BinaryPath, unitPath, text)
		return nil
	}
	if os.Geteuid() != 0 {
		return rpc.WithHint(fmt.Errorf("system install changes /etc and /usr/local: %w", rpc.ErrForbidden), "run it as root: sudo banger system install --user "+currentUser())
	}
	r := &runner.Exec{}
	for _, g := range added {
		if err := ensureSubIDs(cmd.Context(), r, g.User, systemIDFiles); err != nil {
			return err
		}
	}
	if err := copyFile(src, unit.BinaryPath, 0o755); err != nil {
		return rpc.WithHint(fmt.Errorf("installing the helper binary: %w", err), "build it first (make build) or pass --helper-binary")
	}
	a.printf("installed %s\n", unit.BinaryPath)
	if err := writeRootFile(o.grantsFile, grants.Marshal()); err != nil {
		return err
	}
	for _, g := range added {
		a.printf("granted %s (uid %d): bridge %s, subnet %s, TAPs %s*\n", g.User, g.UID, g.Bridge(), g.Subnet, g.TapPrefix())
	}
	if err := writeRootFile(unitPath, []byte(text)); err != nil {
		return err
	}
	a.printf("wrote %s\n", unitPath)

	if _, err := os.Stat("/run/systemd/system"); err != nil {
		a.printf("systemd is not running on this host; start the helper by hand (as root):\n  %s\n", runner.Argv(unit.BinaryPath, helperapi.UnitArgs(unit)...))
		return nil
	}
	for _, argv := range [][]string{
		{"systemctl", "daemon-reload"},
		{"systemctl", "enable", "banger-helper.service"},
		{"systemctl", "restart", "banger-helper.service"},
	} {
		if _, err := r.Run(cmd.Context(), argv[0], argv[1:]...); err != nil {
			return rpc.WithHint(err, "see: journalctl -u banger-helper.service")
		}
	}
	a.printf("banger-helper.service enabled and started; check it with: banger doctor\n")
	return nil
}

// firstSubnet is the first subnet install hands out by default, going up
// from there (172.30.77.0/24 is a root daemon's default).
var firstSubnet = netip.MustParsePrefix("172.30.78.0/24")

// grantFor is name's grant: its existing one (moved to subnet when given),
// or a new one with the lowest free network number and the given subnet or
// the first free default one. A subnet must overlap no other grant and
// nothing the host uses (but the user's own bridge). A user whose uid lies
// in anyone's subordinate uid range (subuids) gets none: that range's
// owner could act as the user to the helper.
func grantFor(gs helperapi.Grants, name, subnet string, uses []hostnet.Use, subuids []subid.Range) (helperapi.Grant, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return helperapi.Grant{}, usageErrorf("--user %q: %v", name, err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	if uid == 0 {
		return helperapi.Grant{}, usageErrorf("--user %s: root needs no grant (a root bangerd uses its config's network)", name)
	}
	if in := subid.Containing(subuids, uid); len(in) > 0 {
		r := in[0]
		return helperapi.Grant{}, rpc.WithHint(rpc.Errorf(rpc.ErrConflict,
			"uid %d of %s lies in %s's subordinate uids %d-%d (%s): %s could act as %s to the helper, so %s gets no grant",
			uid, name, r.Owner, r.Start, r.Last(), subid.UIDFile, r.Owner, name, name),
			fmt.Sprintf("move %s's range off uid %d first: sudo usermod --del-subuids %d-%d %s, then give %s a free range (sudo banger system install --user %s does)",
				r.Owner, uid, r.Start, r.Last(), r.Owner, r.Owner, r.Owner))
	}
	g, had := gs.For(uint32(uid))
	if !had {
		g = helperapi.Grant{User: name, UID: uint32(uid), Net: gs.FreeNet()}
	}
	g.User = name
	free := func(p netip.Prefix) error { return gs.CheckSubnetFree(g.UID, g.Bridge(), p, uses) }
	switch {
	case subnet != "":
		if err := helperapi.ValidateSubnet("subnet", subnet); err != nil {
			return g, err
		}
		if err := free(netip.MustParsePrefix(subnet)); err != nil {
			return g, rpc.WithHint(err, "choose another private subnet with --subnet")
		}
		g.Subnet = subnet
	case had:
		if err := free(g.Prefix()); err != nil {
			return g, rpc.WithHint(err, fmt.Sprintf("move %s to a free subnet: --subnet CIDR", name))
		}
	default:
		for p := firstSubnet; ; {
			if free(p) == nil {
				g.Subnet = p.String()
				break
			}
			a := p.Addr().As4()
			if a[2] == 255 {
				return g, rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "no free 172.30.N.0/24 subnet left"), "choose one with --subnet")
			}
			a[2]++
			p = netip.PrefixFrom(netip.AddrFrom4(a), 24)
		}
	}
	return g, g.Validate()
}

// idFiles are the files ensureSubIDs reads.
type idFiles struct{ subuid, subgid, passwd, group string }

var systemIDFiles = idFiles{subid.UIDFile, subid.GIDFile, subid.PasswdFile, subid.GroupFile}

// ensureSubIDs gives name a subordinate uid and gid range of 65536 in
// /etc/subuid and /etc/subgid when it has none (usermod picks nothing: the
// range starts after the highest one in use, at 100000 or more, and holds
// no uid or gid of /etc/passwd, /etc/group or name's own, so that it lets
// name act as no other account), for unprivileged image builds (mmdebstrap
// --mode=unshare).
func ensureSubIDs(ctx context.Context, r runner.Runner, name string, files idFiles) error {
	taken, err := subid.AccountIDs(files.passwd, files.group)
	if err != nil {
		return err
	}
	if u, err := user.Lookup(name); err == nil {
		for _, s := range []string{u.Uid, u.Gid} {
			if id, err := strconv.ParseUint(s, 10, 32); err == nil {
				taken = append(taken, id)
			}
		}
	}
	for _, f := range []struct{ path, flag string }{{files.subuid, "--add-subuids"}, {files.subgid, "--add-subgids"}} {
		ranges, err := subid.Read(f.path)
		if err != nil {
			return err
		}
		if subid.Has(ranges, name, subid.Needed) {
			continue
		}
		start := subid.Free(ranges, subid.Needed, taken)
		spec := fmt.Sprintf("%d-%d", start, start+subid.Needed-1)
		if _, err := r.Run(ctx, "usermod", f.flag, spec, "--", name); err != nil {
			return rpc.WithHint(fmt.Errorf("giving %s the subordinate ids %s in %s: %w", name, spec, f.path, err),
				"add a line "+name+":"+strconv.FormatUint(start, 10)+":65536 to "+f.path+" by hand")
		}
	}
	return nil
}

// writeRootFile writes a root-owned 0644 file anew (its directory 0755).
func writeRootFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp := dst + ".new"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(tmp)
		return err
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, dst)
}

func currentUser() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "$USER"
}

func (a *app) systemVerifyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "verify",
		Short: "List what banger left on the host that no VM accounts for; exit 1 on any leak",
		Long: `Lists leaks: this install's TAP devices other than the pool's that no running
VM holds, loop devices backed by banger's files, VMM processes without a live
VM, VM directories without a record, addresses on the bridge other than its
gateway, and a bridge or TAP with IPv6 on (it could take a guest's router
advertisement). Exits 1 when it finds any (scripts/verify.sh runs it after the
test suite).`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var rep api.VerifyReport
			if err := a.call(cmd.Context(), api.MethodVerify, nil, &rep); err != nil {
				return err
			}
			if a.output == "json" {
				if err := writeJSON(a.stdout, rep); err != nil {
					return err
				}
			} else {
				for _, l := range rep.Leaks {
					a.printf("LEAK  %-8s %s: %s\n", l.Kind, l.What, l.Detail)
				}
				a.printf("%d VMs, %d pool TAPs, %d leaks\n", rep.VMs, rep.PoolTaps, len(rep.Leaks))
			}
			if !rep.OK {
				return &exitError{code: ExitError}
			}
			return nil
		},
	}
}
