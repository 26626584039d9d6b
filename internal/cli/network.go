package cli

import (
	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
)

func (a *app) networkCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "network",
		Short: "Set up or remove the host bridge and NAT the VMs use",
		Long: `VMs attach to a host bridge (network.bridge, default banger0) with the
subnet's first address, and reach out through NAT in an nftables table of
banger's own. bangerd sets both up on demand through the root helper; these
commands do it explicitly.`,
	}
	show := func(st api.NetworkStatus, verb string) error {
		if a.output == "json" {
			return writeJSON(a.stdout, st)
		}
		a.printf("bridge %s %s (%s, subnet %s, domain %s)\n", st.Bridge, verb, st.Gateway, st.Subnet, st.Domain)
		if st.NATTable != "" {
			a.printf("nat    table %s\n", st.NATTable)
		}
		return nil
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "up",
		Short: "Create the bridge and NAT if missing (idempotent)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st api.NetworkStatus
			if err := a.call(cmd.Context(), api.MethodNetworkUp, nil, &st); err != nil {
				return err
			}
			return show(st, "up")
		},
	}, &cobra.Command{
		Use:   "down",
		Short: "Remove NAT and the bridge (refused while VMs run)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st api.NetworkStatus
			if err := a.call(cmd.Context(), api.MethodNetworkDown, nil, &st); err != nil {
				return err
			}
			return show(st, "removed")
		},
	})
	return cmd
}
