package helperapi

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/rpc"
)

// hostile are strings no name may ever be: path tricks, whitespace, control
// characters, shell and table metacharacters.
var hostile = []string{
	"", "/", "..", "../banger0", "banger0/..", "banger/0", "banger 0", " banger0", "banger0 ",
	"banger0\n", "banger0\nsnapshot", "banger0\x00", "banger0\t", "banger0\r", "banger0\x1b",
	"banger0;rm", "banger0$(x)", "banger0`x`", "banger0'", "banger0\"", "Banger0", "BANGER0",
	"banger0\u00e9", "banger0\u200b", "-banger0", "banger0-",
}

func TestNameValidators(t *testing.T) {
	type validator func(arg, v string) error
	cases := []struct {
		name  string
		fn    validator
		ok    []string
		notOK []string
	}{
		{
			name:  "bridge",
			fn:    ValidateBridgeName,
			ok:    []string{"banger0", "banger1", "banger-dev", "banger123456789"},
			notOK: []string{"banger", "banger1234567890", "br0", "docker0", "eth0", "tap-pool-0", "xbanger0", "banger_0", "banger.0"},
		},
		{
			name:  "tap",
			fn:    ValidateTapName,
			ok:    []string{"tap-pool-0", "tap1-pool-0", "tap-3f9a1c2b", "tap-a", "tap9999-pool-1", "tap12-0123456"},
			notOK: []string{"tap-", "tap", "tap0", "tap-0123456789ab", "vnet0", "banger0", "tap-pool-0/x", "tap_pool", "TAP-1", "tap-pool-1-"},
		},
		{
			name:  "ifname",
			fn:    ValidateIfName,
			ok:    []string{"eth0", "enp0s31f6", "wlp2s0", "br-1a2b", "wg_0", "eth0.100", "a"},
			notOK: []string{"", ".", "..", "eth0/x", "eth 0", "eth0\n", "a234567890123456", "eth0:1", "eth0@if3"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, v := range c.ok {
				if err := c.fn("name", v); err != nil {
					t.Errorf("%q refused: %v", v, err)
				}
			}
			bad := slices.Concat(c.notOK, hostile)
			if c.name == "ifname" {
				// Upper case and '-' at the ends are fine for a host's own
				// interface; everything else hostile is not.
				bad = slices.DeleteFunc(bad, func(s string) bool {
					return s == "Banger0" || s == "BANGER0" || s == "-banger0" || s == "banger0-"
				})
			}
			for _, v := range bad {
				err := c.fn("name", v)
				if err == nil {
					t.Errorf("%q accepted", v)
					continue
				}
				if !errors.Is(err, rpc.ErrBadRequest) || rpc.CodeOf(err) != rpc.CodeBadRequest {
					t.Errorf("%q: error %v is not bad_request", v, err)
				}
				if !strings.Contains(err.Error(), "argument name ") {
					t.Errorf("%q: error %q does not name the argument", v, err)
				}
				if strings.ContainsAny(err.Error(), "\n\r\x00") {
					t.Errorf("%q: error %q carries a raw control character", v, err)
				}
			}
		})
	}
}

func TestValidateCIDRs(t *testing.T) {
	for _, v := range []string{"10.77.0.1/24", "172.16.5.254/24", "192.168.100.1/30", "10.0.0.1/16", "100.64.3.1/24"} {
		if err := ValidateGatewayCIDR("cidr", v); err != nil {
			t.Errorf("gateway %q refused: %v", v, err)
		}
	}
	for _, v := range []string{"", "10.77.0.1", "10.77.0.0/24", "10.77.0.255/24", "10.77.0.1/31", "10.0.0.1/8", "10.77.0.1/15", "127.0.0.1/8",
		"224.0.0.1/24", "0.0.0.1/24", "169.254.0.1/16", "fd00::1/64", "10.77.0.01/24", " 10.77.0.1/24", "10.77.0.1/24\n", "10.77.0.1/024",
		// public space: re-routing it would hijack the internet for the host
		"8.8.8.1/24", "1.1.1.1/30", "172.32.0.1/24", "192.169.0.1/24", "100.128.0.1/24", "11.0.0.1/24"} {
		if err := ValidateGatewayCIDR("cidr", v); !errors.Is(err, rpc.ErrBadRequest) {
			t.Errorf("gateway %q: want bad request, got %v", v, err)
		}
	}
	for _, v := range []string{"10.77.0.0/24", "192.168.0.0/16", "172.31.255.252/30"} {
		if err := ValidateSubnet("subnet", v); err != nil {
			t.Errorf("subnet %q refused: %v", v, err)
		}
	}
	for _, v := range []string{"", "10.77.0.1/24", "10.77.0.0", "0.0.0.0/0", "10.0.0.0/8", "172.16.0.0/12", "fd00::/64", "127.0.0.0/8",
		"10.77.0.0/24 ", "8.8.8.0/24", "192.0.2.0/24"} {
		if err := ValidateSubnet("subnet", v); !errors.Is(err, rpc.ErrBadRequest) {
			t.Errorf("subnet %q: want bad request, got %v", v, err)
		}
	}
	if g := GatewayOf(netip.MustParsePrefix("10.77.0.0/24")); g != "10.77.0.1/24" {
		t.Errorf("GatewayOf = %q", g)
	}
}

