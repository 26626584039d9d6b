package cli

import (
	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/version"
)

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print banger's version and, if it is running, bangerd's",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := map[string]any{"banger": version.String(), "protocol": rpc.Version}
			if c, ok := a.existingClient(cmd.Context()); ok {
				var p api.Ping
				if err := c.Call(cmd.Context(), api.MethodDaemonPing, nil, &p); err == nil {
					out["bangerd"] = p.Version
				}
			}
			if a.output == "json" {
				return writeJSON(a.stdout, out)
			}
			a.printf("banger  %s (protocol %d)\n", version.String(), rpc.Version)
			if v, ok := out["bangerd"]; ok {
				a.printf("bangerd %s (running)\n", v)
			} else {
				a.printf("bangerd not running\n")
			}
			return nil
		},
	}
}
