package cli

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/hostnet"
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
	g, err := grantFor(gs, "nobody", "", uses)
	if err != nil {
		t.Fatal(err)
	}
	if g.UID != 65534 || g.Net != 2 || g.Subnet != "172.30.80.0/24" {
		t.Errorf("new grant %+v: want net 2, the first free 172.30.N.0/24 (78 is the host's, 79 someone's)", g)
	}
	gs.Put(g)
	again, err := grantFor(gs, "nobody", "", uses)
	if err != nil || again != g {
		t.Errorf("existing grant not kept: %+v, %v", again, err)
	}
	moved, err := grantFor(gs, "nobody", "10.77.0.0/24", uses)
	if err != nil || moved.Subnet != "10.77.0.0/24" || moved.Net != 2 {
		t.Errorf("--subnet: %+v, %v", moved, err)
	}
	for _, bad := range []struct{ subnet, why string }{
		{"10.8.5.0/24", "wg0"},
		{"172.30.79.0/25", "someone"},
		{"8.8.8.0/24", "private"},
	} {
		_, err := grantFor(gs, "nobody", bad.subnet, uses)
		if err == nil || !strings.Contains(err.Error(), bad.why) {
			t.Errorf("--subnet %s: %v, want a refusal naming %s", bad.subnet, err, bad.why)
		}
	}
	if _, err := grantFor(gs, "root", "", uses); err == nil {
		t.Error("root got a grant")
	}
	var ue *usageError
	if _, err := grantFor(gs, "no-such-user-here", "", uses); !errors.As(err, &ue) {
		t.Errorf("unknown user: %v, want a usage error", err)
	}
}
