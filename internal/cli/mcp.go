package cli

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/mcpserver"
	"github.com/banger-dev/banger/internal/version"
)

func (a *app) mcpCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "mcp",
		Short: "Serve the Model Context Protocol on stdio: VMs as tools for an AI client",
		Long: `Runs an MCP server on stdin and stdout (nothing else is written to stdout)
with the tools vm_create, vm_list, vm_show, vm_exec, vm_copy_in,
vm_copy_out and vm_delete, backed by your bangerd (started when needed).
Every tool call gets an op id of its own, which is in its result and in every
daemon log line of the call: banger daemon logs --op ID. Configure it in a
client as the command "banger mcp".`,
		Example: `  banger mcp   # as an MCP client's server command`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return mcpserver.Run(cmd.Context(), mcpBackend{a}, version.String(), os.Stdin, os.Stdout)
		},
	}
}

// mcpBackend is the MCP tools' way to banger: the CLI's own calls, each
// with the op id the server put on its context.
type mcpBackend struct{ a *app }

func vmOf(info api.VMInfo) mcpserver.VM {
	return mcpserver.VM{
		Name: info.Name, ID: info.ID, State: string(info.Runtime.State), Image: info.Image, VMM: info.VMM,
		VCPUs: info.Spec.VCPUs, MemoryMiB: info.Spec.MemoryMiB, DiskSizeBytes: info.Spec.DiskSizeBytes,
		IP: info.Runtime.GuestIP, DNSName: info.Runtime.DNSName, CreatedAt: info.CreatedAt,
	}
}

func (b mcpBackend) CreateVM(ctx context.Context, in mcpserver.CreateInput) (mcpserver.VM, error) {
	p := api.VMCreateParams{Name: in.Name, Image: in.Image, VCPUs: in.VCPUs, MemoryMiB: in.MemoryMiB, BuildImage: true}
	if in.DiskSize != "" {
		n, err := config.ParseSize(in.DiskSize)
		if err != nil {
			return mcpserver.VM{}, usageErrorf("disk_size %q: %v", in.DiskSize, err)
		}
		p.DiskSizeBytes = int64(n)
	}
	c, err := b.a.client(ctx)
	if err != nil {
		return mcpserver.VM{}, err
	}
	info, err := b.a.createVM(ctx, c, p)
	if err != nil {
		return mcpserver.VM{}, err
	}
	return vmOf(info), nil
}

func (b mcpBackend) ListVMs(ctx context.Context) ([]mcpserver.VM, error) {
	var list []api.VMInfo
	if err := b.a.call(ctx, api.MethodVMList, nil, &list); err != nil {
		return nil, err
	}
	out := make([]mcpserver.VM, 0, len(list))
	for _, info := range list {
		out = append(out, vmOf(info))
	}
	return out, nil
}

func (b mcpBackend) ShowVM(ctx context.Context, name string) (mcpserver.VMDetail, error) {
	var info api.VMInfo
	if err := b.a.call(ctx, api.MethodVMShow, api.VMRef{Name: name}, &info); err != nil {
		return mcpserver.VMDetail{}, err
	}
	d := mcpserver.VMDetail{
		VM: vmOf(info), Alive: info.Alive, LastError: info.Runtime.LastError, MAC: info.Runtime.MAC,
		Dir: info.Runtime.VMDir, ConsoleLog: info.Runtime.ConsolePath, VMMLog: info.Runtime.LogPath,
		WorkDiskPath: info.Runtime.WorkDiskPath,
	}
	for _, st := range info.Runtime.LastBoot {
		d.LastBoot = append(d.LastBoot, mcpserver.BootStage{Name: st.Name, DurationMS: st.DurationMS, Detail: st.Detail})
	}
	return d, nil
}

func (b mcpBackend) Exec(ctx context.Context, name string, in mcpserver.ExecInput) (mcpserver.ExecOutput, error) {
	conn, err := b.a.agentStream(ctx, name, "exec")
	if err != nil {
		return mcpserver.ExecOutput{}, err
	}
	defer conn.Close()
	var stdout, stderr mcpserver.Capture
	eio := agent.ExecIO{Stdout: &stdout, Stderr: &stderr}
	if in.Stdin != "" {
		eio.Stdin = strings.NewReader(in.Stdin)
	}
	req := agent.ExecRequest{Argv: in.Argv, Env: in.Env, Dir: in.Dir, User: in.User, Timeout: time.Duration(in.TimeoutSeconds) * time.Second}
	st, err := b.a.execIn(ctx, conn, name, req, eio)
	if err != nil {
		return mcpserver.ExecOutput{}, err
	}
	out := mcpserver.ExecOutput{ExitCode: st.Code, TimedOut: st.TimedOut,
		Stdout: stdout.String(), Stderr: stderr.String(), StdoutTruncated: stdout.Truncated(), StderrTruncated: stderr.Truncated()}
	if st.Signal != 0 {
		out.ExitCode = -1
		out.Signal = unix.SignalName(unix.Signal(st.Signal))
		if out.Signal == "" {
			out.Signal = fmt.Sprintf("signal %d", st.Signal)
		}
	}
	return out, nil
}

func (b mcpBackend) CopyIn(ctx context.Context, name, hostPath, guestPath string) (mcpserver.CopyOutput, error) {
	r, err := b.a.copyIn(ctx, name, hostPath, guestPath, true)
	return mcpserver.CopyOutput{Files: r.Files, Bytes: r.Bytes}, err
}

func (b mcpBackend) CopyOut(ctx context.Context, name, guestPath, hostPath string) (mcpserver.CopyOutput, error) {
	r, err := b.a.copyOut(ctx, name, guestPath, hostPath, true)
	return mcpserver.CopyOutput{Files: r.Files, Bytes: r.Bytes}, err
}

func (b mcpBackend) DeleteVM(ctx context.Context, name string, force bool) error {
	return b.a.call(ctx, api.MethodVMDelete, api.VMRef{Name: name, Force: force}, nil)
}
