package daemon

import (
	"context"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
)

// A user's daemon takes the network root granted; a config that names
// another bridge or subnet is a conflict that says what to do.
func TestSetGrant(t *testing.T) {
	d, _ := newTestDaemon(t, nil)
	g := &helperapi.Grant{User: "alice", UID: 1000, Net: 4, Subnet: "10.231.4.0/24"}
	if err := d.setGrant(context.Background(), g); err != nil {
		t.Fatal(err)
	}
	d.netMu.Lock()
	got := *d.grant
	d.netMu.Unlock()
	if got != *g {
		t.Errorf("grant %+v", got)
	}
	for _, tc := range []struct{ bridge, subnet, want string }{
		{"bangerx", "", "network.bridge"},
		{"", "10.231.5.0/24", "network.subnet"},
	} {
		d, _ := newTestDaemon(t, nil)
		if tc.bridge != "" {
			d.cfg.Network.Bridge = tc.bridge
		}
		if tc.subnet != "" {
			d.cfg.Network.Subnet = tc.subnet
		}
		err := d.setGrant(context.Background(), g)
		if rpc.CodeOf(err) != rpc.CodeConflict || !strings.Contains(err.Error(), tc.want) || rpc.HintOf(err) == "" {
			t.Errorf("config %+v: %v (hint %q)", tc, err, rpc.HintOf(err))
		}
	}
	// The config may repeat the grant.
	d2, _ := newTestDaemon(t, nil)
	d2.cfg.Network.Bridge, d2.cfg.Network.Subnet = "banger4", "10.231.4.0/24"
	if err := d2.setGrant(context.Background(), g); err != nil {
		t.Errorf("a config that repeats the grant: %v", err)
	}
}

// TAP names stay in the daemon's namespace and fit IFNAMSIZ.
func TestTapNames(t *testing.T) {
	for _, n := range []netID{{TapPrefix: helperapi.RootTapPrefix}, {TapPrefix: "tap7-"}, {TapPrefix: "tap9999-"}} {
		vm := n.vmTap("3f9a1c2b4d5e6f708192a3b4")
		if !strings.HasPrefix(vm, n.TapPrefix) || helperapi.ValidateTapName("t", vm) != nil {
			t.Errorf("vm tap %q for %q", vm, n.TapPrefix)
		}
		pool := n.poolPrefix() + "12"
		if !n.isPoolTap(pool) || n.isPoolTap(vm) || helperapi.ValidateTapName("t", pool) != nil {
			t.Errorf("pool tap %q for %q", pool, n.TapPrefix)
		}
		g := helperapi.Grant{User: "u", UID: 5, Net: 7, Subnet: "10.1.0.0/24"}
		if n.TapPrefix == g.TapPrefix() && helperapi.CheckGrant(g, helperapi.TapCreateParams{Name: pool, Bridge: g.Bridge()}) != nil {
			t.Errorf("the helper would refuse the daemon's own pool name %q", pool)
		}
	}
	if got := (netID{TapPrefix: "tap-"}).vmTap("abcdefghij-k"); got != "tap-abcdefghij" {
		t.Errorf("trailing '-' kept: %q", got)
	}
}
