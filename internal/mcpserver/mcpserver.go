// Package mcpserver is `banger mcp`: a Model Context Protocol server that
// lets a model create, list, show, exec in, copy to and from, and delete
// VMs. It speaks MCP through the official Go SDK
// (github.com/modelcontextprotocol/go-sdk) and reaches banger only through
// Backend, which the CLI implements with its daemon client.
//
// Tools (their input and output schemas are generated from the Go types of
// this package):
//
//	vm_create    CreateInput                      -> VM + op_id
//	vm_list      {}                               -> {vms: [VM], op_id}
//	vm_show      {name}                           -> VMDetail + op_id
//	vm_exec      {name} + ExecInput               -> ExecOutput + op_id
//	vm_copy_in   {name, host_path, guest_path}    -> CopyOutput + op_id
//	vm_copy_out  {name, guest_path, host_path}    -> CopyOutput + op_id
//	vm_delete    {name, force?}                   -> {name, deleted, op_id}
//
// Every call mints a fresh op id (internal/op) and puts it on the context
// given to the Backend, whose daemon calls carry it, so the daemon's log
// lines of that call have it (`banger daemon logs --op ID`). The result
// names it in its structured output and in its text (the same JSON).
//
// A failure is an MCP tool error (IsError), never a protocol error, so the
// model reads it: its text is the message, the banger code (rpc.CodeOf),
// the op id and the hint (rpc.HintOf), one per line. Arguments are checked
// before the Backend is called (VM and image names as model.ValidateName,
// absolute paths, a non-empty argv, ...); a refusal is a tool error with
// code bad_request. Arguments of the wrong JSON type or unknown fields are
// refused by the SDK against the schema, also as tool errors, before a
// handler runs (so without an op id). A command that exits non-zero is not
// an error: its result has the exit code.
//
// Output of vm_exec is bounded: stdout and stderr are each cut to
// OutputLimit bytes, keeping the start and the end, and the result says so
// (stdout_truncated, stderr_truncated). Capture is a writer that keeps just
// that much, for a Backend that reads output from a stream.
package mcpserver

