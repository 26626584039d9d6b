package mcpserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/rpc"
)

// TestMain makes op ids unique within the test binary (op.New's six hex
// digits repeat once in millions), so the checks that every call has its
// own id cannot flake.
func TestMain(m *testing.M) {
	var mu sync.Mutex
	seen := map[string]bool{}
	newOpID = func() string {
		mu.Lock()
		defer mu.Unlock()
		for {
			if id := op.New(); !seen[id] {
				seen[id] = true
				return id
			}
		}
	}
	os.Exit(m.Run())
}

// call is one Backend call as the fake saw it.
type call struct {
	Method string
	OpID   string // op.From of the call's context
	Args   []any
}

// fakeBackend records every call and answers with its fields.
type fakeBackend struct {
	mu    sync.Mutex
	calls []call

	err   error      // returned by every method when set
	exec  ExecOutput // Exec's answer
	vms   []VM       // ListVMs' answer
	panic bool       // every method panics

	// block, when set, makes Exec wait for its context to end; blocked is
	// closed when it starts waiting and cancelled when the context ended.
	block     bool
	blocked   chan struct{}
	cancelled chan struct{}
}

var _ Backend = (*fakeBackend)(nil)

func (f *fakeBackend) record(ctx context.Context, method string, args ...any) error {
	f.mu.Lock()
	f.calls = append(f.calls, call{Method: method, OpID: op.From(ctx), Args: args})
	panics := f.panic
	f.mu.Unlock()
	if panics {
		panic("boom")
	}
	return f.err
}

func (f *fakeBackend) Calls() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func testVM(name string) VM {
	return VM{Name: name, ID: "0123456789abcdef", State: "running", Image: "default", VMM: "qemu",
		VCPUs: 2, MemoryMiB: 1024, DiskSizeBytes: 4 << 30, IP: "172.30.0.2", DNSName: name + ".vm",
		CreatedAt: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (f *fakeBackend) CreateVM(ctx context.Context, in CreateInput) (VM, error) {
	if err := f.record(ctx, "CreateVM", in); err != nil {
		return VM{}, err
	}
	return testVM(in.Name), nil
}

func (f *fakeBackend) ListVMs(ctx context.Context) ([]VM, error) {
	if err := f.record(ctx, "ListVMs"); err != nil {
		return nil, err
	}
	return f.vms, nil
}

func (f *fakeBackend) ShowVM(ctx context.Context, name string) (VMDetail, error) {
	if err := f.record(ctx, "ShowVM", name); err != nil {
		return VMDetail{}, err
	}
	return VMDetail{VM: testVM(name), Alive: true, ConsoleLog: "/state/vms/" + name + "/console.log",
		LastBoot: []BootStage{{Name: "boot", DurationMS: 812}}}, nil
}

func (f *fakeBackend) Exec(ctx context.Context, name string, in ExecInput) (ExecOutput, error) {
	if err := f.record(ctx, "Exec", name, in); err != nil {
		return ExecOutput{}, err
	}
	if f.block {
		close(f.blocked)
		select {
		case <-ctx.Done():
			close(f.cancelled)
			return ExecOutput{}, ctx.Err()
		case <-time.After(time.Minute):
			return ExecOutput{}, errors.New("context not cancelled")
		}
	}
	return f.exec, nil
}

func (f *fakeBackend) CopyIn(ctx context.Context, name, hostPath, guestPath string) (CopyOutput, error) {
	if err := f.record(ctx, "CopyIn", name, hostPath, guestPath); err != nil {
		return CopyOutput{}, err
	}
	return CopyOutput{Files: 3, Bytes: 4096}, nil
}

func (f *fakeBackend) CopyOut(ctx context.Context, name, guestPath, hostPath string) (CopyOutput, error) {
	if err := f.record(ctx, "CopyOut", name, guestPath, hostPath); err != nil {
		return CopyOutput{}, err
	}
	return CopyOutput{Files: 1, Bytes: 12}, nil
}

func (f *fakeBackend) DeleteVM(ctx context.Context, name string, force bool) error {
	return f.record(ctx, "DeleteVM", name, force)
}

// connect serves b over the SDK's in-memory transport and returns the
// SDK's client session to it.
func connect(t *testing.T, b Backend) *mcp.ClientSession {
	t.Helper()
	ctx := context.Background()
	st, ct := mcp.NewInMemoryTransports()
	ss, err := NewServer(b, "v1.2.3").Connect(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "0"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cs.Close()
		ss.Wait()
	})
	return cs
}

// callTool calls a tool; a protocol-level error fails the test.
func callTool(t *testing.T, cs *mcp.ClientSession, name string, args any) *mcp.CallToolResult {
	t.Helper()
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s: protocol error: %v", name, err)
	}
	return res
}

