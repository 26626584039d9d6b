package helperapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/hostnet"
	"github.com/banger-dev/banger/internal/rpc"
)

// Grants are root's word on who may use the helper and for what: each
// allowed user has one network, numbered N, which is the bridge banger<N>,
// the TAP names tap<N>-*, and one private subnet. `banger system install
// --user NAME [--subnet CIDR]` writes them to GrantsFile (root's, 0644);
// the helper reads them at start and refuses any other bridge, subnet or
// TAP name to that user. Root needs no grant and may act on everything.

// DefaultGrantsFile is where `banger system install` keeps the grants.
const DefaultGrantsFile = "/etc/banger/helper.json"

// MaxNet bounds a grant's network number (banger9999 fits IFNAMSIZ, and
// tap9999- leaves 7 characters for a TAP's own name).
const MaxNet = 9999

// Grant is one user's network.
type Grant struct {
	// User is the user's name, for messages.
	User string `json:"user"`
	// UID is the user.
	UID uint32 `json:"uid"`
	// Net numbers the network: bridge banger<Net>, TAPs tap<Net>-*.
	Net int `json:"net"`
	// Subnet is the network's private IPv4 subnet, network form.
	Subnet string `json:"subnet"`
}

var userNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_.-]{0,31}\$?$`)

// Validate checks one grant on its own.
func (g Grant) Validate() error {
	if !userNameRE.MatchString(g.User) {
		return rpc.BadArg("user", g.User, "not a user name")
	}
	if g.UID == 0 || g.UID == 1<<32-1 {
		return rpc.BadArg("uid", strconv.FormatUint(uint64(g.UID), 10), "root needs no grant, and -1 is no uid")
	}
	if g.Net < 1 || g.Net > MaxNet {
		return rpc.BadArg("net", strconv.Itoa(g.Net), fmt.Sprintf("want 1..%d", MaxNet))
	}
	return ValidateSubnet("subnet", g.Subnet)
}

// Bridge is the grant's bridge, banger<Net>.
func (g Grant) Bridge() string { return BridgePrefix + strconv.Itoa(g.Net) }

// TapPrefix starts the grant's TAP names, tap<Net>-.
func (g Grant) TapPrefix() string { return TapPrefix + strconv.Itoa(g.Net) + "-" }

// Prefix is the grant's subnet.
func (g Grant) Prefix() netip.Prefix { return netip.MustParsePrefix(g.Subnet) }

// Gateway is the bridge's address with the subnet's length (x.y.z.1/24).
func (g Grant) Gateway() string { return GatewayOf(g.Prefix()) }

// GatewayAddr is the bridge's address.
func (g Grant) GatewayAddr() string { return g.Prefix().Addr().Next().String() }

// Grants is the whole grants file.
type Grants struct {
	Users []Grant `json:"users"`
}

// ParseGrants decodes and checks a grants file: every grant valid, and no
// two with the same uid, user, network number or overlapping subnets.
func ParseGrants(data []byte) (Grants, error) {
	var gs Grants
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&gs); err != nil {
		return gs, fmt.Errorf("grants: %v: %w", err, rpc.ErrBadRequest)
	}
	if dec.More() {
		return gs, fmt.Errorf("grants: trailing data after the object: %w", rpc.ErrBadRequest)
	}
	return gs, gs.Validate()
}

// Validate checks the grants together.
func (gs Grants) Validate() error {
	for i, g := range gs.Users {
		if err := g.Validate(); err != nil {
			return fmt.Errorf("grant of %q: %w", g.User, err)
		}
		for _, o := range gs.Users[:i] {
			switch {
			case o.UID == g.UID || o.User == g.User:
				return fmt.Errorf("grants: user %s (uid %d) appears twice: %w", g.User, g.UID, rpc.ErrBadRequest)
			case o.Net == g.Net:
				return fmt.Errorf("grants: network %d given to both %s and %s: %w", g.Net, o.User, g.User, rpc.ErrBadRequest)
			case o.Prefix().Overlaps(g.Prefix()):
				return fmt.Errorf("grants: subnets %s (%s) and %s (%s) overlap: %w", o.Subnet, o.User, g.Subnet, g.User, rpc.ErrBadRequest)
			}
		}
	}
	return nil
}

// Marshal renders the grants file.
func (gs Grants) Marshal() []byte {
	b, _ := json.MarshalIndent(gs, "", "  ")
	return append(b, '\n')
}

// For returns uid's grant.
func (gs Grants) For(uid uint32) (Grant, bool) {
	i := slices.IndexFunc(gs.Users, func(g Grant) bool { return g.UID == uid })
	if i < 0 {
		return Grant{}, false
	}
	return gs.Users[i], true
}

// Put adds or replaces the grant of g.UID (keeping its place).
func (gs *Grants) Put(g Grant) {
	if i := slices.IndexFunc(gs.Users, func(o Grant) bool { return o.UID == g.UID }); i >= 0 {
		gs.Users[i] = g
		return
	}
	gs.Users = append(gs.Users, g)
}

// CheckSubnetFree refuses subnet for the bridge of uid (root: 0) when it
// overlaps another user's grant, or what the host uses (uses, from
// hostnet.List) other than on bridge itself: a subnet over the uplink's
// LAN, its gateway, a VPN or another user's network would re-route that
// traffic for the whole host. The error is conflict; the caller adds the
// way out it knows. The helper runs it at every bridge.ensure, `system
// install` when it grants a subnet.
func (gs Grants) CheckSubnetFree(uid uint32, bridge string, subnet netip.Prefix, uses []hostnet.Use) error {
	for _, g := range gs.Users {
		if g.UID != uid && g.Prefix().Overlaps(subnet) {
			return rpc.Errorf(rpc.ErrConflict, "subnet %s overlaps %s's grant %s", subnet, g.User, g.Subnet)
		}
	}
	if clash := hostnet.Clashes(uses, subnet, bridge); len(clash) > 0 {
		var s []string
		for _, c := range clash {
			s = append(s, c.String())
		}
		return rpc.Errorf(rpc.ErrConflict, "subnet %s overlaps what the host already uses: %s", subnet, strings.Join(s, "; "))
	}
	return nil
}

