package mcpserver

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/rpc"
)

// Tool arguments and results besides the Backend's own types. Each result
// carries the call's op id.
type (
	nameArgs struct {
		Name string `json:"name" jsonschema:"the VM's name (or id, or a unique prefix of its id)"`
	}
	execArgs struct {
		Name string `json:"name" jsonschema:"the VM to run the command in"`
		ExecInput
	}
	copyInArgs struct {
		Name      string `json:"name" jsonschema:"the VM to copy into"`
		HostPath  string `json:"host_path" jsonschema:"absolute path of the file or directory on the host to copy"`
		GuestPath string `json:"guest_path" jsonschema:"absolute destination in the guest: an existing directory receives the source under its own name, any other path becomes the copy (a file there is replaced)"`
	}
	copyOutArgs struct {
		Name      string `json:"name" jsonschema:"the VM to copy from"`
		GuestPath string `json:"guest_path" jsonschema:"absolute path of the file or directory in the guest to copy"`
		HostPath  string `json:"host_path" jsonschema:"absolute destination on the host: an existing directory receives the source under its own name, any other path becomes the copy (a file there is replaced)"`
	}
	deleteArgs struct {
		Name  string `json:"name" jsonschema:"the VM to delete"`
		Force bool   `json:"force,omitempty" jsonschema:"kill the VM at once instead of powering it off gracefully first"`
	}

	vmResult struct {
		VM
		OpID string `json:"op_id" jsonschema:"the op id of this call, for banger daemon logs --op"`
	}
	listResult struct {
		VMs  []VM   `json:"vms" jsonschema:"every VM of the user"`
		OpID string `json:"op_id" jsonschema:"the op id of this call, for banger daemon logs --op"`
	}
	detailResult struct {
		VMDetail
		OpID string `json:"op_id" jsonschema:"the op id of this call, for banger daemon logs --op"`
	}
	execResult struct {
		ExecOutput
		OpID string `json:"op_id" jsonschema:"the op id of this call, for banger daemon logs --op"`
	}
	copyResult struct {
		CopyOutput
		OpID string `json:"op_id" jsonschema:"the op id of this call, for banger daemon logs --op"`
	}
	deleteResult struct {
		Name    string `json:"name" jsonschema:"the VM deleted"`
		Deleted bool   `json:"deleted" jsonschema:"always true: a failure is a tool error"`
		OpID    string `json:"op_id" jsonschema:"the op id of this call, for banger daemon logs --op"`
	}
)