// text is the concatenated text content of a result.
func text(res *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

// decode reads a result's structured content into v.
func decode(t *testing.T, res *mcp.CallToolResult, v any) {
	t.Helper()
	b, err := json.Marshal(res.StructuredContent)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("structured content %s: %v", b, err)
	}
}

// schemaOf returns a tool's schema as generic JSON.
func schemaOf(t *testing.T, s any) map[string]any {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func sortedKeys(m map[string]any) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	slices.Sort(k)
	return k
}

func strs(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	slices.Sort(out)
	return out
}

func TestToolsAndSchemas(t *testing.T) {
	cs := connect(t, &fakeBackend{})
	if got := cs.InitializeResult().ServerInfo; got.Name != "banger" || got.Version != "v1.2.3" {
		t.Errorf("server info = %+v", got)
	}
	if cs.InitializeResult().Instructions == "" {
		t.Error("no instructions")
	}
	res, err := cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		props, required []string
		readOnly        bool
	}{
		"vm_create":   {[]string{"disk_size", "image", "memory_mib", "name", "vcpus"}, []string{"name"}, false},
		"vm_list":     {nil, nil, true},
		"vm_show":     {[]string{"name"}, []string{"name"}, true},
		"vm_exec":     {[]string{"argv", "dir", "env", "name", "stdin", "timeout_seconds", "user"}, []string{"argv", "name"}, false},
		"vm_copy_in":  {[]string{"guest_path", "host_path", "name"}, []string{"guest_path", "host_path", "name"}, false},
		"vm_copy_out": {[]string{"guest_path", "host_path", "name"}, []string{"guest_path", "host_path", "name"}, false},
		"vm_delete":   {[]string{"force", "name"}, []string{"name"}, false},
	}
	var names []string
	for _, tool := range res.Tools {
		names = append(names, tool.Name)
		w, ok := want[tool.Name]
		if !ok {
			t.Errorf("unexpected tool %q", tool.Name)
			continue
		}
		if len(tool.Description) < 40 {
			t.Errorf("%s: description too short to act on: %q", tool.Name, tool.Description)
		}
		if tool.Annotations == nil || tool.Annotations.ReadOnlyHint != w.readOnly {
			t.Errorf("%s: annotations %+v, want read-only %v", tool.Name, tool.Annotations, w.readOnly)
		}
		in := schemaOf(t, tool.InputSchema)
		if in["type"] != "object" || in["additionalProperties"] != false {
			t.Errorf("%s: input schema %v: want a closed object", tool.Name, in)
		}
		props, _ := in["properties"].(map[string]any)
		if got := sortedKeys(props); !slices.Equal(got, w.props) {
			t.Errorf("%s: properties %v, want %v", tool.Name, got, w.props)
		}
		for name, p := range props {
			if d, _ := p.(map[string]any)["description"].(string); d == "" {
				t.Errorf("%s: property %s has no description", tool.Name, name)
			}
		}
		var req []string
		if r, ok := in["required"]; ok {
			req = strs(r)
		}
		if !slices.Equal(req, w.required) {
			t.Errorf("%s: required %v, want %v", tool.Name, req, w.required)
		}
		out := schemaOf(t, tool.OutputSchema)
		outProps, _ := out["properties"].(map[string]any)
		if _, ok := outProps["op_id"]; !ok || !slices.Contains(strs(out["required"]), "op_id") {
			t.Errorf("%s: output schema lacks a required op_id: %v", tool.Name, out)
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"vm_copy_in", "vm_copy_out", "vm_create", "vm_delete", "vm_exec", "vm_list", "vm_show"}) {
		t.Errorf("tools = %v", names)
	}
	// Spot checks of the types inferred.
	for _, tool := range res.Tools {
		if tool.Name != "vm_exec" {
			continue
		}
		props := schemaOf(t, tool.InputSchema)["properties"].(map[string]any)
		if got := props["timeout_seconds"].(map[string]any)["type"]; got != "integer" {
			t.Errorf("timeout_seconds type %v", got)
		}
		if got := props["argv"].(map[string]any)["items"].(map[string]any)["type"]; got != "string" {
			t.Errorf("argv items type %v", got)
		}
		outProps := schemaOf(t, tool.OutputSchema)["properties"].(map[string]any)
		for _, k := range []string{"exit_code", "signal", "timed_out", "stdout", "stderr", "stdout_truncated", "stderr_truncated"} {
			if _, ok := outProps[k]; !ok {
				t.Errorf("vm_exec output lacks %s", k)
			}
		}
	}
}