// FreeNet returns the lowest network number no grant has.
func (gs Grants) FreeNet() int {
	for n := 1; ; n++ {
		if !slices.ContainsFunc(gs.Users, func(g Grant) bool { return g.Net == n }) {
			return n
		}
	}
}

// granted is implemented by every parameter type that names something a
// grant bounds.
type granted interface {
	CheckGrant(g Grant) error
}

// CheckGrant refuses params that reach outside grant g (forbidden). Root's
// calls are not checked against grants; params without names pass.
func CheckGrant(g Grant, params any) error {
	if p, ok := params.(granted); ok {
		return p.CheckGrant(g)
	}
	return nil
}

func notGranted(g Grant, what, value, want string) error {
	return rpc.WithHint(fmt.Errorf("%s %q is not %s's (uid %d is granted %s): %w", what, value, g.User, g.UID, want, rpc.ErrForbidden),
		"the grants are root's: sudo banger system install --user "+g.User+" [--subnet CIDR]")
}

func (g Grant) checkBridge(arg, name string) error {
	if name != g.Bridge() {
		return notGranted(g, arg, name, "bridge "+g.Bridge())
	}
	return nil
}

func (g Grant) checkTap(name string) error {
	if !strings.HasPrefix(name, g.TapPrefix()) {
		return notGranted(g, "tap", name, "TAP names "+g.TapPrefix()+"*")
	}
	return nil
}

// CheckGrant: the grant's bridge with the grant's gateway.
func (p BridgeEnsureParams) CheckGrant(g Grant) error {
	if err := g.checkBridge("bridge", p.Name); err != nil {
		return err
	}
	if p.CIDR != g.Gateway() {
		return notGranted(g, "address", p.CIDR, "gateway "+g.Gateway())
	}
	return nil
}

// CheckGrant: the grant's bridge.
func (p BridgeDeleteParams) CheckGrant(g Grant) error { return g.checkBridge("bridge", p.Name) }

// CheckGrant: the grant's bridge and subnet, and no egress (root's only:
// forwarding is switched on for the egress interface, so a user naming one
// would choose what the host forwards; a user's NAT leaves by the host's
// default routes, and bangerd never sends egress).
func (p NATEnsureParams) CheckGrant(g Grant) error {
	if err := g.checkBridge("bridge", p.Bridge); err != nil {
		return err
	}
	if p.Subnet != g.Subnet {
		return notGranted(g, "subnet", p.Subnet, "subnet "+g.Subnet)
	}
	if p.Egress != "" {
		return rpc.WithHint(fmt.Errorf("argument egress %q: only root names the egress interface; %s's NAT leaves by the host's default routes: %w", truncate(p.Egress), g.User, rpc.ErrForbidden),
			"leave egress out (bangerd never sends it)")
	}
	return nil
}

// CheckGrant: the grant's bridge.
func (p NATDeleteParams) CheckGrant(g Grant) error { return g.checkBridge("bridge", p.Bridge) }

// CheckGrant: a TAP name of the grant's, on the grant's bridge.
func (p TapCreateParams) CheckGrant(g Grant) error {
	if err := g.checkTap(p.Name); err != nil {
		return err
	}
	return g.checkBridge("bridge", p.Bridge)
}

// CheckGrant: a TAP name of the grant's.
func (p TapDeleteParams) CheckGrant(g Grant) error { return g.checkTap(p.Name) }

// CheckGrant: a TAP name of the grant's.
func (p TapOpenParams) CheckGrant(g Grant) error { return g.checkTap(p.Name) }

// CheckGrant: the grant's gateway address.
func (p DNSListenParams) CheckGrant(g Grant) error {
	if p.Address != g.GatewayAddr() {
		return notGranted(g, "address", p.Address, "gateway "+g.GatewayAddr())
	}
	return nil
}

// LoadGrants reads the grants file, which must be a regular file owned by
// root and writable by nobody else (a grant is root's word). A missing
// file means no grants.
func LoadGrants(path string) (Grants, error) {
	var gs Grants
	if path == "" {
		return gs, nil
	}
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return gs, nil
	}
	if err != nil {
		return gs, fmt.Errorf("grants file %s: %w", path, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return gs, fmt.Errorf("grants file %s: fstat: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Uid != 0 || st.Mode&0o022 != 0 {
		return gs, rpc.WithHint(fmt.Errorf("grants file %s must be a regular file owned by root and writable by root only (uid %d, mode %o)", path, st.Uid, st.Mode&0o7777),
			"sudo chown root:root "+path+" && sudo chmod 0644 "+path+" (or write it anew: sudo banger system install --user NAME)")
	}
	raw, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return gs, fmt.Errorf("reading grants file %s: %w", path, err)
	}
	gs, err = ParseGrants(raw)
	if err != nil {
		return gs, fmt.Errorf("grants file %s: %w", path, err)
	}
	return gs, nil
}
