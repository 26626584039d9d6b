package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/hostcheck"
	"github.com/banger-dev/banger/internal/rpc"
)

func (a *app) doctorCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "doctor",
		Short: "Check this host for what banger needs, and say what to do about each gap",
		Long: `Checks, for real: whether KVM can run an ordinary guest kernel (a test guest
through the KVM API, then a kernel boot under qemu), the qemu and firecracker
binaries and versions, TUN, nftables, the root helper (reachable, same
version) and, for a user, the network root granted; the subnet against the
host's addresses and routes, free disk space, what unprivileged image builds
need (mmdebstrap, newuidmap, subordinate ids, user namespaces, the suite's
keyring), and images without a work-seed.

Exits 0 when nothing failed (warnings allowed), 5 otherwise.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var rep api.DoctorReport
			if err := a.call(cmd.Context(), api.MethodDoctor, nil, &rep); err != nil {
				return err
			}
			if a.output == "json" {
				if err := writeJSON(a.stdout, rep); err != nil {
					return err
				}
			} else {
				for _, ch := range rep.Checks {
					mark := map[hostcheck.Status]string{hostcheck.OK: "ok  ", hostcheck.Warn: "warn", hostcheck.Fail: "FAIL"}[ch.Status]
					a.printf("%s  %-14s %s\n", mark, ch.Name, ch.Detail)
					if ch.Hint != "" && ch.Status != hostcheck.OK {
						a.printf("      %-14s -> %s\n", "", ch.Hint)
					}
				}
			}
			if !rep.OK {
				var failed []string
				for _, ch := range rep.Checks {
					if ch.Status == hostcheck.Fail {
						failed = append(failed, ch.Name)
					}
				}
				if a.output == "json" {
					return &exitError{code: ExitUnavailable}
				}
				return fmt.Errorf("doctor: %d check(s) failed: %s: %w", len(failed), strings.Join(failed, ", "), rpc.ErrUnavailable)
			}
			return nil
		},
	}
}