// TestCallsReachBackend calls every tool and checks the backend's
// arguments, the op id on its context and the op id in the result.
func TestCallsReachBackend(t *testing.T) {
	b := &fakeBackend{vms: []VM{testVM("a"), testVM("b")}, exec: ExecOutput{ExitCode: 0, Stdout: "Linux\n"}}
	cs := connect(t, b)

	cases := []struct {
		tool  string
		args  map[string]any
		want  call // OpID is filled from the result
		check func(t *testing.T, res *mcp.CallToolResult)
	}{
		{"vm_create", map[string]any{"name": "dev-1", "image": "trixie", "vcpus": 4, "memory_mib": 2048, "disk_size": "8G"},
			call{Method: "CreateVM", Args: []any{CreateInput{Name: "dev-1", Image: "trixie", VCPUs: 4, MemoryMiB: 2048, DiskSize: "8G"}}},
			func(t *testing.T, res *mcp.CallToolResult) {
				var r vmResult
				decode(t, res, &r)
				if want := testVM("dev-1"); !reflect.DeepEqual(r.VM, want) {
					t.Errorf("vm = %+v, want %+v", r.VM, want)
				}
			}},
		{"vm_create", map[string]any{"name": "min"},
			call{Method: "CreateVM", Args: []any{CreateInput{Name: "min"}}}, nil},
		{"vm_list", map[string]any{},
			call{Method: "ListVMs"},
			func(t *testing.T, res *mcp.CallToolResult) {
				var r listResult
				decode(t, res, &r)
				if len(r.VMs) != 2 || r.VMs[1].Name != "b" {
					t.Errorf("vms = %+v", r.VMs)
				}
			}},
		{"vm_show", map[string]any{"name": "dev-1"},
			call{Method: "ShowVM", Args: []any{"dev-1"}},
			func(t *testing.T, res *mcp.CallToolResult) {
				var r detailResult
				decode(t, res, &r)
				if !r.Alive || r.Name != "dev-1" || r.IP != "172.30.0.2" || len(r.LastBoot) != 1 || r.ConsoleLog == "" {
					t.Errorf("detail = %+v", r.VMDetail)
				}
			}},
		{"vm_exec", map[string]any{"name": "dev-1", "argv": []string{"uname", "-a"}, "env": []string{"A=1", "B="}, "dir": "/tmp", "user": "banger", "stdin": "in\n", "timeout_seconds": 10},
			call{Method: "Exec", Args: []any{"dev-1", ExecInput{Argv: []string{"uname", "-a"}, Env: []string{"A=1", "B="}, Dir: "/tmp", User: "banger", Stdin: "in\n", TimeoutSeconds: 10}}},
			func(t *testing.T, res *mcp.CallToolResult) {
				var r execResult
				decode(t, res, &r)
				if r.Stdout != "Linux\n" || r.ExitCode != 0 || r.StdoutTruncated {
					t.Errorf("exec = %+v", r.ExecOutput)
				}
			}},
		{"vm_exec", map[string]any{"name": "dev-1", "argv": []string{"true"}},
			call{Method: "Exec", Args: []any{"dev-1", ExecInput{Argv: []string{"true"}, TimeoutSeconds: int(DefaultExecTimeout / time.Second)}}}, nil},
		{"vm_copy_in", map[string]any{"name": "dev-1", "host_path": "/home/u/src", "guest_path": "/root/src"},
			call{Method: "CopyIn", Args: []any{"dev-1", "/home/u/src", "/root/src"}},
			func(t *testing.T, res *mcp.CallToolResult) {
				var r copyResult
				decode(t, res, &r)
				if r.Files != 3 || r.Bytes != 4096 {
					t.Errorf("copy = %+v", r.CopyOutput)
				}
			}},
		{"vm_copy_out", map[string]any{"name": "dev-1", "guest_path": "/var/log/syslog", "host_path": "/tmp/out"},
			call{Method: "CopyOut", Args: []any{"dev-1", "/var/log/syslog", "/tmp/out"}}, nil},
		{"vm_delete", map[string]any{"name": "dev-1", "force": true},
			call{Method: "DeleteVM", Args: []any{"dev-1", true}},
			func(t *testing.T, res *mcp.CallToolResult) {
				var r deleteResult
				decode(t, res, &r)
				if !r.Deleted || r.Name != "dev-1" {
					t.Errorf("delete = %+v", r)
				}
			}},
		{"vm_delete", map[string]any{"name": "dev-1"},
			call{Method: "DeleteVM", Args: []any{"dev-1", false}}, nil},
	}
	seen := map[string]bool{}
	for i, c := range cases {
		res := callTool(t, cs, c.tool, c.args)
		if res.IsError {
			t.Fatalf("%s: tool error: %s", c.tool, text(res))
		}
		calls := b.Calls()
		if len(calls) != i+1 {
			t.Fatalf("%s: backend calls = %d, want %d", c.tool, len(calls), i+1)
		}
		got := calls[i]
		if !op.Valid(got.OpID) {
			t.Errorf("%s: backend context op id %q not valid", c.tool, got.OpID)
		}
		if seen[got.OpID] {
			t.Errorf("%s: op id %s reused", c.tool, got.OpID)
		}
		seen[got.OpID] = true
		c.want.OpID = got.OpID
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: backend call %+v, want %+v", c.tool, got, c.want)
		}
		var withID struct {
			OpID string `json:"op_id"`
		}
		decode(t, res, &withID)
		if withID.OpID != got.OpID {
			t.Errorf("%s: result op id %q, backend saw %q", c.tool, withID.OpID, got.OpID)
		}
		if !strings.Contains(text(res), got.OpID) {
			t.Errorf("%s: text %q lacks op id %s", c.tool, text(res), got.OpID)
		}
		if c.check != nil {
			c.check(t, res)
		}
	}
}

