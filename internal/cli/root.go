// Package cli is the banger command line. Each subcommand lives in its own
// file, parses its flags into an options struct and calls one function; the
// daemon does the work. Errors are printed with their code, op id and a hint
// by printError, and mapped to the exit codes documented in docs/cli.md.
package cli

import (
	"context"
	"fmt"
	"io"
	"os"

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
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	ctx := op.With(context.Background(), a.opID)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
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
	root.PersistentFlags().StringVarP(&a.output, "output", "o", "text", "output format: text or json")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageErrorf("%v", err) })

	root.AddCommand(
		a.versionCommand(),
		a.daemonCommand(),
		a.configCommand(),
		a.vmCommand(),
		a.imageCommand(),
		a.networkCommand(),
		a.doctorCommand(),
		a.systemCommand(),
	)
	return root
}

// exactArgs is cobra.ExactArgs returning a usage error.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usageErrorf("%s takes %d argument(s), got %d; see: %s --help", cmd.CommandPath(), n, len(args), cmd.CommandPath())
		}
		return nil
	}
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) != 0 {
		return usageErrorf("%s takes no arguments, got %q; see: %s --help", cmd.CommandPath(), args, cmd.CommandPath())
	}
	return nil
}

func (a *app) printf(format string, args ...any) { fmt.Fprintf(a.stdout, format, args...) }
