package helper

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/version"
)

func TestVersion(t *testing.T) {
	hs := startHelper(t)
	v, err := hs.client.Version(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if v.Version != version.String() || v.PID != os.Getpid() {
		t.Errorf("version = %+v", v)
	}
	if !slices.Equal(v.Methods, helperapi.Methods) {
		t.Errorf("served methods %v, helperapi.Methods %v", v.Methods, helperapi.Methods)
	}
}

func TestAuthorize(t *testing.T) {
	h, err := New(Config{AllowedUIDs: []uint32{1000}})
	if err != nil {
		t.Fatal(err)
	}
	for uid, ok := range map[uint32]bool{0: true, 1000: true, 1001: false, 65534: false} {
		err := h.Authorize(rpc.PeerCred{UID: uid, PID: 42})
		if (err == nil) != ok {
			t.Errorf("uid %d: %v", uid, err)
		}
		if err != nil && rpc.CodeOf(err) != rpc.CodeForbidden {
			t.Errorf("uid %d: code %s", uid, rpc.CodeOf(err))
		}
	}
}

func TestConfigRefused(t *testing.T) {
	for _, cfg := range []Config{
		{StateDirs: []string{"relative"}},
		{StateDirs: []string{"/"}},
		{StateDirs: []string{"/var/lib/../lib/banger"}},
		{AllowedUIDs: []uint32{1<<32 - 1}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}

// Every call, whatever its outcome, writes exactly one "helper rpc
// completed" or "helper rpc failed" line with method, op_id, duration_ms
// and, on failure, code.
func TestOneLogLinePerCall(t *testing.T) {
	hs := startHelper(t)
	type call struct {
		id, method string
		do         func(ctx context.Context) error
		code       rpc.Code // "" for success
	}
	calls := []call{
		{method: helperapi.MethodVersion, do: func(ctx context.Context) error { _, err := hs.client.Version(ctx); return err }},
		{method: helperapi.MethodBridgeEnsure, code: rpc.CodeBadRequest, do: func(ctx context.Context) error {
			return hs.raw(ctx, helperapi.MethodBridgeEnsure, map[string]string{"name": "eth0", "cidr": "10.77.0.1/24"})
		}},
		{method: helperapi.MethodLoopAttach, code: rpc.CodeBadRequest, do: func(ctx context.Context) error {
			return hs.raw(ctx, helperapi.MethodLoopAttach, map[string]any{"path": "/etc/passwd", "unknown": 1})
		}},
		{method: "shell.run", code: rpc.CodeUnknownMethod, do: func(ctx context.Context) error {
			return hs.raw(ctx, "shell.run", nil)
		}},
		{method: helperapi.MethodTapCreate, code: rpc.CodeForbidden, do: func(ctx context.Context) error {
			return hs.raw(ctx, helperapi.MethodTapCreate, helperapi.TapCreateParams{Name: "tap-x", Bridge: "banger0", UID: 4242, GID: 0})
		}},
	}
	for i := range calls {
		calls[i].id = fmt.Sprintf("op-%06x", 0xabc000+i)
		err := calls[i].do(op.With(context.Background(), calls[i].id))
		if calls[i].code == "" && err != nil {
			t.Fatalf("%s: %v", calls[i].method, err)
		}
		if calls[i].code != "" {
			wantCode(t, calls[i].method, err, calls[i].code)
			if er, ok := err.(*rpc.ErrorResponse); !ok || er.OpID != calls[i].id {
				t.Errorf("%s: error %#v does not carry op id %s", calls[i].method, err, calls[i].id)
			}
		}
	}
	lines := hs.log.lines(t)
	for _, c := range calls {
		var mine []map[string]any
		for _, l := range lines {
			if l["op_id"] == c.id && (l["msg"] == "helper rpc completed" || l["msg"] == "helper rpc failed") {
				mine = append(mine, l)
			}
		}
		if len(mine) != 1 {
			t.Errorf("%s (%s): %d rpc lines, want 1: %v", c.method, c.id, len(mine), mine)
			continue
		}
		l := mine[0]
		if l["method"] != c.method {
			t.Errorf("%s: method %v", c.id, l["method"])
		}
		if _, ok := l["duration_ms"].(float64); !ok {
			t.Errorf("%s: no duration_ms in %v", c.id, l)
		}
		if c.code == "" {
			if l["msg"] != "helper rpc completed" || l["code"] != nil {
				t.Errorf("%s: %v", c.id, l)
			}
		} else if l["msg"] != "helper rpc failed" || l["code"] != string(c.code) {
			t.Errorf("%s: want failed with %s, got %v", c.id, c.code, l)
		}
	}
}
