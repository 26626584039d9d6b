package helperapi

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/rpc"
)

var alice = Grant{User: "alice", UID: 1000, Net: 1, Subnet: "172.30.78.0/24"}

func TestGrantNames(t *testing.T) {
	if alice.Bridge() != "banger1" || alice.TapPrefix() != "tap1-" || alice.Gateway() != "172.30.78.1/24" || alice.GatewayAddr() != "172.30.78.1" {
		t.Errorf("names: %s %s %s %s", alice.Bridge(), alice.TapPrefix(), alice.Gateway(), alice.GatewayAddr())
	}
	big := Grant{User: "b", UID: 2, Net: MaxNet, Subnet: "10.9.0.0/16"}
	if err := ValidateBridgeName("b", big.Bridge()); err != nil {
		t.Error(err)
	}
	if err := ValidateTapName("t", big.TapPrefix()+"pool-12"); err != nil {
		t.Error(err)
	}
}

func TestParseGrants(t *testing.T) {
	ok := `{"users": [{"user": "alice", "uid": 1000, "net": 1, "subnet": "172.30.78.0/24"},
	                  {"user": "bob", "uid": 1001, "net": 2, "subnet": "172.30.79.0/24"}]}`
	gs, err := ParseGrants([]byte(ok))
	if err != nil {
		t.Fatal(err)
	}
	if g, found := gs.For(1001); !found || g.Bridge() != "banger2" {
		t.Errorf("For(1001) = %+v, %v", g, found)
	}
	if _, found := gs.For(0); found {
		t.Error("root has a grant")
	}
	back, err := ParseGrants(gs.Marshal())
	if err != nil || len(back.Users) != 2 {
		t.Errorf("round trip: %+v %v", back, err)
	}
	for _, bad := range []string{
		`{"users": [{"user": "alice", "uid": 1000, "net": 1, "subnet": "172.30.78.0/24"}, {"user": "bob", "uid": 1000, "net": 2, "subnet": "172.30.79.0/24"}]}`,
		`{"users": [{"user": "alice", "uid": 1000, "net": 1, "subnet": "172.30.78.0/24"}, {"user": "bob", "uid": 1001, "net": 1, "subnet": "172.30.79.0/24"}]}`,
		`{"users": [{"user": "alice", "uid": 1000, "net": 1, "subnet": "172.30.0.0/16"}, {"user": "bob", "uid": 1001, "net": 2, "subnet": "172.30.79.0/24"}]}`,
		`{"users": [{"user": "alice", "uid": 0, "net": 1, "subnet": "172.30.78.0/24"}]}`,
		`{"users": [{"user": "alice", "uid": 1000, "net": 0, "subnet": "172.30.78.0/24"}]}`,
		`{"users": [{"user": "alice", "uid": 1000, "net": 10000, "subnet": "172.30.78.0/24"}]}`,
		`{"users": [{"user": "alice", "uid": 1000, "net": 1, "subnet": "8.8.8.0/24"}]}`,
		`{"users": [{"user": "al ice", "uid": 1000, "net": 1, "subnet": "172.30.78.0/24"}]}`,
		`{"users": [{"user": "alice", "uid": 1000, "net": 1, "subnet": "172.30.78.0/24", "bridge": "docker0"}]}`,
		`{"users": []} trailing`,
	} {
		if _, err := ParseGrants([]byte(bad)); !errors.Is(err, rpc.ErrBadRequest) {
			t.Errorf("%s: want bad request, got %v", bad, err)
		}
	}
}

func TestFreeNet(t *testing.T) {
	gs := Grants{Users: []Grant{alice, {User: "c", UID: 3, Net: 3, Subnet: "10.3.0.0/24"}}}
	if n := gs.FreeNet(); n != 2 {
		t.Errorf("FreeNet = %d", n)
	}
	gs.Put(Grant{User: "alice", UID: 1000, Net: 1, Subnet: "10.1.0.0/24"})
	if len(gs.Users) != 2 || gs.Users[0].Subnet != "10.1.0.0/24" {
		t.Errorf("Put replaced badly: %+v", gs.Users)
	}
}

