package cli

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/runner"
	"github.com/banger-dev/banger/internal/subid"
)

// grantFor: a new user gets the lowest free network number and the first
// default subnet that overlaps neither another grant nor the host; an
// existing grant is kept unless --subnet moves it; root and overlapping
// subnets are refused with what to do.
func TestGrantFor(t *testing.T) {
	uses := []hostnet.Use{
		{Prefix: netip.MustParsePrefix("172.30.78.0/24"), Iface: "eth0", What: "address 172.30.78.5/24"},
		{Prefix: netip.MustParsePrefix("10.8.0.0/16"), Iface: "wg0", What: "route 10.8.0.0/16"},
	}
	gs := helperapi.Grants{Users: []helperapi.Grant{{User: "someone", UID: 60500, Net: 1, Subnet: "172.30.79.0/24"}}}
	g, err := grantFor(gs, "nobody", "", uses, nil)
	if err != nil {
		t.Fatal(err)
	}
	if g.UID != 65534 || g.Net != 2 || g.Subnet != "172.30.80.0/24" {
		t.Errorf("new grant %+v: want net 2, the first free 172.30.N.0/24 (78 is the host's, 79 someone's)", g)
	}
	gs.Put(g)
	again, err := grantFor(gs, "nobody", "", uses, nil)
	if err != nil || again != g {
		t.Errorf("existing grant not kept: %+v, %v", again, err)
	}
	moved, err := grantFor(gs, "nobody", "10.77.0.0/24", uses, nil)
	if err != nil || moved.Subnet != "10.77.0.0/24" || moved.Net != 2 {
		t.Errorf("--subnet: %+v, %v", moved, err)
	}
	for _, bad := range []struct{ subnet, why string }{
		{"10.8.5.0/24", "wg0"},
		{"172.30.79.0/25", "someone"},
		{"8.8.8.0/24", "private"},
	} {
		_, err := grantFor(gs, "nobody", bad.subnet, uses, nil)
		if err == nil || !strings.Contains(err.Error(), bad.why) {
			t.Errorf("--subnet %s: %v, want a refusal naming %s", bad.subnet, err, bad.why)
		}
	}
	if _, err := grantFor(gs, "root", "", uses, nil); err == nil {
		t.Error("root got a grant")
	}
	var ue *usageError
	if _, err := grantFor(gs, "no-such-user-here", "", uses, nil); !errors.As(err, &ue) {
		t.Errorf("unknown user: %v, want a usage error", err)
	}
}

// A user whose uid lies in someone's subordinate uid range gets no grant:
// that range's owner could act as the user to the helper. The refusal names
// the range's owner and the way out.
func TestGrantForRefusesUIDInSubordinateRange(t *testing.T) {
	subuids := subid.Parse([]byte("alice:100000:65536\nmallory:60000:10000\n"))
	_, err := grantFor(helperapi.Grants{}, "nobody", "", nil, subuids) // uid 65534
	if !errors.Is(err, rpc.ErrConflict) || !strings.Contains(err.Error(), "mallory's subordinate uids 60000-69999") ||
		!strings.Contains(rpc.HintOf(err), "usermod --del-subuids 60000-69999 mallory") {
		t.Fatalf("uid 65534 inside mallory's range: %v (hint %q)", err, rpc.HintOf(err))
	}
	if _, err := grantFor(helperapi.Grants{}, "nobody", "", nil, subuids[:1]); err != nil {
		t.Errorf("uid 65534 outside every range: %v", err)
	}
}

// A new subordinate range holds no account's id: usermod is asked for one
// past the uid an account has right after the highest range.
func TestEnsureSubIDsSkipsAccounts(t *testing.T) {
	dir := t.TempDir()
	w := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	files := idFiles{
		subuid: w("subuid", "alice:100000:65536\n"),
		subgid: w("subgid", ""),
		passwd: w("passwd", "root:x:0:0::/root:/bin/sh\nldap:x:165600:100::/:/bin/sh\n"),
		group:  w("group", "root:x:0:\nbig:x:100500:\n"),
	}
	f := &runner.Fake{}
	f.Expect("usermod", "--add-subuids", "165601-231136", "--", "nobody")
	f.Expect("usermod", "--add-subgids", "165601-231136", "--", "nobody") // past gid 100500 then uid 165600
	if err := ensureSubIDs(context.Background(), f, "nobody", files); err != nil {
		t.Fatal(err)
	}
	if u := f.Unmet(); len(u) > 0 {
		t.Errorf("not run: %q (ran %q)", u, f.Calls)
	}
}