// addTools registers the seven VM tools on s.
func addTools(s *mcp.Server, b Backend) {
	yes, no := true, false
	mcp.AddTool(s, &mcp.Tool{
		Name: "vm_create",
		Description: "Create a microVM and boot it; returns when it is running, with its address. " +
			"Creating can take a minute or more (longer when the default image has to be built first). " +
			"The name must be new; omitted sizes take the user's configured defaults.",
		Annotations: &mcp.ToolAnnotations{Title: "Create a VM", DestructiveHint: &no},
	}, handler(validateCreate, func(ctx context.Context, id string, in CreateInput) (vmResult, error) {
		vm, err := b.CreateVM(ctx, in)
		return vmResult{VM: vm, OpID: id}, err
	}))

	mcp.AddTool(s, &mcp.Tool{
		Name:        "vm_list",
		Description: "List the user's microVMs with their state, image, size and address.",
		Annotations: &mcp.ToolAnnotations{Title: "List VMs", ReadOnlyHint: true},
	}, handler(func(struct{}) error { return nil }, func(ctx context.Context, id string, _ struct{}) (listResult, error) {
		vms, err := b.ListVMs(ctx)
		if vms == nil {
			vms = []VM{}
		}
		return listResult{VMs: vms, OpID: id}, err
	}))

	mcp.AddTool(s, &mcp.Tool{
		Name:        "vm_show",
		Description: "Show one microVM in detail: state, spec, address, whether its VMM is up, the last error, its log paths and the stages of its last boot.",
		Annotations: &mcp.ToolAnnotations{Title: "Show a VM", ReadOnlyHint: true},
	}, handler(func(in nameArgs) error { return validateVMName(in.Name) }, func(ctx context.Context, id string, in nameArgs) (detailResult, error) {
		d, err := b.ShowVM(ctx, in.Name)
		return detailResult{VMDetail: d, OpID: id}, err
	}))

	mcp.AddTool(s, &mcp.Tool{
		Name: "vm_exec",
		Description: "Run a command in a running microVM and wait for it to end; returns its exit code, stdout and stderr. " +
			"The command is an argv run without a shell (use [\"sh\", \"-c\", \"...\"] for shell syntax), as root unless user is set, with no terminal. " +
			"A non-zero exit code is a normal result, not a tool error. " +
			fmt.Sprintf("stdout and stderr are each cut to %d KiB, keeping the start and the end (stdout_truncated and stderr_truncated say so): redirect large output to a file and copy it out with vm_copy_out. ", OutputLimit>>10) +
			fmt.Sprintf("The command is killed after timeout_seconds (default %d, at most %d).", int(DefaultExecTimeout/time.Second), int(MaxExecTimeout/time.Second)),
		Annotations: &mcp.ToolAnnotations{Title: "Run a command in a VM", DestructiveHint: &yes},
	}, handler(validateExec, func(ctx context.Context, id string, in execArgs) (execResult, error) {
		e := in.ExecInput
		if e.TimeoutSeconds == 0 {
			e.TimeoutSeconds = int(DefaultExecTimeout / time.Second)
		}
		out, err := b.Exec(ctx, in.Name, e)
		return execResult{ExecOutput: boundOutput(out), OpID: id}, err
	}))

	mcp.AddTool(s, &mcp.Tool{
		Name: "vm_copy_in",
		Description: "Copy a file or directory from the host into a running microVM (recursively, keeping modes and links). " +
			"Both paths are absolute. If guest_path is an existing directory the source lands inside it under its own name; otherwise the copy is created at guest_path.",
		Annotations: &mcp.ToolAnnotations{Title: "Copy into a VM", DestructiveHint: &yes},
	}, handler(validateCopyIn, func(ctx context.Context, id string, in copyInArgs) (copyResult, error) {
		out, err := b.CopyIn(ctx, in.Name, in.HostPath, in.GuestPath)
		return copyResult{CopyOutput: out, OpID: id}, err
	}))

	mcp.AddTool(s, &mcp.Tool{
		Name: "vm_copy_out",
		Description: "Copy a file or directory from a running microVM to the host (recursively, keeping modes and links). " +
			"Both paths are absolute. If host_path is an existing directory the source lands inside it under its own name; otherwise the copy is created at host_path.",
		Annotations: &mcp.ToolAnnotations{Title: "Copy out of a VM", DestructiveHint: &yes},
	}, handler(validateCopyOut, func(ctx context.Context, id string, in copyOutArgs) (copyResult, error) {
		out, err := b.CopyOut(ctx, in.Name, in.GuestPath, in.HostPath)
		return copyResult{CopyOutput: out, OpID: id}, err
	}))

	mcp.AddTool(s, &mcp.Tool{
		Name: "vm_delete",
		Description: "Delete a microVM: power it off (kill it at once with force) and remove its disks, network and record. " +
			"Everything in the VM is lost; copy out what you need first.",
		Annotations: &mcp.ToolAnnotations{Title: "Delete a VM", DestructiveHint: &yes},
	}, handler(func(in deleteArgs) error { return validateVMName(in.Name) }, func(ctx context.Context, id string, in deleteArgs) (deleteResult, error) {
		if err := b.DeleteVM(ctx, in.Name, in.Force); err != nil {
			return deleteResult{}, err
		}
		return deleteResult{Name: in.Name, Deleted: true, OpID: id}, nil
	}))
}

// newOpID mints a call's op id; tests make it avoid the rare repeat of
// op.New's 24 random bits.
var newOpID = op.New

// handler makes a typed tool handler: it mints the call's op id, puts it on
// the context, validates the arguments, runs the tool and turns a failure
// (including a panic) into a tool error that carries the op id.
func handler[In, Out any](validate func(In) error, run func(ctx context.Context, id string, in In) (Out, error)) mcp.ToolHandlerFor[In, Out] {
	return func(ctx context.Context, _ *mcp.CallToolRequest, in In) (_ *mcp.CallToolResult, out Out, err error) {
		id := newOpID()
		ctx = op.With(ctx, id)
		defer func() {
			if r := recover(); r != nil {
				var zero Out
				out, err = zero, &toolError{err: fmt.Errorf("panic in tool handler: %v", r), opID: id}
			}
		}()
		if err := validate(in); err != nil {
			return nil, out, &toolError{err: err, opID: id}
		}
		res, err := run(ctx, id, in)
		if err != nil {
			return nil, out, &toolError{err: err, opID: id}
		}
		return nil, res, nil
	}
}

// toolError is a failed call as the model reads it: the SDK makes its
// Error() the text of an IsError result.
type toolError struct {
	err  error
	opID string
}

// Error renders the message, then code, op id and hint, one per line.
func (e *toolError) Error() string {
	r := rpc.NewErrorResponse(e.err, e.opID)
	var b strings.Builder
	b.WriteString(r.Message)
	fmt.Fprintf(&b, "\ncode: %s", r.Code)
	fmt.Fprintf(&b, "\nop id: %s (the user can read its log with: banger daemon logs --op %s)", e.opID, e.opID)
	if r.Hint != "" {
		fmt.Fprintf(&b, "\nhint: %s", r.Hint)
	}
	return b.String()
}

// Unwrap returns the Backend's or the validation's error.
func (e *toolError) Unwrap() error { return e.err }

// boundOutput cuts stdout and stderr to OutputLimit, setting the flags.
func boundOutput(o ExecOutput) ExecOutput {
	var cut bool
	o.Stdout, cut = truncate(o.Stdout)
	o.StdoutTruncated = o.StdoutTruncated || cut
	o.Stderr, cut = truncate(o.Stderr)
	o.StderrTruncated = o.StderrTruncated || cut
	return o
}
