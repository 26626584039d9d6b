// Package cli is the banger command line. Each subcommand lives in its own
// file, parses its flags into an options struct and calls one function; the
// daemon does the work. Errors are printed with their code, op id and a hint
// by printError, and mapped to the exit codes documented in docs/cli.md.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/version"
)

// app is the state shared by every command of one invocation.
type app struct {
	stdout, stderr io.Writer
	output         string // "text" or "json"
	layout         paths.Layout
	// opID is minted once per invocation and sent with every call, so a
	// CLI error, the daemon log and the helper log share it.
	opID string
}

// Main runs the CLI with args (without the program name) and returns the
// process exit code.
func Main(args []string) int {
	a := &app{stdout: os.Stdout, stderr: os.Stderr, opID: op.New()}
	return a.execute(a.rootCommand(), args)
}

// execute runs root (a tree from rootCommand) with args and returns the
// exit code, printing any error with printError. A usage error without a
// hint of its own is given the failing command's --help as one.
func (a *app) execute(root *cobra.Command, args []string) int {
	if args == nil {
		args = []string{} // nil would make cobra read os.Args
	}
	root.SetArgs(args)
	ctx := op.With(context.Background(), a.opID)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return ExitOK
	}
	var ue *usageError
	if errors.As(err, &ue) && ue.hint == "" && cmd != nil {
		ue.hint = "see: " + cmd.CommandPath() + " --help"
	}
	return a.printError(err)
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "banger",
		Short: "Local microVMs for developers: boot a real kernel in seconds and run commands in it",
		Long: `banger creates isolated microVMs with a real kernel, a persistent work disk at
/root, an address on a host bridge, a DNS name and SSH access, and runs
commands in them. It drives Firecracker where KVM works and QEMU otherwise.

The CLI talks to bangerd, a per-user daemon it starts when needed; privileged
steps go through a small root helper (see: banger system install).`,
		Example: `  banger vm run --name demo -- cat /etc/hostname
  banger vm ssh demo
  banger daemon status
  banger daemon logs --op op-3f9a1c`,
		Version:           version.String(),
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{HiddenDefaultCmd: true},
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			switch a.output {
			case "text", "json":
			default:
				return usageErrorf("--output %q: want text or json", a.output)
			}
			l, err := paths.Default()
			if err != nil {
				return err
			}
			a.layout = l
			return nil
		},
	}
	root.SetVersionTemplate("banger {{.Version}}\n")
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.PersistentFlags().StringVarP(&a.output, "output", "o", "text", "output format: text or json")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return usageErrorf("%s: %v", c.CommandPath(), err) })

	root.AddCommand(
		a.versionCommand(),
		a.daemonCommand(),
		a.configCommand(),
		a.vmCommand(),
		a.imageCommand(),
		a.snapshotCommand(),
		a.networkCommand(),
		a.doctorCommand(),
		a.systemCommand(),
		a.mcpCommand(),
	)
	a.strict(root)
	return root
}

// exactArgs is cobra.ExactArgs returning a usage error that names the
// arguments too many.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) > n:
			return usageErrorf("%s takes %d argument(s), got %d: unexpected %q", cmd.CommandPath(), n, len(args), args[n:])
		case len(args) < n:
			return usageErrorf("%s takes %d argument(s), got %d", cmd.CommandPath(), n, len(args))
		}
		return nil
	}
}

// noArgs is cobra.NoArgs returning a usage error that names the arguments.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) != 0 {
		return usageErrorf("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}

// strict makes the whole tree under root refuse what it does not know, as
// a usage error (exit 2) rather than cobra's help and exit 0, so a typo in
// a script fails:
//
//   - a command group (a command with subcommands, root included) refuses
//     any argument that is not one of its commands: `unknown command "x"
//     for "banger vm"`, with cobra's suggestions as the hint ("did you
//     mean ...?"). Run alone, it prints its help on stderr and fails.
//   - a command without an Args check takes no arguments; every other
//     check's error (cobra's own validators included) is a usage error.
//   - `banger help TOPIC` refuses a topic that is not a command.
//
// Unknown flags are usage errors through the root's flag error function.
// It walks the tree as built, so a command added to any group is covered;
// the help and completion commands cobra would add at run time are added
// first so that they are covered too.
func (a *app) strict(root *cobra.Command) {
	root.SetHelpCommand(a.helpCommand())
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	root.SetUsageTemplate(usageTemplate)
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		switch {
		case c.HasSubCommands():
			c.Args = unknownCommand
			if !c.Runnable() {
				c.RunE = a.groupAlone
			}
		case c.Args == nil:
			c.Args = noArgs
		default:
			c.Args = asUsage(c.Args)
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// unknownCommand is the argument check of a command group: any argument
// reaching it is not one of the group's commands.
func unknownCommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	return unknownIn(cmd, "command", args[0])
}

// unknownIn is a usage error for an unknown command (or help topic) word
// under cmd, with cobra's suggestions from cmd's commands as the hint.
func unknownIn(cmd *cobra.Command, what, word string) error {
	err := &usageError{msg: fmt.Sprintf("unknown %s %q for %q", what, word, cmd.CommandPath()),
		hint: "see: " + cmd.CommandPath() + " --help"}
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // cobra's default, which only its own lookup applies
	}
	if s := cmd.SuggestionsFor(word); len(s) > 0 {
		quoted := make([]string, len(s))
		for i, n := range s {
			quoted[i] = strconv.Quote(n)
		}
		err.hint = fmt.Sprintf("did you mean %s? %s", strings.Join(quoted, " or "), err.hint)
	}
	return err
}

// asUsage makes every error of check a usage error.
func asUsage(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		err := check(cmd, args)
		var ue *usageError
		if err == nil || errors.As(err, &ue) {
			return err
		}
		if strings.Contains(err.Error(), cmd.CommandPath()) {
			return usageErrorf("%v", err)
		}
		return usageErrorf("%s: %v", cmd.CommandPath(), err)
	}
}

