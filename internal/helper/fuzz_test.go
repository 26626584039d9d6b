package helper

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"unicode"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
)

// FuzzGate drives the helper's gate (Helper.check: strict decoding, pure
// validation, the caller's grant) with arbitrary params for every method
// and three callers: the attacker, the victim and a uid without a grant.
// Whatever it accepts for a user must lie inside that user's grant: its
// own bridge, gateway, subnet and TAP prefix, names of banger's alphabet
// only. The seed corpus is testdata/fuzz/FuzzGate; run it longer with
// `make fuzz`.
func FuzzGate(f *testing.F) {
	for _, seed := range []struct {
		method int
		caller uint8
		params string
	}{
		{1, 0, `{"name":"banger2","cidr":"10.231.2.1/24"}`},
		{1, 0, `{"name":"banger1","cidr":"10.231.1.1/24"}`},
		{1, 0, `{"name":"banger2","cidr":"8.8.8.1/24"}`},
		{3, 0, `{"bridge":"banger2","subnet":"10.231.2.0/24","egress":"eth0"}`},
		{3, 0, `{"bridge":"banger2","subnet":"10.231.2.0/24","egress":"all"}`},
		{3, 0, `{"bridge":"banger2","subnet":"10.231.2.0/24","egress":"lo"}`},
		{5, 1, `{"name":"tap1-pool-0","bridge":"banger1"}`},
		{5, 0, `{"name":"tap1-pool-0","bridge":"banger2"}`},
		{7, 0, `{"name":"tap2-x\n"}`},
		{8, 0, `{"address":"10.231.1.1"}`},
		{8, 1, `{"address":"10.231.1.1"}`},
		{0, 2, `{}`},
		{5, 0, `{"name":"tap2-x","bridge":"banger2","uid":0}`},
	} {
		f.Add(seed.method, seed.caller, []byte(seed.params))
	}
	h, err := New(Config{Grants: helperapi.Grants{Users: []helperapi.Grant{victim, attacker}}})
	if err != nil {
		f.Fatal(err)
	}
	callers := []rpc.PeerCred{{UID: attackerUID, GID: attackerUID}, {UID: victimUID, GID: victimUID}, {UID: 65534, GID: 65534}}
	methods := []func() interface{ Validate() error }{
		func() interface{ Validate() error } { return &helperapi.VersionParams{} },
		func() interface{ Validate() error } { return &helperapi.BridgeEnsureParams{} },
		func() interface{ Validate() error } { return &helperapi.BridgeDeleteParams{} },
		func() interface{ Validate() error } { return &helperapi.NATEnsureParams{} },
		func() interface{ Validate() error } { return &helperapi.NATDeleteParams{} },
		func() interface{ Validate() error } { return &helperapi.TapCreateParams{} },
		func() interface{ Validate() error } { return &helperapi.TapDeleteParams{} },
		func() interface{ Validate() error } { return &helperapi.TapOpenParams{} },
		func() interface{ Validate() error } { return &helperapi.DNSListenParams{} },
	}
	f.Fuzz(func(t *testing.T, method int, caller uint8, raw []byte) {
		if method < 0 {
			method = -method
		}
		p := methods[method%len(methods)]()
		c := callers[int(caller)%len(callers)]
		if err := rpc.DecodeParams(raw, p); err != nil {
			if rpc.CodeOf(err) != rpc.CodeBadRequest {
				t.Fatalf("decoding %q: %v is not bad_request", raw, err)
			}
			return
		}
		ctx := rpc.WithPeer(context.Background(), c)
		// check takes the value, as the handlers get it.
		_, err := h.check(ctx, deref(p))
		if err != nil {
			if code := rpc.CodeOf(err); code != rpc.CodeBadRequest && code != rpc.CodeForbidden {
				t.Fatalf("%T %q by uid %d: code %s (%v)", p, raw, c.UID, code, err)
			}
			return
		}
		g, ok := h.grants.For(c.UID)
		if !ok {
			t.Fatalf("uid %d without a grant passed the gate with %T %q", c.UID, p, raw)
		}
		checkInside(t, g, p, raw)
	})
}

// deref turns *T into T for the params types.
func deref(p interface{ Validate() error }) interface{ Validate() error } {
	switch v := p.(type) {
	case *helperapi.VersionParams:
		return *v
	case *helperapi.BridgeEnsureParams:
		return *v
	case *helperapi.BridgeDeleteParams:
		return *v
	case *helperapi.NATEnsureParams:
		return *v
	case *helperapi.NATDeleteParams:
		return *v
	case *helperapi.TapCreateParams:
		return *v
	case *helperapi.TapDeleteParams:
		return *v
	case *helperapi.TapOpenParams:
		return *v
	case *helperapi.DNSListenParams:
		return *v
	}
	panic("unknown params type")
}

// checkInside fails t unless every name and address in accepted params is
// one of grant g's.
func checkInside(t *testing.T, g helperapi.Grant, p any, raw []byte) {
	t.Helper()
	var fields map[string]any
	b, _ := json.Marshal(p)
	json.Unmarshal(b, &fields)
	for k, v := range fields {
		s, _ := v.(string)
		for _, r := range s {
			if r > unicode.MaxASCII || unicode.IsControl(r) || r == ' ' || r == '/' && k != "cidr" && k != "subnet" {
				t.Fatalf("%T %q: field %s = %q holds %q", p, raw, k, s, r)
			}
		}
		ok := true
		switch {
		case k == "bridge", k == "name" && strings.HasPrefix(s, helperapi.BridgePrefix):
			ok = s == g.Bridge()
		case k == "name":
			ok = strings.HasPrefix(s, g.TapPrefix()) && len(s) <= helperapi.IfNameMax
		case k == "cidr":
			ok = s == g.Gateway()
		case k == "subnet":
			ok = s == g.Subnet
		case k == "address":
			ok = s == g.GatewayAddr() && netip.MustParseAddr(s).Is4()
		case k == "egress":
			// Root's only: a user naming an interface would choose what
			// the host forwards.
			ok = s == ""
		}
		if !ok {
			t.Fatalf("%T %q accepted for %s: field %s = %q lies outside the grant %+v", p, raw, g.User, k, s, g)
		}
	}
}
