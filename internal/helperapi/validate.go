package helperapi

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/banger-dev/banger/internal/rpc"
)

// Naming scheme. Everything the helper creates or touches carries one of
// these prefixes; anything else is refused.
const (
	// BridgePrefix starts bridge names: "banger" plus 1-9 of [a-z0-9-].
	// A user's bridge is banger<N>, N its grant's network number.
	BridgePrefix = "banger"
	// TapPrefix starts TAP names: "tap" plus 2-12 of [a-z0-9-]. A user's
	// TAPs are tap<N>-* (Grant.TapPrefix); root's are tap-*, a namespace
	// no grant can have.
	TapPrefix = "tap"
	// RootTapPrefix starts the TAP names of a root daemon.
	RootTapPrefix = "tap-"

	// IfNameMax is the longest interface name Linux accepts (IFNAMSIZ-1).
	IfNameMax = 15
)

// truncate bounds a caller's value quoted in a message.
func truncate(value string) string {
	if len(value) > 80 {
		return value[:80] + "..."
	}
	return value
}

// checkToken refuses the empty string, over-long strings and any byte
// outside [a-z0-9-]; a name must not end with '-'.
func checkToken(arg, value string, maxLen int) error {
	switch {
	case value == "":
		return rpc.BadArg(arg, value, "empty")
	case len(value) > maxLen:
		return rpc.BadArg(arg, value, fmt.Sprintf("longer than %d bytes", maxLen))
	}
	for i := 0; i < len(value); i++ {
		c := value[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return rpc.BadArg(arg, value, fmt.Sprintf("character %q not allowed (want [a-z0-9-])", c))
		}
	}
	if strings.HasSuffix(value, "-") {
		return rpc.BadArg(arg, value, "ends with '-'")
	}
	return nil
}

func checkPrefixed(arg, value, prefix string, minRest int) error {
	if err := checkToken(arg, value, IfNameMax); err != nil {
		return err
	}
	if !strings.HasPrefix(value, prefix) || len(value) < len(prefix)+minRest {
		return rpc.BadArg(arg, value, fmt.Sprintf("outside banger's names (want %s followed by [a-z0-9-])", prefix))
	}
	return nil
}

// ValidateBridgeName accepts banger's bridge names: "banger" and 1-9 of
// [a-z0-9-], for example banger1.
func ValidateBridgeName(arg, name string) error { return checkPrefixed(arg, name, BridgePrefix, 1) }

// ValidateTapName accepts banger's TAP names: "tap" and 2-12 of [a-z0-9-]
// (tap1-pool-0, tap-3f9a1c2b).
func ValidateTapName(arg, name string) error { return checkPrefixed(arg, name, TapPrefix, 2) }

// ValidateIfName accepts any plausible existing interface name (used for
// the egress interface, which is only matched, never changed): 1-15 of
// [A-Za-z0-9_.-], not "." or "..".
func ValidateIfName(arg, name string) error {
	switch {
	case name == "":
		return rpc.BadArg(arg, name, "empty")
	case len(name) > IfNameMax:
		return rpc.BadArg(arg, name, fmt.Sprintf("longer than %d bytes", IfNameMax))
	case name == "." || name == "..":
		return rpc.BadArg(arg, name, "not an interface name")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return rpc.BadArg(arg, name, fmt.Sprintf("character %q not allowed in an interface name", c))
		}
	}
	return nil
}

// privateSpace is where banger's subnets may lie: RFC 1918 and the shared
// address space of RFC 6598. A public subnet on a bridge would re-route
// that part of the internet for the whole host.
var privateSpace = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("100.64.0.0/10"),
}

// isPrivate reports whether p lies wholly inside one private range.
func isPrivate(p netip.Prefix) bool {
	for _, r := range privateSpace {
		if r.Bits() <= p.Bits() && r.Contains(p.Masked().Addr()) {
			return true
		}
	}
	return false
}

// ValidateGatewayCIDR accepts an IPv4 host address with its subnet's prefix
// length, /16 to /30, written canonically (172.30.78.1/24), in private
// address space; the address must be neither the subnet's network nor its
// broadcast address.
func ValidateGatewayCIDR(arg, s string) error {
	p, err := parseIPv4Prefix(arg, s)
	if err != nil {
		return err
	}
	a := p.Addr()
	if a == p.Masked().Addr() {
		return rpc.BadArg(arg, s, "is the subnet's network address; want the gateway's, e.g. "+p.Masked().Addr().Next().String()+"/"+strconv.Itoa(p.Bits()))
	}
	if a == broadcast(p) {
		return rpc.BadArg(arg, s, "is the subnet's broadcast address")
	}
	return nil
}

