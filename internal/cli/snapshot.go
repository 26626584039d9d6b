package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/rpc"
)

// Pause, resume, snapshots, restores, forks and warm templates
// (ARCHITECTURE.md, "Snapshots").

func (a *app) vmPauseCommand() *cobra.Command {
	return a.vmPauseResume("pause", "Stop a VM's vCPUs: it keeps its memory, devices and address, and uses no CPU", api.MethodVMPause, "paused")
}

func (a *app) vmResumeCommand() *cobra.Command {
	return a.vmPauseResume("resume", "Run a paused VM again, where it left off", api.MethodVMResume, "resumed")
}

func (a *app) vmPauseResume(use, short, method, done string) *cobra.Command {
	return &cobra.Command{
		Use:   use + " NAME",
		Short: short,
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var info api.VMInfo
			if err := a.call(cmd.Context(), method, api.VMRef{Name: args[0]}, &info); err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, info)
			}
			a.printf("vm %s %s\n", args[0], done)
			return nil
		},
	}
}

func (a *app) vmSnapshotCommand() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "snapshot NAME [--name SNAP]",
		Short: "Save a running VM's memory, devices and disks as a snapshot; it runs on",
		Long: `Pauses the VM, freezes its system and work disks as read-only bases (it goes
on writing to new copy-on-write overlays), saves its device state and memory,
and resumes it: the pause lasts tens of milliseconds. The snapshot can then
roll the VM back (banger vm restore) or make new VMs (banger vm create --from),
each with an identity of its own.`,
		Example: `  banger vm snapshot web --name web-before-upgrade
  banger vm restore web web-before-upgrade
  banger vm create --from web-before-upgrade --name web2`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var info api.SnapshotInfo
			if err := a.call(cmd.Context(), api.MethodVMSnapshot, api.VMSnapshotParams{Name: args[0], Snapshot: name}, &info); err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, info)
			}
			a.printf("snapshot %s of vm %s: %s, the VM paused %d ms\n", info.Name, args[0], humanSize(info.SizeBytes), info.PausedMS)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "the snapshot's name (default: NAME-YYYYMMDD-HHMMSS)")
	return cmd
}

func (a *app) vmRestoreCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "restore NAME SNAP",
		Short: "Roll a VM back to a snapshot: its disks, memory and processes as they were",
		Long: `The VM's VMM is stopped and what it wrote since the snapshot is discarded; it
comes back from the snapshot's memory and devices, over new copy-on-write disks
on the snapshot's, keeping its own name, address, MAC and host key. The
snapshot must have been made with the same VMM build, image, memory and vCPUs.`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.vmOperation(cmd.Context(), api.MethodVMRestoreBegin, api.VMRestoreParams{Name: args[0], Snapshot: args[1]}, "restoring vm "+args[0])
		},
	}
}

func (a *app) vmForkCommand() *cobra.Command {
	var name string
	cmd := &cobra.Command{
		Use:   "fork SRC --name NEW",
		Short: "Make a new VM from a running one: its memory, processes and disks, a new identity",
		Long: `The source is paused for a snapshot (tens of milliseconds) and runs on. The new
VM restores that snapshot over copy-on-write disks of its own and is given its
own MAC, address, hostname, machine-id, SSH host key, entropy and clock before
anything can reach it.`,
		Example: `  banger vm fork web --name web-try`,
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if name == "" {
				return usageErrorf("--name is required")
			}
			return a.vmOperation(cmd.Context(), api.MethodVMForkBegin, api.VMForkParams{Source: args[0], New: name}, "forking vm "+args[0]+" as "+name)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "the new VM's name (required)")
	return cmd
}

// vmOperation begins an operation whose result is a VM and follows it.
func (a *app) vmOperation(ctx context.Context, method string, params any, what string) error {
	c, err := a.client(ctx)
	if err != nil {
		return err
	}
	var o api.Operation
	if err := c.Call(ctx, method, params, &o); err != nil {
		return err
	}
	if a.output == "text" {
		fmt.Fprintf(a.stderr, "%s (%s)\n", what, o.ID)
	}
	final, err := a.follow(ctx, c, api.MethodVMCreateStatus, o)
	if err != nil {
		return err
	}
	var info api.VMInfo
	_ = json.Unmarshal(final.Result, &info)
	return a.showVM(info)
}

func (a *app) snapshotCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "List, show and delete snapshots",
		Long: `A snapshot is a VM's memory, device state and frozen disks (banger vm snapshot).
Images also have warm templates (kind "template", banger image warm), from
which plain creates restore instead of booting; list them with --all.`,
	}
	cmd.AddCommand(a.snapshotListCommand(), a.snapshotShowCommand(), a.snapshotDeleteCommand())
	return cmd
}

