package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/config"
)

func (a *app) configCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Show banger's configuration",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "show",
		Short: "Print the effective configuration: every setting, defaults included",
		Long: `Prints every setting with the value in force: the config file's where it sets
one, the documented default otherwise. Copy any line into the file to change
it. bangerd reads the file at start: run banger daemon stop after an edit.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(a.layout.ConfigFile)
			if err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, map[string]any{"path": a.layout.ConfigFile, "config": cfg})
			}
			out, err := config.Encode(cfg)
			if err != nil {
				return err
			}
			a.printf("# %s\n", a.layout.ConfigFile)
			fmt.Fprint(a.stdout, string(out))
			return nil
		},
	})
	return cmd
}
