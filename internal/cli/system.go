package cli

import (
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/runner"
)

// unitPath is where `system install` writes the helper's unit.
const unitPath = "/etc/systemd/system/banger-helper.service"

type installOptions struct {
	users     []string
	helperBin string
	dryRun    bool
	logLevel  string
}

func (a *app) systemCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "system",
		Short: "Install banger's root helper (as root); verify nothing leaked",
	}
	var o installOptions
	install := &cobra.Command{
		Use:   "install",
		Short: "Install the root helper and its systemd unit for the given users",
		Long: `bangerd runs as you; the few steps that need root (bridge, TAPs, NAT, loop
and device-mapper devices, image bootstrap) go through banger-helper, a small
root service on /run/banger/helper.sock that admits only root and the users
named here (checked by SO_PEERCRED) and touches only their banger state
directories.

This command copies banger-helper to /usr/local/libexec/banger, writes
` + unitPath + ` and enables it. Run it again to add users or
after an upgrade. Without systemd it prints the command that starts the helper.`,
		Example: `  sudo banger system install --user alice
  sudo banger system install --user alice --user bob
  banger system install --user alice --dry-run   # print the unit only`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.systemInstall(cmd, o)
		},
	}
	install.Flags().StringArrayVar(&o.users, "user", nil, "user allowed to use the helper (repeatable; default: $SUDO_USER)")
	install.Flags().StringVar(&o.helperBin, "helper-binary", "", "banger-helper to install (default: next to this banger)")
	install.Flags().BoolVar(&o.dryRun, "dry-run", false, "print the unit and what would be done, change nothing")
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
	unit := helperapi.DefaultUnitOptions()
	unit.LogLevel = o.logLevel
	for _, name := range o.users {
		u, err := user.Lookup(name)
		if err != nil {
			return usageErrorf("--user %q: %v", name, err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.Atoi(u.Gid)
		if uid != 0 {
			unit.AllowUIDs = append(unit.AllowUIDs, uint32(uid))
			unit.StateDirs = append(unit.StateDirs, filepath.Join(u.HomeDir, ".local", "state", "banger"))
			// The socket's group is the first user's primary group.
			if unit.SocketGID < 0 {
				unit.SocketGID = gid
			}
		}
	}
	if err := unit.Validate(); err != nil {
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
		a.printf("# would install %s -> %s\n# would write %s:\n%s", src, unit.BinaryPath, unitPath, text)
		return nil
	}
	if os.Geteuid() != 0 {
		return rpc.WithHint(fmt.Errorf("system install changes /etc and /usr/local: %w", rpc.ErrForbidden), "run it as root: sudo banger system install --user "+currentUser())
	}
	if err := copyFile(src, unit.BinaryPath, 0o755); err != nil {
		return rpc.WithHint(fmt.Errorf("installing the helper binary: %w", err), "build it first (make build) or pass --helper-binary")
	}
	a.printf("installed %s\n", unit.BinaryPath)
	// The unit makes the state directories writable for the helper only if
	// they exist when it starts: create each user's, owned by that user.
	for _, name := range o.users {
		u, err := user.Lookup(name)
		if err != nil || u.Uid == "0" {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		dir := filepath.Join(u.HomeDir, ".local", "state", "banger")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("creating %s: %w", dir, err)
		}
		for d := dir; d != u.HomeDir && strings.HasPrefix(d, u.HomeDir); d = filepath.Dir(d) {
			if err := os.Lchown(d, uid, gid); err != nil {
				return fmt.Errorf("chown %s: %w", d, err)
			}
		}
	}
	if err := os.WriteFile(unitPath, []byte(text), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", unitPath, err)
	}
	a.printf("wrote %s\n", unitPath)

	if _, err := os.Stat("/run/systemd/system"); err != nil {
		a.printf("systemd is not running on this host; start the helper by hand (as root):\n  %s\n", runner.Argv(unit.BinaryPath, helperArgs(unit)...))
		return nil
	}
	r := &runner.Exec{}
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

// helperArgs is the helper's command line for o, as the unit has it.
func helperArgs(o helperapi.UnitOptions) []string {
	args := []string{"--socket", o.Socket, "--socket-mode", fmt.Sprintf("%04o", uint32(o.SocketMode.Perm()))}
	if o.SocketGID >= 0 {
		args = append(args, "--socket-group", strconv.Itoa(o.SocketGID))
	}
	for _, u := range o.AllowUIDs {
		args = append(args, "--allow-uid", strconv.FormatUint(uint64(u), 10))
	}
	for _, d := range o.StateDirs {
		args = append(args, "--state-dir", d)
	}
	return append(args, "--log", o.LogFile, "--log-level", o.LogLevel)
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
		Long: `Lists leaks: TAP devices other than the pool's (tap-pool-N) that no running VM
holds, loop devices backed by banger's files, device-mapper devices with
banger's prefix, VMM processes without a live VM, VM directories without a
record, and addresses on the bridge other than its gateway. Exits 1 when it
finds any (scripts/verify.sh runs it after the test suite).`,
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