// A user's calls may name only its own bridge, gateway, subnet and TAP
// prefix; everything else is forbidden, naming the grant and the fix.
func TestCheckGrant(t *testing.T) {
	allowed := []any{
		BridgeEnsureParams{Name: "banger1", CIDR: "172.30.78.1/24"},
		BridgeDeleteParams{Name: "banger1"},
		NATEnsureParams{Bridge: "banger1", Subnet: "172.30.78.0/24"},
		NATDeleteParams{Bridge: "banger1"},
		TapCreateParams{Name: "tap1-pool-0", Bridge: "banger1"},
		TapDeleteParams{Name: "tap1-3f9a1c"},
		TapOpenParams{Name: "tap1-pool-0"},
		DNSListenParams{Address: "172.30.78.1"},
		VersionParams{},
	}
	for _, p := range allowed {
		if err := CheckGrant(alice, p); err != nil {
			t.Errorf("%#v refused: %v", p, err)
		}
	}
	refused := []any{
		BridgeEnsureParams{Name: "banger2", CIDR: "172.30.78.1/24"},   // another's bridge
		BridgeEnsureParams{Name: "banger1", CIDR: "172.30.79.1/24"},   // another subnet
		BridgeEnsureParams{Name: "banger1", CIDR: "172.30.78.254/24"}, // not the gateway
		BridgeEnsureParams{Name: "banger1", CIDR: "172.30.78.1/25"},   // another length
		BridgeDeleteParams{Name: "banger0"},
		NATEnsureParams{Bridge: "banger2", Subnet: "172.30.78.0/24"},
		NATEnsureParams{Bridge: "banger1", Subnet: "10.0.0.0/16"},
		NATEnsureParams{Bridge: "banger1", Subnet: "172.30.78.0/24", Egress: "eth0"}, // egress is root's
		NATEnsureParams{Bridge: "banger1", Subnet: "172.30.78.0/24", Egress: "all"},
		NATDeleteParams{Bridge: "banger2"},
		TapCreateParams{Name: "tap-pool-0", Bridge: "banger1"},  // root's namespace
		TapCreateParams{Name: "tap2-pool-0", Bridge: "banger1"}, // another user's
		TapCreateParams{Name: "tap11-x", Bridge: "banger1"},     // tap1 is no prefix of tap11-
		TapCreateParams{Name: "tap1-x", Bridge: "banger2"},      // on another's bridge
		TapDeleteParams{Name: "tap2-pool-0"},
		TapOpenParams{Name: "tap-pool-0"},
		DNSListenParams{Address: "172.30.79.1"},
		DNSListenParams{Address: "172.30.78.2"},
	}
	for _, p := range refused {
		err := CheckGrant(alice, p)
		if !errors.Is(err, rpc.ErrForbidden) {
			t.Errorf("%#v: want forbidden, got %v", p, err)
			continue
		}
		if !strings.Contains(err.Error(), "alice") || rpc.HintOf(err) == "" {
			t.Errorf("%#v: error %q (hint %q) does not name the grant and the fix", p, err, rpc.HintOf(err))
		}
	}
}

// CheckSubnetFree, the one overlap check of the helper and of system
// install: another user's grant, or what the host uses off the bridge.
func TestCheckSubnetFree(t *testing.T) {
	gs := Grants{Users: []Grant{alice, {User: "bob", UID: 1001, Net: 2, Subnet: "10.2.0.0/24"}}}
	uses := []hostnet.Use{
		{Prefix: netip.MustParsePrefix("192.168.1.0/24"), Iface: "eth0", What: "address 192.168.1.5/24"},
		{Prefix: netip.MustParsePrefix("172.30.78.0/24"), Iface: "banger1", What: "address 172.30.78.1/24"},
	}
	for _, c := range []struct {
		uid    uint32
		bridge string
		subnet string
		want   string // "" for free
	}{
		{1000, "banger1", "172.30.78.0/24", ""},                              // alice's own, on her bridge
		{1000, "banger1", "10.2.0.0/25", "overlaps bob's grant 10.2.0.0/24"}, // bob's
		{1001, "banger2", "10.2.0.0/24", ""},
		{1001, "banger2", "172.30.78.0/24", "overlaps alice's grant"},
		{0, "banger0", "192.168.1.0/26", "overlaps what the host already uses: address 192.168.1.5/24 on eth0"},
		{0, "banger0", "10.77.0.0/24", ""},
	} {
		err := gs.CheckSubnetFree(c.uid, c.bridge, netip.MustParsePrefix(c.subnet), uses)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("uid %d %s %s: %v", c.uid, c.bridge, c.subnet, err)
		case c.want != "" && (!errors.Is(err, rpc.ErrConflict) || !strings.Contains(err.Error(), c.want)):
			t.Errorf("uid %d %s %s: %v, want conflict %q", c.uid, c.bridge, c.subnet, err, c.want)
		}
	}
}