func TestEmptyListIsArray(t *testing.T) {
	cs := connect(t, &fakeBackend{})
	res := callTool(t, cs, "vm_list", nil)
	if res.IsError {
		t.Fatal(text(res))
	}
	if !strings.Contains(text(res), `"vms":[]`) {
		t.Errorf("text %s: want an empty array", text(res))
	}
}

// TestConcurrentCallsDistinctOpIDs runs calls at once: each gets its own id.
func TestConcurrentCallsDistinctOpIDs(t *testing.T) {
	b := &fakeBackend{}
	cs := connect(t, b)
	const n = 16
	ids := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "vm_show", Arguments: map[string]any{"name": fmt.Sprintf("vm-%d", i)}})
			if err != nil || res.IsError {
				t.Errorf("call %d: %v %v", i, err, res)
				return
			}
			var r detailResult
			decode(t, res, &r)
			ids[i] = r.OpID
		}()
	}
	wg.Wait()
	byName := map[string]string{}
	for _, c := range b.Calls() {
		byName[c.Args[0].(string)] = c.OpID
	}
	seen := map[string]bool{}
	for i, id := range ids {
		if !op.Valid(id) || seen[id] {
			t.Errorf("call %d: op id %q invalid or repeated", i, id)
		}
		seen[id] = true
		if got := byName[fmt.Sprintf("vm-%d", i)]; got != id {
			t.Errorf("call %d: backend saw %q, result says %q", i, got, id)
		}
	}
}

// TestBackendErrorsAreToolErrors: a failure is IsError with message, code,
// op id and hint, not a protocol error.
func TestBackendErrorsAreToolErrors(t *testing.T) {
	cases := []struct {
		name     string
		err      func(ctx context.Context) error
		code     rpc.Code
		message  string
		hint     string
		noDupeID bool
	}{
		{"sentinel with hint", func(context.Context) error {
			return rpc.WithHint(rpc.Errorf(rpc.ErrNotFound, "vm %q", "web"), "list VMs with: banger vm list")
		}, rpc.CodeNotFound, `vm "web": not found`, "list VMs with: banger vm list", false},
		{"daemon error response", func(ctx context.Context) error {
			// What the rpc client returns: the daemon stamped the call's op id.
			return fmt.Errorf("creating vm: %w", &rpc.ErrorResponse{Code: rpc.CodeConflict, Message: `vm "web" exists`, Hint: "choose another name", OpID: op.From(ctx)})
		}, rpc.CodeConflict, `creating vm: vm "web" exists`, "choose another name", true},
		{"plain error", func(context.Context) error { return errors.New("disk on fire") }, rpc.CodeInternal, "disk on fire", "", false},
		{"deadline", func(context.Context) error { return fmt.Errorf("waiting: %w", context.DeadlineExceeded) }, rpc.CodeTimeout, "waiting: context deadline exceeded", "", false},
	}
	calls := []struct {
		tool string
		args map[string]any
	}{
		{"vm_create", map[string]any{"name": "web"}},
		{"vm_list", nil},
		{"vm_show", map[string]any{"name": "web"}},
		{"vm_exec", map[string]any{"name": "web", "argv": []string{"true"}}},
		{"vm_copy_in", map[string]any{"name": "web", "host_path": "/a", "guest_path": "/b"}},
		{"vm_copy_out", map[string]any{"name": "web", "guest_path": "/b", "host_path": "/a"}},
		{"vm_delete", map[string]any{"name": "web"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := &errBackend{errFor: c.err}
			cs := connect(t, b)
			for _, k := range calls {
				res := callTool(t, cs, k.tool, k.args)
				if !res.IsError {
					t.Fatalf("%s: not a tool error: %s", k.tool, text(res))
				}
				if res.StructuredContent != nil {
					t.Errorf("%s: error carries structured content %v", k.tool, res.StructuredContent)
				}
				id := b.lastOpID()
				if !op.Valid(id) {
					t.Fatalf("%s: backend context op id %q not valid", k.tool, id)
				}
				msg := text(res)
				want := []string{c.message + "\n", "code: " + string(c.code) + "\n", "op id: " + id, "banger daemon logs --op " + id}
				if c.hint != "" {
					want = append(want, "\nhint: "+c.hint)
				} else if strings.Contains(msg, "hint:") {
					t.Errorf("%s: text has a hint: %q", k.tool, msg)
				}
				for _, w := range want {
					if !strings.Contains(msg, w) {
						t.Errorf("%s: text %q lacks %q", k.tool, msg, w)
					}
				}
				if !strings.HasPrefix(msg, c.message+"\n") {
					t.Errorf("%s: text %q does not start with the message", k.tool, msg)
				}
				if c.noDupeID && strings.Contains(msg, "("+id+")") {
					t.Errorf("%s: op id repeated in the message: %q", k.tool, msg)
				}
			}
		})
	}
}

// errBackend fails every call with errFor(ctx), remembering the op id.
type errBackend struct {
	errFor func(ctx context.Context) error
	mu     sync.Mutex
	last   string
}

func (e *errBackend) fail(ctx context.Context) error {
	e.mu.Lock()
	e.last = op.From(ctx)
	e.mu.Unlock()
	return e.errFor(ctx)
}

func (e *errBackend) lastOpID() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.last
}

func (e *errBackend) CreateVM(ctx context.Context, _ CreateInput) (VM, error) {
	return VM{}, e.fail(ctx)
}
func (e *errBackend) ListVMs(ctx context.Context) ([]VM, error) { return nil, e.fail(ctx) }
func (e *errBackend) ShowVM(ctx context.Context, _ string) (VMDetail, error) {
	return VMDetail{}, e.fail(ctx)
}
func (e *errBackend) Exec(ctx context.Context, _ string, _ ExecInput) (ExecOutput, error) {
	return ExecOutput{}, e.fail(ctx)
}
func (e *errBackend) CopyIn(ctx context.Context, _, _, _ string) (CopyOutput, error) {
	return CopyOutput{}, e.fail(ctx)
}
func (e *errBackend) CopyOut(ctx context.Context, _, _, _ string) (CopyOutput, error) {
	return CopyOutput{}, e.fail(ctx)
}
func (e *errBackend) DeleteVM(ctx context.Context, _ string, _ bool) error { return e.fail(ctx) }

// TestInvalidInputRefused: bad arguments never reach the backend.
func TestInvalidInputRefused(t *testing.T) {
	b := &fakeBackend{}
	cs := connect(t, b)
	long := strings.Repeat("a", 64)
	cases := []struct {
		tool string
		args map[string]any
		want string // in the text; "" for the SDK's schema check (no op id)
	}{
		{"vm_create", map[string]any{"name": "Web"}, `vm name "Web"`},
		{"vm_create", map[string]any{"name": ""}, `vm name ""`},
		{"vm_create", map[string]any{"name": long}, "vm name"},
		{"vm_create", map[string]any{"name": "-web"}, "vm name"},
		{"vm_create", map[string]any{"name": "a\nb"}, "vm name"},
		{"vm_create", map[string]any{"name": "ok", "image": "../x"}, "image name"},
		{"vm_create", map[string]any{"name": "ok", "vcpus": -1}, "vcpus -1"},
		{"vm_create", map[string]any{"name": "ok", "memory_mib": -5}, "memory_mib -5"},
		{"vm_create", map[string]any{"name": "ok", "disk_size": "lots"}, "disk_size"},
		{"vm_show", map[string]any{"name": "a_b"}, "vm name"},
		{"vm_delete", map[string]any{"name": "UPPER"}, "vm name"},
		{"vm_exec", map[string]any{"name": "ok", "argv": []string{}}, "argv: the command is empty"},
		{"vm_exec", map[string]any{"name": "ok", "argv": []string{""}}, "argv: the command is empty"},
		{"vm_exec", map[string]any{"name": "ok", "argv": []string{"echo", "a\x00b"}}, "argv[1]"},
		{"vm_exec", map[string]any{"name": "ok", "argv": []string{"true"}, "env": []string{"NOEQUALS"}}, `env "NOEQUALS"`},
		{"vm_exec", map[string]any{"name": "ok", "argv": []string{"true"}, "env": []string{"1A=x"}}, `env "1A=x"`},
		{"vm_exec", map[string]any{"name": "ok", "argv": []string{"true"}, "env": []string{"=x"}}, `env "=x"`},
		{"vm_exec", map[string]any{"name": "ok", "argv": []string{"true"}, "dir": "tmp"}, `dir "tmp"`},
		{"vm_exec", map[string]any{"name": "ok", "argv": []string{"true"}, "user": "Root"}, `user "Root"`},
		{"vm_exec", map[string]any{"name": "ok", "argv": []string{"true"}, "user": "a b"}, `user "a b"`},
		{"vm_exec", map[string]any{"name": "ok", "argv": []string{"true"}, "timeout_seconds": -1}, "timeout_seconds -1"},
		{"vm_exec", map[string]any{"name": "ok", "argv": []string{"true"}, "timeout_seconds": 3601}, "timeout_seconds 3601"},
		{"vm_exec", map[string]any{"name": "no such", "argv": []string{"true"}}, "vm name"},
		{"vm_copy_in", map[string]any{"name": "ok", "host_path": "rel/path", "guest_path": "/root"}, `host_path "rel/path"`},
		{"vm_copy_in", map[string]any{"name": "ok", "host_path": "/a", "guest_path": "root"}, `guest_path "root"`},
		{"vm_copy_in", map[string]any{"name": "ok", "host_path": "", "guest_path": "/root"}, `host_path ""`},
		{"vm_copy_out", map[string]any{"name": "ok", "guest_path": "~/x", "host_path": "/tmp"}, `guest_path "~/x"`},
		{"vm_copy_out", map[string]any{"name": "ok", "guest_path": "/x", "host_path": "./x"}, `host_path "./x"`},
		{"vm_copy_out", map[string]any{"name": "Bad", "guest_path": "/x", "host_path": "/x"}, "vm name"},
		// Refused by the SDK against the generated schema.
		{"vm_create", map[string]any{}, ""},
		{"vm_create", map[string]any{"name": "ok", "nmae": "typo"}, ""},
		{"vm_create", map[string]any{"name": "ok", "vcpus": "two"}, ""},
		{"vm_exec", map[string]any{"name": "ok"}, ""},
		{"vm_exec", map[string]any{"name": "ok", "argv": "ls -l"}, ""},
		{"vm_copy_in", map[string]any{"name": "ok", "host_path": "/a"}, ""},
		{"vm_delete", map[string]any{"name": "ok", "force": "yes"}, ""},
	}
	for _, c := range cases {
		res := callTool(t, cs, c.tool, c.args)
		msg := text(res)
		if !res.IsError {
			t.Errorf("%s %v: accepted: %s", c.tool, c.args, msg)
			continue
		}
		if c.want == "" {
			continue
		}
		for _, w := range []string{c.want, "code: bad_request", "op id: op-", "hint: "} {
			if !strings.Contains(msg, w) {
				t.Errorf("%s %v: text %q lacks %q", c.tool, c.args, msg, w)
			}
		}
	}
	if calls := b.Calls(); len(calls) != 0 {
		t.Errorf("backend called for invalid input: %+v", calls)
	}
	// Valid edge cases pass.
	for _, args := range []map[string]any{
		{"name": "a", "argv": []string{"true"}, "timeout_seconds": 3600, "user": "_x-1", "env": []string{"_A1=", "PATH=/bin:/usr/bin"}},
		{"name": strings.Repeat("a", 63), "argv": []string{"sh", "-c", "exit 3"}},
	} {
		if res := callTool(t, cs, "vm_exec", args); res.IsError {
			t.Errorf("%v refused: %s", args, text(res))
		}
	}
}