// ValidateSubnet accepts a private IPv4 subnet in network form, /16 to /30,
// written canonically (172.30.78.0/24).
func ValidateSubnet(arg, s string) error {
	p, err := parseIPv4Prefix(arg, s)
	if err != nil {
		return err
	}
	if p.Masked() != p {
		return rpc.BadArg(arg, s, "not in network form; want "+p.Masked().String())
	}
	return nil
}

// GatewayOf returns the gateway CIDR of a subnet: its first host address
// with the subnet's prefix length (172.30.78.0/24 -> 172.30.78.1/24).
func GatewayOf(subnet netip.Prefix) string {
	return netip.PrefixFrom(subnet.Masked().Addr().Next(), subnet.Bits()).String()
}

func parseIPv4Prefix(arg, s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, rpc.BadArg(arg, s, "empty")
	}
	p, err := netip.ParsePrefix(s)
	switch {
	case err != nil:
		return netip.Prefix{}, rpc.BadArg(arg, s, "not an address/prefix")
	case !p.Addr().Is4():
		return netip.Prefix{}, rpc.BadArg(arg, s, "not IPv4")
	case p.String() != s:
		return netip.Prefix{}, rpc.BadArg(arg, s, "not canonical; want "+p.String())
	case p.Bits() < 16 || p.Bits() > 30:
		return netip.Prefix{}, rpc.BadArg(arg, s, "prefix length outside /16../30")
	case !isPrivate(p):
		return netip.Prefix{}, rpc.BadArg(arg, s, "not private address space (want inside 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16 or 100.64.0.0/10)")
	}
	return p, nil
}

func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= uint32(1)<<(32-p.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Validate accepts the empty object.
func (VersionParams) Validate() error { return nil }

// Validate checks every argument of bridge.ensure.
func (p BridgeEnsureParams) Validate() error {
	if err := ValidateBridgeName("name", p.Name); err != nil {
		return err
	}
	return ValidateGatewayCIDR("cidr", p.CIDR)
}

// Validate checks every argument of bridge.delete.
func (p BridgeDeleteParams) Validate() error { return ValidateBridgeName("name", p.Name) }

// Validate checks every argument of tap.create.
func (p TapCreateParams) Validate() error {
	if err := ValidateTapName("name", p.Name); err != nil {
		return err
	}
	return ValidateBridgeName("bridge", p.Bridge)
}

// Validate checks every argument of tap.delete.
func (p TapDeleteParams) Validate() error { return ValidateTapName("name", p.Name) }

// Validate checks every argument of tap.open.
func (p TapOpenParams) Validate() error { return ValidateTapName("name", p.Name) }

// Validate checks every argument of nat.ensure.
func (p NATEnsureParams) Validate() error {
	if err := ValidateBridgeName("bridge", p.Bridge); err != nil {
		return err
	}
	if err := ValidateSubnet("subnet", p.Subnet); err != nil {
		return err
	}
	if p.Egress != "" {
		if err := ValidateIfName("egress", p.Egress); err != nil {
			return err
		}
		if p.Egress == p.Bridge || strings.HasPrefix(p.Egress, BridgePrefix) || strings.HasPrefix(p.Egress, TapPrefix) {
			return rpc.BadArg("egress", p.Egress, "is one of banger's own interfaces")
		}
		if slices.Contains(notUplinks, p.Egress) {
			return rpc.BadArg("egress", p.Egress, "is not an uplink (forwarding on it would be the whole host's, or loopback's); name the interface of a default route, or leave egress out")
		}
	}
	return nil
}

// notUplinks are names of /proc/sys/net/ipv4/conf/ that are no interface
// traffic leaves by: "all" and "default" are the whole host's settings.
var notUplinks = []string{"all", "default", "lo"}

// Validate checks every argument of nat.delete.
func (p NATDeleteParams) Validate() error { return ValidateBridgeName("bridge", p.Bridge) }

// Validate accepts a private IPv4 unicast address; that it is the caller's
// gateway is checked against the grant and the host.
func (p DNSListenParams) Validate() error {
	a, err := netip.ParseAddr(p.Address)
	if err != nil || !a.Is4() || a.String() != p.Address || !isPrivate(netip.PrefixFrom(a, 32)) {
		return rpc.BadArg("address", p.Address, "want the private IPv4 gateway address of a banger bridge")
	}
	return nil
}

// Sysctl is one per-interface setting, a file under
// /proc/sys/net/<family>/conf/<interface>/.
type Sysctl struct{ Key, Value string }

// IPv6Off is what the helper sets on every bridge and TAP it creates,
// before the link comes up (and checks on every ensure; `banger system
// verify` checks it too): a guest's router advertisement must not give the
// host a route or an address, nor a redirect steer it. The keys are applied
// in this order; disable_ipv6 last.
var IPv6Off = []Sysctl{
	{"accept_ra", "0"},
	{"autoconf", "0"},
	{"accept_redirects", "0"},
	{"disable_ipv6", "1"},
}