func (a *app) snapshotListCommand() *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List snapshots",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var list []api.SnapshotInfo
			if err := a.call(cmd.Context(), api.MethodSnapshotList, api.SnapshotListParams{All: all}, &list); err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, list)
			}
			rows := make([][]string, 0, len(list))
			for _, s := range list {
				used := "-"
				if len(s.UsedBy) > 0 {
					used = strings.Join(s.UsedBy, ",")
				}
				rows = append(rows, []string{s.Name, s.Kind, s.VMName, s.Image, humanSize(s.SizeBytes), s.CreatedAt.Local().Format(time.DateTime), used})
			}
			return table(a.stdout, []string{"NAME", "KIND", "VM", "IMAGE", "SIZE", "CREATED", "USED BY"}, rows)
		},
	}
	cmd.Flags().BoolVarP(&all, "all", "a", false, "include images' warm templates and forks' snapshots")
	return cmd
}

func (a *app) snapshotShowCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "show SNAP",
		Short: "Show a snapshot: what it holds and what a restore must match",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var info api.SnapshotInfo
			if err := a.call(cmd.Context(), api.MethodSnapshotShow, api.SnapshotRef{Name: args[0]}, &info); err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, info)
			}
			var m struct {
				Machine map[string]any `json:"machine"`
				Disks   []struct {
					ID, Base, Format string
				} `json:"disks"`
				Memory string `json:"memory"`
			}
			_ = json.Unmarshal(info.Details, &m)
			pairs := [][2]string{
				{"name", info.Name}, {"id", info.ID}, {"kind", info.Kind},
				{"vm", info.VMName}, {"image", info.Image},
				{"size", humanSize(info.SizeBytes)}, {"created", info.CreatedAt.Local().Format(time.DateTime)},
				{"dir", info.Dir},
			}
			for _, k := range []string{"vmm", "vmm_version", "accel", "cpu", "vcpus", "memory_mib", "disk_size_bytes", "image_build", "guest_contract"} {
				if v, ok := m.Machine[k]; ok {
					pairs = append(pairs, [2]string{k, fmt.Sprint(v)})
				}
			}
			var disks []string
			for _, d := range m.Disks {
				disks = append(disks, d.ID+" "+d.Format)
			}
			pairs = append(pairs, [2]string{"disks", strings.Join(disks, ", ")})
			used := "-"
			if len(info.UsedBy) > 0 {
				used = strings.Join(info.UsedBy, ", ")
			}
			pairs = append(pairs, [2]string{"used by", used})
			return kv(a.stdout, pairs)
		},
	}
}

func (a *app) snapshotDeleteCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "delete SNAP",
		Aliases: []string{"rm"},
		Short:   "Delete a snapshot; VMs made from it keep running and keep their disks",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var info api.SnapshotInfo
			if err := a.call(cmd.Context(), api.MethodSnapshotDelete, api.SnapshotRef{Name: args[0]}, &info); err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, info)
			}
			a.printf("snapshot %s deleted\n", info.Name)
			return nil
		},
	}
}

func (a *app) imageWarmCommand() *cobra.Command {
	var p api.ImageWarmParams
	var size string
	cmd := &cobra.Command{
		Use:   "warm NAME",
		Short: "Make an image's warm template: later creates of this size restore it instead of booting",
		Long: `Boots a VM of the image cold, snapshots it when its agent answers (before any
identity is applied), and deletes the VM. A plain vm create of the same image,
vCPUs, memory and disk size then restores the template and gives the new VM
its own identity: a create in a fraction of a cold boot. The first cold create
of the config's default size makes the template too; --cold skips it.`,
		Example: `  banger image warm default
  banger image warm default --vcpus 4 --memory 4096 --force`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p.Name = args[0]
			if size != "" {
				s, err := config.ParseSize(size)
				if err != nil {
					return usageErrorf("--disk-size: %v", err)
				}
				p.DiskSizeBytes = int64(s)
			}
			c, err := a.client(cmd.Context())
			if err != nil {
				return err
			}
			return a.warmImage(cmd.Context(), c, p)
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&p.VCPUs, "vcpus", 0, "virtual CPUs (default: vm.vcpus in config)")
	fl.IntVar(&p.MemoryMiB, "memory", 0, "memory in MiB (default: vm.memory_mib in config)")
	fl.StringVar(&size, "disk-size", "", "work disk size, e.g. 4G (default: vm.disk_size in config)")
	fl.BoolVar(&p.Force, "force", false, "make it again even if a matching template exists")
	return cmd
}

func (a *app) warmImage(ctx context.Context, c *rpc.Client, p api.ImageWarmParams) error {
	var o api.Operation
	if err := c.Call(ctx, api.MethodImageWarmBegin, p, &o); err != nil {
		return err
	}
	if a.output == "text" && o.State == api.OpRunning {
		fmt.Fprintf(a.stderr, "warming image %s (%s)\n", p.Name, o.ID)
	}
	final, err := a.follow(ctx, c, api.MethodVMCreateStatus, o)
	if err != nil {
		return err
	}
	var info api.SnapshotInfo
	_ = json.Unmarshal(final.Result, &info)
	if a.output == "json" {
		return writeJSON(a.stdout, info)
	}
	a.printf("image %s: warm template %s (%s)\n", p.Name, info.Name, humanSize(info.SizeBytes))
	return nil
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1fG", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.0fM", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%dK", n>>10)
}
