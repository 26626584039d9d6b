package helper

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/subid"
	"github.com/banger-dev/banger/internal/version"
)

func TestVersion(t *testing.T) {
	hs := startHelper(t)
	v, err := hs.client.Version(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if v.Version != version.String() || v.PID != os.Getpid() || v.UID != uint32(os.Getuid()) {
		t.Errorf("version = %+v", v)
	}
	if !slices.Equal(v.Methods, helperapi.Methods) {
		t.Errorf("served methods %v, helperapi.Methods %v", v.Methods, helperapi.Methods)
	}
	if os.Getuid() == 0 && v.Grant != nil {
		t.Errorf("root got a grant: %+v", v.Grant)
	}
	if os.Getuid() != 0 && (v.Grant == nil || *v.Grant != selfGrant()) {
		t.Errorf("grant %+v, want %+v", v.Grant, selfGrant())
	}
}

func TestAuthorize(t *testing.T) {
	h, err := New(Config{Grants: helperapi.Grants{Users: []helperapi.Grant{victim}}})
	if err != nil {
		t.Fatal(err)
	}
	for uid, ok := range map[uint32]bool{0: true, victimUID: true, attackerUID: false, 65534: false} {
		err := h.Authorize(rpc.PeerCred{UID: uid, PID: 42})
		if (err == nil) != ok {
			t.Errorf("uid %d: %v", uid, err)
		}
		if err != nil && rpc.CodeOf(err) != rpc.CodeForbidden {
			t.Errorf("uid %d: code %s", uid, rpc.CodeOf(err))
		}
	}
}

// A grant whose uid lies in someone's subordinate uid range is warned of
// at start (that range's owner can be the grant's user to the helper),
// naming both and the way out.
func TestGrantInSubordinateRangeWarned(t *testing.T) {
	log := &syncBuffer{}
	_, err := New(Config{
		Grants:  helperapi.Grants{Users: []helperapi.Grant{victim, attacker}},
		Logger:  logging.New(log, slog.LevelInfo, "helper"),
		SubUIDs: subid.Parse([]byte("mallory:60000:1000\nalice:100000:65536\n")),
	})
	if err != nil {
		t.Fatal(err)
	}
	var warned []string
	for _, l := range log.lines(t) {
		if l["msg"] == "granted uid inside a subordinate uid range" {
			warned = append(warned, fmt.Sprint(l["user"], " ", l["range_owner"]))
			if !strings.Contains(fmt.Sprint(l["hint"]), "usermod --del-subuids 60000-60999 mallory") {
				t.Errorf("no way out in %v", l)
			}
		}
	}
	if !slices.Equal(warned, []string{"victim mallory", "attacker mallory"}) {
		t.Errorf("warnings %v, want one for each grant inside mallory's range", warned)
	}
}

func TestConfigRefused(t *testing.T) {
	for _, cfg := range []Config{
		{Grants: helperapi.Grants{Users: []helperapi.Grant{victim, victim}}},
		{Grants: helperapi.Grants{Users: []helperapi.Grant{{User: "x", UID: 5, Net: 1, Subnet: "8.8.8.0/24"}}}},
		{StateFile: "relative/state.json"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}

// The owners' records survive a restart of the helper: a new one reading
// the same state file knows them; a corrupt file is refused, naming it.
func TestOwnersPersist(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d", "state.json")
	o, err := loadOwners(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := o.set(kindTap, "tap1-pool-0", victimUID); err != nil {
		t.Fatal(err)
	}
	if err := o.set(kindBridge, "banger1", victimUID); err != nil {
		t.Fatal(err)
	}
	if err := o.drop(kindBridge, "banger1"); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Dir(path))
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("state directory mode %v, %v", st.Mode(), err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, %v", st.Mode(), err)
	}
	again, err := loadOwners(path)
	if err != nil {
		t.Fatal(err)
	}
	if uid, ok := again.owner(kindTap, "tap1-pool-0"); !ok || uid != victimUID {
		t.Errorf("tap owner after reload: %d %v", uid, ok)
	}
	if _, ok := again.owner(kindBridge, "banger1"); ok {
		t.Errorf("a dropped record came back")
	}
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadOwners(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("corrupt file: %v", err)
	}
}

// claim: a recorded owner is the only non-root user who may act on an
// object; an unrecorded one goes to the caller (a TAP only when the kernel
// says the caller owns it), and root claims nothing.
func TestClaim(t *testing.T) {
	h, err := New(Config{Grants: helperapi.Grants{Users: []helperapi.Grant{victim, attacker}}})
	if err != nil {
		t.Fatal(err)
	}
	v, a, root := rpc.PeerCred{UID: victimUID}, rpc.PeerCred{UID: attackerUID}, rpc.PeerCred{}
	if err := h.claim(v, kindBridge, "banger1", nil); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "another's bridge", h.claim(a, kindBridge, "banger1", nil), rpc.CodeForbidden)
	if err := h.claim(root, kindBridge, "banger1", nil); err != nil {
		t.Errorf("root refused: %v", err)
	}
	if uid, _ := h.owners.owner(kindBridge, "banger1"); uid != victimUID {
		t.Errorf("root's call changed the owner to %d", uid)
	}
	kernel := uint32(victimUID)
	wantCode(t, "a tap the kernel gives to another", h.claim(a, kindTap, "tap2-x", &kernel), rpc.CodeForbidden)
	if _, ok := h.owners.owner(kindTap, "tap2-x"); ok {
		t.Errorf("a refused claim was recorded")
	}
	if err := h.claim(v, kindTap, "tap1-x", &kernel); err != nil {
		t.Errorf("own unrecorded tap: %v", err)
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
		{method: "loop.attach", code: rpc.CodeBadRequest, do: func(ctx context.Context) error {
			return hs.raw(ctx, "loop.attach", map[string]any{"path": "/etc/passwd"})
		}},
		{method: "shell.run", code: rpc.CodeUnknownMethod, do: func(ctx context.Context) error {
			return hs.raw(ctx, "shell.run", nil)
		}},
		{method: helperapi.MethodTapCreate, code: rpc.CodeBadRequest, do: func(ctx context.Context) error {
			return hs.raw(ctx, helperapi.MethodTapCreate, map[string]any{"name": "tap7-x", "bridge": "banger7", "uid": 0})
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