// groupAlone runs a command group given no command: its help goes to
// stderr (stdout stays empty, or holds the JSON error with -o json), and it
// fails with a usage error, so a script that lost its subcommand fails.
func (a *app) groupAlone(cmd *cobra.Command, _ []string) error {
	if a.output != "json" {
		cmd.SetOut(a.stderr)
		_ = cmd.Help()
		cmd.SetOut(nil)
		fmt.Fprintln(a.stderr)
	}
	return usageErrorf("%s needs a command (listed in its help)", cmd.CommandPath())
}

// helpCommand is cobra's help command, strict: a topic that is not a
// command is a usage error instead of a message and exit 0.
func (a *app) helpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "help [COMMAND...]",
		Short: "Help about any command",
		Long:  "Help prints the help of any command: banger help vm create.",
		Args:  cobra.ArbitraryArgs,
		ValidArgsFunction: func(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
			cmd, _, err := c.Root().Find(args)
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var out []cobra.Completion
			for _, sub := range cmd.Commands() {
				if sub.IsAvailableCommand() && strings.HasPrefix(sub.Name(), toComplete) {
					out = append(out, cobra.CompletionWithDesc(sub.Name(), sub.Short))
				}
			}
			return out, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(c *cobra.Command, args []string) error {
			cmd, rest, err := c.Root().Find(args)
			if err != nil {
				return usageErrorf("%v", err)
			}
			if len(rest) > 0 {
				return unknownIn(cmd, "help topic", rest[0])
			}
			cmd.InitDefaultHelpFlag()
			cmd.InitDefaultVersionFlag()
			return cmd.Help()
		},
	}
}

// usageTemplate is cobra's default usage template, except that a command
// group shows only "PATH [command]": it runs no command of its own.
const usageTemplate = `Usage:{{if and .Runnable (not .HasAvailableSubCommands)}}
  {{.UseLine}}{{end}}{{if .HasAvailableSubCommands}}
  {{.CommandPath}} [command]{{end}}{{if gt (len .Aliases) 0}}

Aliases:
  {{.NameAndAliases}}{{end}}{{if .HasExample}}

Examples:
{{.Example}}{{end}}{{if .HasAvailableSubCommands}}{{$cmds := .Commands}}{{if eq (len .Groups) 0}}

Available Commands:{{range $cmds}}{{if (or .IsAvailableCommand (eq .Name "help"))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{else}}{{range $group := .Groups}}

{{.Title}}{{range $cmds}}{{if (and (eq .GroupID $group.ID) (or .IsAvailableCommand (eq .Name "help")))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{end}}{{if not .AllChildCommandsHaveGroup}}

Additional Commands:{{range $cmds}}{{if (and (eq .GroupID "") (or .IsAvailableCommand (eq .Name "help")))}}
  {{rpad .Name .NamePadding }} {{.Short}}{{end}}{{end}}{{end}}{{end}}{{end}}{{if .HasAvailableLocalFlags}}

Flags:
{{.LocalFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}{{if .HasAvailableInheritedFlags}}

Global Flags:
{{.InheritedFlags.FlagUsages | trimTrailingWhitespaces}}{{end}}{{if .HasHelpSubCommands}}

Additional help topics:{{range .Commands}}{{if .IsAdditionalHelpTopicCommand}}
  {{rpad .CommandPath .CommandPathPadding}} {{.Short}}{{end}}{{end}}{{end}}{{if .HasAvailableSubCommands}}

Use "{{.CommandPath}} [command] --help" for more information about a command.{{end}}
`

func (a *app) printf(format string, args ...any) { fmt.Fprintf(a.stdout, format, args...) }