func TestParamsValidate(t *testing.T) {
	good := []interface{ Validate() error }{
		VersionParams{},
		BridgeEnsureParams{Name: "banger0", CIDR: "10.77.0.1/24"},
		BridgeDeleteParams{Name: "banger0"},
		TapCreateParams{Name: "tap-pool-0", Bridge: "banger0"},
		TapDeleteParams{Name: "tap1-pool-0"},
		TapOpenParams{Name: "tap-pool-0"},
		NATEnsureParams{Subnet: "10.77.0.0/24", Bridge: "banger0"},
		NATEnsureParams{Subnet: "10.77.0.0/24", Bridge: "banger0", Egress: "eth0"},
		NATDeleteParams{Bridge: "banger0"},
		DNSListenParams{Address: "10.77.0.1"},
	}
	for _, p := range good {
		if err := p.Validate(); err != nil {
			t.Errorf("%#v refused: %v", p, err)
		}
	}
	bad := []struct {
		p   interface{ Validate() error }
		arg string
	}{
		{BridgeEnsureParams{Name: "br0", CIDR: "10.77.0.1/24"}, "name"},
		{BridgeEnsureParams{Name: "banger0", CIDR: "10.77.0.0/24"}, "cidr"},
		{BridgeEnsureParams{Name: "banger0", CIDR: "8.8.8.1/24"}, "cidr"},
		{TapCreateParams{Name: "tap-x", Bridge: "docker0"}, "bridge"},
		{TapCreateParams{Name: "eth0", Bridge: "banger0"}, "name"},
		{NATEnsureParams{Subnet: "10.77.0.0/24", Bridge: "banger0", Egress: "banger0"}, "egress"},
		{NATEnsureParams{Subnet: "10.77.0.0/24", Bridge: "banger0", Egress: "banger1"}, "egress"},
		{NATEnsureParams{Subnet: "10.77.0.0/24", Bridge: "banger0", Egress: "tap1-x"}, "egress"},
		{NATEnsureParams{Subnet: "10.77.0.0/24", Bridge: "banger0", Egress: "eth0\n"}, "egress"},
		{NATEnsureParams{Subnet: "10.77.0.0/24", Bridge: "banger0", Egress: "all"}, "egress"},
		{NATEnsureParams{Subnet: "10.77.0.0/24", Bridge: "banger0", Egress: "default"}, "egress"},
		{NATEnsureParams{Subnet: "10.77.0.0/24", Bridge: "banger0", Egress: "lo"}, "egress"},
		{NATEnsureParams{Subnet: "8.8.8.0/24", Bridge: "banger0"}, "subnet"},
		{DNSListenParams{Address: "8.8.8.8"}, "address"},
		{DNSListenParams{Address: "127.0.0.1"}, "address"},
		{DNSListenParams{Address: "10.77.0.01"}, "address"},
	}
	for _, b := range bad {
		err := b.p.Validate()
		if !errors.Is(err, rpc.ErrBadRequest) {
			t.Errorf("%#v: want bad request, got %v", b.p, err)
			continue
		}
		if !strings.HasPrefix(err.Error(), "argument "+b.arg+" ") {
			t.Errorf("%#v: error %q does not name %s", b.p, err, b.arg)
		}
	}
}

// The typed client validates before dialing: a bad argument never leaves
// the process (the socket here does not even exist).
func TestClientValidatesLocally(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "absent.sock"))
	ctx := context.Background()
	if _, err := c.CreateTap(ctx, TapCreateParams{Name: "eth0", Bridge: "banger0"}); rpc.CodeOf(err) != rpc.CodeBadRequest {
		t.Errorf("CreateTap: %v", err)
	}
	if _, _, err := c.OpenTap(ctx, "tap-x\n"); rpc.CodeOf(err) != rpc.CodeBadRequest {
		t.Errorf("OpenTap: %v", err)
	}
	if _, err := c.DeleteBridge(ctx, "banger0"); !rpc.IsUnreachable(err) {
		t.Errorf("a valid call should have dialed and found nothing: %v", err)
	}
}

func TestMethodsSorted(t *testing.T) {
	if !slices.IsSorted(Methods) {
		t.Errorf("Methods not sorted: %v", Methods)
	}
}