import (
	"context"
	"io"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Backend is what the MCP tools do, one method per tool. The CLI implements
// it with calls to bangerd. The context carries the tool call's op id
// (op.From); every daemon call made for the tool call should send it.
// Methods may be called concurrently. Arguments have been validated; errors
// should wrap banger's rpc sentinels or be *rpc.ErrorResponse so that their
// code and hint reach the model.
type Backend interface {
	// CreateVM creates a VM and starts it, returning when it is running
	// (or failed).
	CreateVM(ctx context.Context, in CreateInput) (VM, error)
	// ListVMs lists every VM of the user.
	ListVMs(ctx context.Context) ([]VM, error)
	// ShowVM returns one VM, named by name, id or unique id prefix.
	ShowVM(ctx context.Context, name string) (VMDetail, error)
	// Exec runs in.Argv in the VM and waits for it to end. A command that
	// ran is a nil error whatever its exit code; in.TimeoutSeconds is
	// always set (DefaultExecTimeout when the caller gave none).
	Exec(ctx context.Context, name string, in ExecInput) (ExecOutput, error)
	// CopyIn copies the host's file or directory hostPath to guestPath in
	// the VM, as `cp -a` does: into guestPath when that is an existing
	// directory, else to guestPath itself.
	CopyIn(ctx context.Context, name, hostPath, guestPath string) (CopyOutput, error)
	// CopyOut copies the VM's file or directory guestPath to hostPath on
	// the host, with the same rule for an existing directory.
	CopyOut(ctx context.Context, name, guestPath, hostPath string) (CopyOutput, error)
	// DeleteVM stops the VM (at once when force) and removes it.
	DeleteVM(ctx context.Context, name string, force bool) error
}

// CreateInput is vm_create's arguments. Zero values take the config's
// defaults.
type CreateInput struct {
	Name      string `json:"name" jsonschema:"name of the new VM: 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit; it is also the VM's host name"`
	Image     string `json:"image,omitempty" jsonschema:"image to boot (see banger image list); default: the configured default image"`
	VCPUs     int    `json:"vcpus,omitempty" jsonschema:"number of virtual CPUs; default: the configured vm.vcpus"`
	MemoryMiB int    `json:"memory_mib,omitempty" jsonschema:"memory in MiB; default: the configured vm.memory_mib"`
	DiskSize  string `json:"disk_size,omitempty" jsonschema:"size of the persistent work disk, a number with an optional K, M, G or T suffix (binary units), e.g. 4G; default: the configured vm.disk_size"`
}

// ExecInput is what vm_exec runs, besides the VM's name.
type ExecInput struct {
	Argv           []string `json:"argv" jsonschema:"the command and its arguments, run directly without a shell (use [\"sh\", \"-c\", \"...\"] for pipes, redirections or globs); the program is looked up in PATH"`
	Env            []string `json:"env,omitempty" jsonschema:"extra environment variables as NAME=value, added to a clean environment with PATH, HOME, USER, LOGNAME and TERM"`
	Dir            string   `json:"dir,omitempty" jsonschema:"absolute working directory in the guest; default: the user's home"`
	User           string   `json:"user,omitempty" jsonschema:"guest user to run as; default: root"`
	Stdin          string   `json:"stdin,omitempty" jsonschema:"text given to the command on its standard input, which is then closed; default: empty"`
	TimeoutSeconds int      `json:"timeout_seconds,omitempty" jsonschema:"seconds after which the command is killed (SIGKILL) and the result says timed_out; default 300, at most 3600"`
}

// ExecOutput is how a command ended and what it printed. Stdout and Stderr
// are cut to OutputLimit bytes each (the start and the end are kept, with
// a line saying how many bytes were left out between them); the flags say
// when. ExitCode is -1 when the command was killed by a signal, which
// Signal names; TimedOut says the signal came from the timeout.
type ExecOutput struct {
	ExitCode        int    `json:"exit_code" jsonschema:"the command's exit status; -1 when it was killed by a signal"`
	Signal          string `json:"signal,omitempty" jsonschema:"the signal that killed the command, e.g. SIGKILL"`
	TimedOut        bool   `json:"timed_out" jsonschema:"true when the command was killed because it ran longer than timeout_seconds"`
	Stdout          string `json:"stdout" jsonschema:"standard output"`
	Stderr          string `json:"stderr" jsonschema:"standard error"`
	StdoutTruncated bool   `json:"stdout_truncated" jsonschema:"true when stdout was longer than the limit and its middle was left out"`
	StderrTruncated bool   `json:"stderr_truncated" jsonschema:"true when stderr was longer than the limit and its middle was left out"`
}

// CopyOutput is what a copy moved.
type CopyOutput struct {
	Files int   `json:"files" jsonschema:"number of files copied (regular files, directories and links)"`
	Bytes int64 `json:"bytes" jsonschema:"total size of the regular files copied, in bytes"`
}

// VM is a VM as vm_list and vm_create report it.
type VM struct {
	Name          string    `json:"name" jsonschema:"the VM's name"`
	ID            string    `json:"id" jsonschema:"the VM's id"`
	State         string    `json:"state" jsonschema:"creating, running, stopped or failed"`
	Image         string    `json:"image" jsonschema:"the image it boots"`
	VMM           string    `json:"vmm,omitempty" jsonschema:"the virtual machine monitor: qemu or firecracker"`
	VCPUs         int       `json:"vcpus" jsonschema:"virtual CPUs"`
	MemoryMiB     int       `json:"memory_mib" jsonschema:"memory in MiB"`
	DiskSizeBytes int64     `json:"disk_size_bytes" jsonschema:"size of the work disk in bytes"`
	IP            string    `json:"ip,omitempty" jsonschema:"the guest's IPv4 address"`
	DNSName       string    `json:"dns_name,omitempty" jsonschema:"the guest's DNS name on the host"`
	CreatedAt     time.Time `json:"created_at" jsonschema:"when the VM was created"`
}

// VMDetail is a VM as vm_show reports it.
type VMDetail struct {
	VM
	Alive        bool        `json:"alive" jsonschema:"whether the VM's VMM process is up"`
	LastError    string      `json:"last_error,omitempty" jsonschema:"why the last create or start failed"`
	MAC          string      `json:"mac,omitempty" jsonschema:"the guest's MAC address"`
	Dir          string      `json:"dir,omitempty" jsonschema:"the VM's directory on the host"`
	ConsoleLog   string      `json:"console_log,omitempty" jsonschema:"host path of the guest's console log"`
	VMMLog       string      `json:"vmm_log,omitempty" jsonschema:"host path of the VMM's log"`
	WorkDiskPath string      `json:"work_disk_path,omitempty" jsonschema:"host path of the work disk"`
	LastBoot     []BootStage `json:"last_boot,omitempty" jsonschema:"the stages of the last create or start with their durations"`
}

// BootStage is one timed stage of a create or start.
type BootStage struct {
	Name       string `json:"name" jsonschema:"the stage"`
	DurationMS int64  `json:"duration_ms" jsonschema:"how long it took, in milliseconds"`
	Detail     string `json:"detail,omitempty" jsonschema:"what it did"`
}

// Limits of vm_exec.
const (
	// OutputLimit bounds each of stdout and stderr in a vm_exec result,
	// in bytes.
	OutputLimit = 32 << 10
	// DefaultExecTimeout is a command's timeout when the call gives none.
	DefaultExecTimeout = 300 * time.Second
	// MaxExecTimeout is the longest timeout a call may ask for.
	MaxExecTimeout = time.Hour
)

// instructions tell the model what the server is for.
const instructions = `banger manages local microVMs (Linux guests booted from banger images). Create a VM with vm_create, run commands in it with vm_exec, move files with vm_copy_in and vm_copy_out, and remove it with vm_delete when done. Every result carries an op_id; a failure says its code, op id and, often, a hint with the next step. The user can read the daemon's log of a call with: banger daemon logs --op OP_ID.`

// NewServer returns the MCP server with the VM tools, for any transport.
// version is banger's release, reported to clients.
func NewServer(b Backend, version string) *mcp.Server {
	s := mcp.NewServer(&mcp.Implementation{Name: "banger", Title: "banger microVMs", Version: version}, &mcp.ServerOptions{
		Instructions: instructions,
		// No logging capability: the server sends no log messages.
		Capabilities: &mcp.ServerCapabilities{},
	})
	addTools(s, b)
	return s
}

// Run serves MCP on in and out (newline-delimited JSON-RPC, as on stdio)
// until in ends (nil) or ctx is done (ctx's error). Nothing else may write
// to out meanwhile. in is closed when it is an io.Closer; out is not.
func Run(ctx context.Context, b Backend, version string, in io.Reader, out io.Writer) error {
	rc, ok := in.(io.ReadCloser)
	if !ok {
		rc = io.NopCloser(in)
	}
	return NewServer(b, version).Run(ctx, &mcp.IOTransport{Reader: rc, Writer: nopWriteCloser{out}})
}

// nopWriteCloser leaves the caller's writer open.
type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }
