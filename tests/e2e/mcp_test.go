package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/tests/harness"
)

// TestMCP: an MCP client (the SDK's, over `banger mcp` on stdio) creates a
// VM, runs a command in it, copies nothing, and deletes it; each call's op
// id is in its result and in the daemon's log lines of that call.
func TestMCP(t *testing.T) {
	requireE2E(t)
	image := ensureImage(t)
	if !testutil.InNetNS(t) {
		return
	}
	e := newVMEnv(t, image)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	client := mcp.NewClient(&mcp.Implementation{Name: "banger-e2e", Version: "test"}, nil)
	session, err := client.Connect(ctx, &mcp.CommandTransport{Command: e.Command("mcp")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	tools, err := session.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tl := range tools.Tools {
		names = append(names, tl.Name)
	}
	if got := strings.Join(names, ","); !strings.Contains(got, "vm_create") || !strings.Contains(got, "vm_exec") || !strings.Contains(got, "vm_delete") {
		t.Fatalf("tools: %s", got)
	}
	call := func(name string, args map[string]any) map[string]any {
		t.Helper()
		res, err := session.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var text strings.Builder
		for _, c := range res.Content {
			if tc, ok := c.(*mcp.TextContent); ok {
				text.WriteString(tc.Text)
			}
		}
		if res.IsError {
			t.Fatalf("%s failed: %s", name, text.String())
		}
		var out map[string]any
		raw, _ := json.Marshal(res.StructuredContent)
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatalf("%s: structured content %s: %v", name, raw, err)
		}
		id, _ := out["op_id"].(string)
		if !strings.HasPrefix(id, "op-") {
			t.Fatalf("%s: no op id in %v", name, out)
		}
		var seen bool
		for _, rec := range harness.LogLines(t, e.StateDir+"/bangerd.log") {
			if rec["op_id"] == id {
				seen = true
			}
		}
		if !seen {
			t.Errorf("%s: the daemon's log has no line of %s", name, id)
		}
		return out
	}
	call("vm_create", map[string]any{"name": "mcp1"})
	out := call("vm_exec", map[string]any{"name": "mcp1", "argv": []string{"sh", "-c", "cat /etc/hostname; echo oops >&2; exit 3"}})
	if out["stdout"] != "mcp1\n" || out["stderr"] != "oops\n" || out["exit_code"] != float64(3) {
		t.Fatalf("vm_exec: %v", out)
	}
	call("vm_delete", map[string]any{"name": "mcp1"})
	if r := e.Banger("vm", "show", "mcp1"); r.Code != 3 {
		t.Fatalf("the VM is still there: %s", r)
	}
}