// TestNonZeroExitIsAResult: a failing command is not a tool error.
func TestNonZeroExitIsAResult(t *testing.T) {
	for _, out := range []ExecOutput{
		{ExitCode: 3, Stderr: "no such file\n"},
		{ExitCode: -1, Signal: "SIGKILL", TimedOut: true, Stdout: "partial"},
	} {
		cs := connect(t, &fakeBackend{exec: out})
		res := callTool(t, cs, "vm_exec", map[string]any{"name": "web", "argv": []string{"ls", "/nope"}})
		if res.IsError {
			t.Fatalf("tool error: %s", text(res))
		}
		var r execResult
		decode(t, res, &r)
		if r.ExecOutput != out {
			t.Errorf("result %+v, want %+v", r.ExecOutput, out)
		}
	}
}

func TestExecOutputTruncated(t *testing.T) {
	stdout := "HEAD" + strings.Repeat("x", 3*OutputLimit) + "TAIL"
	stderr := strings.Repeat("e", OutputLimit) // exactly the limit: kept whole
	cs := connect(t, &fakeBackend{exec: ExecOutput{ExitCode: 0, Stdout: stdout, Stderr: stderr}})
	res := callTool(t, cs, "vm_exec", map[string]any{"name": "web", "argv": []string{"yes"}})
	if res.IsError {
		t.Fatal(text(res))
	}
	var r execResult
	decode(t, res, &r)
	if !r.StdoutTruncated || len(r.Stdout) > OutputLimit || !strings.HasPrefix(r.Stdout, "HEAD") || !strings.HasSuffix(r.Stdout, "TAIL") {
		t.Errorf("stdout: truncated %v, %d bytes, %q...%q", r.StdoutTruncated, len(r.Stdout), r.Stdout[:8], r.Stdout[len(r.Stdout)-8:])
	}
	if want := fmt.Sprintf("[... %d bytes left out ...]", len(stdout)-keepHead-keepTail); !strings.Contains(r.Stdout, want) {
		t.Errorf("stdout lacks %q", want)
	}
	if r.StderrTruncated || r.Stderr != stderr {
		t.Errorf("stderr: truncated %v, %d bytes", r.StderrTruncated, len(r.Stderr))
	}

	// A backend that cut its output itself keeps its flag.
	cs = connect(t, &fakeBackend{exec: ExecOutput{Stdout: "short", StdoutTruncated: true}})
	decode(t, callTool(t, cs, "vm_exec", map[string]any{"name": "web", "argv": []string{"yes"}}), &r)
	if !r.StdoutTruncated || r.Stdout != "short" {
		t.Errorf("backend's flag lost: %+v", r.ExecOutput)
	}
}

func TestPanicIsToolError(t *testing.T) {
	b := &fakeBackend{panic: true}
	cs := connect(t, b)
	res := callTool(t, cs, "vm_list", nil)
	if !res.IsError || !strings.Contains(text(res), "code: internal") || !strings.Contains(text(res), "boom") {
		t.Errorf("panic result: %v %q", res.IsError, text(res))
	}
	b.mu.Lock()
	b.panic = false
	b.mu.Unlock()
	if res := callTool(t, cs, "vm_list", nil); res.IsError {
		t.Errorf("server broken after a panic: %s", text(res))
	}
}

// TestCancelReachesBackend: a client that gives up on a call cancels the
// backend's context (so a long exec stops).
func TestCancelReachesBackend(t *testing.T) {
	b := &fakeBackend{block: true, blocked: make(chan struct{}), cancelled: make(chan struct{})}
	cs := connect(t, b)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "vm_exec", Arguments: map[string]any{"name": "web", "argv": []string{"sleep", "1000"}}})
		done <- err
	}()
	<-b.blocked
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("call error = %v, want context.Canceled", err)
	}
	select {
	case <-b.cancelled:
	case <-time.After(30 * time.Second):
		t.Fatal("the backend's context was not cancelled")
	}
}

// TestRunStdio drives Run over real pipes, as `banger mcp` runs: an SDK
// client creates a VM, runs a command and deletes it; closing the client's
// end ends Run with nil.
func TestRunStdio(t *testing.T) {
	serverIn, clientOut, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	clientIn, serverOut, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer serverOut.Close()
	b := &fakeBackend{exec: ExecOutput{ExitCode: 0, Stdout: "hello\n"}}
	ran := make(chan error, 1)
	go func() { ran <- Run(context.Background(), b, "v9", serverIn, serverOut) }()

	ctx := context.Background()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "0"}, nil).
		Connect(ctx, &mcp.IOTransport{Reader: clientIn, Writer: clientOut}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v := cs.InitializeResult().ServerInfo.Version; v != "v9" {
		t.Errorf("version %q", v)
	}
	res := callTool(t, cs, "vm_create", map[string]any{"name": "web"})
	var vm vmResult
	decode(t, res, &vm)
	if res.IsError || vm.Name != "web" || vm.State != "running" {
		t.Fatalf("create: %s", text(res))
	}
	res = callTool(t, cs, "vm_exec", map[string]any{"name": "web", "argv": []string{"echo", "hello"}})
	var ex execResult
	decode(t, res, &ex)
	if res.IsError || ex.Stdout != "hello\n" || ex.ExitCode != 0 {
		t.Fatalf("exec: %s", text(res))
	}
	res = callTool(t, cs, "vm_delete", map[string]any{"name": "web"})
	if res.IsError {
		t.Fatalf("delete: %s", text(res))
	}
	var methods, ids []string
	for _, c := range b.Calls() {
		methods = append(methods, c.Method)
		ids = append(ids, c.OpID)
	}
	if !slices.Equal(methods, []string{"CreateVM", "Exec", "DeleteVM"}) {
		t.Errorf("backend calls %v", methods)
	}
	if ids[0] != vm.OpID || ids[1] != ex.OpID || ids[0] == ids[1] || ids[1] == ids[2] || ids[0] == ids[2] {
		t.Errorf("op ids %v; create said %s, exec said %s", ids, vm.OpID, ex.OpID)
	}

	if err := cs.Close(); err != nil {
		t.Logf("close: %v", err)
	}
	select {
	case err := <-ran:
		if err != nil {
			t.Errorf("Run after the client closed: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after the client closed")
	}
}

// TestRunCancelled: Run returns ctx's error when ctx ends, even while its
// input is silent.
func TestRunCancelled(t *testing.T) {
	for _, closer := range []bool{true, false} {
		pr, pw := io.Pipe()
		var in io.Reader = pr
		if !closer {
			in = struct{ io.Reader }{pr} // Run cannot close it
		}
		ctx, cancel := context.WithCancel(context.Background())
		ran := make(chan error, 1)
		go func() { ran <- Run(ctx, &fakeBackend{}, "v", in, io.Discard) }()
		cancel()
		select {
		case err := <-ran:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("closer %v: Run = %v, want context.Canceled", closer, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("closer %v: Run did not return after cancel", closer)
		}
		pw.Close()
	}
}
