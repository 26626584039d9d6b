package helperapi

import (
	"fmt"
	"math"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/banger-dev/banger/internal/rpc"
)

// Naming scheme. Everything the helper creates or touches carries one of
// these prefixes; anything else is refused.
const (
	// BridgePrefix starts bridge names: "banger" plus 1-9 of [a-z0-9-],
	// for example banger0.
	BridgePrefix = "banger"
	// TapPrefix starts TAP names: "tap-" plus 1-11 of [a-z0-9-]. banger uses
	// tap-pool-N for the warm pool and tap-<vm id prefix> per VM.
	TapPrefix = "tap-"
	// PoolTapPrefix starts the names of pooled TAPs, tap-pool-N.
	PoolTapPrefix = "tap-pool-"
	// DMPrefix starts device-mapper names: "banger-" plus 1-57 of [a-z0-9-].
	DMPrefix = "banger-"

	// IfNameMax is the longest interface name Linux accepts (IFNAMSIZ-1).
	IfNameMax = 15
	// DMNameMax is the longest device-mapper name banger uses (the kernel
	// allows 127).
	DMNameMax = 64
	// PathMax bounds paths (PATH_MAX-1).
	PathMax = 4095

	// DefaultChunkSectors is the snapshot chunk size when none is given
	// (8 sectors, 4 KiB).
	DefaultChunkSectors = 8
	// MaxChunkSectors bounds the snapshot chunk size (512 KiB).
	MaxChunkSectors = 1024
)

// PoolTapName is the name of the n-th pooled TAP, tap-pool-N.
func PoolTapName(n int) string { return PoolTapPrefix + strconv.Itoa(n) }

// VMTapName is the per-VM TAP name for a VM id: tap- and the id's first 11
// characters. The id must be of [a-z0-9-] for the result to validate.
func VMTapName(vmID string) string {
	if len(vmID) > IfNameMax-len(TapPrefix) {
		vmID = vmID[:IfNameMax-len(TapPrefix)]
	}
	return TapPrefix + strings.TrimRight(vmID, "-")
}

// SnapshotName is the device-mapper name for a VM id: banger- and the id.
func SnapshotName(vmID string) string {
	if len(vmID) > DMNameMax-len(DMPrefix) {
		vmID = vmID[:DMNameMax-len(DMPrefix)]
	}
	return DMPrefix + strings.TrimRight(vmID, "-")
}

var (
	loopDevRE = regexp.MustCompile(`^/dev/loop(0|[1-9][0-9]{0,5})$`)
	dmNodeRE  = regexp.MustCompile(`^/dev/dm-(0|[1-9][0-9]{0,5})$`)
)

// badArg is the one error shape of this file: the argument, its value
// (quoted, so a newline cannot forge a log line) and what is wrong.
func badArg(arg, value, reason string) error {
	if len(value) > 80 {
		value = value[:80] + "..."
	}
	return fmt.Errorf("argument %s %q: %s: %w", arg, value, reason, rpc.ErrBadRequest)
}

// checkToken refuses the empty string, over-long strings and any byte
// outside [a-z0-9-]; a name must not start or end with '-'.
func checkToken(arg, value string, maxLen int) error {
	switch {
	case value == "":
		return badArg(arg, value, "empty")
	case len(value) > maxLen:
		return badArg(arg, value, fmt.Sprintf("longer than %d bytes", maxLen))
	}
	for i := 0; i < len(value); i++ {
		c := value[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return badArg(arg, value, fmt.Sprintf("character %q not allowed (want [a-z0-9-])", c))
		}
	}
	if strings.HasSuffix(value, "-") {
		return badArg(arg, value, "ends with '-'")
	}
	return nil
}

func checkPrefixed(arg, value, prefix string, maxLen int) error {
	if err := checkToken(arg, value, maxLen); err != nil {
		return err
	}
	if !strings.HasPrefix(value, prefix) || len(value) == len(prefix) {
		return badArg(arg, value, fmt.Sprintf("outside banger's names (want %s followed by [a-z0-9-])", prefix))
	}
	return nil
}

// ValidateBridgeName accepts banger's bridge names: "banger" and 1-9 of
// [a-z0-9-], for example banger0.
func ValidateBridgeName(arg, name string) error {
	return checkPrefixed(arg, name, BridgePrefix, IfNameMax)
}

// ValidateTapName accepts banger's TAP names: "tap-" and 1-11 of [a-z0-9-]
// (tap-pool-N, tap-<vm id prefix>).
func ValidateTapName(arg, name string) error {
	return checkPrefixed(arg, name, TapPrefix, IfNameMax)
}

// ValidateDMName accepts banger's device-mapper names: "banger-" and 1-57 of
// [a-z0-9-].
func ValidateDMName(arg, name string) error {
	return checkPrefixed(arg, name, DMPrefix, DMNameMax)
}

// ValidateIfName accepts any plausible existing interface name (used for
// the egress interface, which is only matched, never changed): 1-15 of
// [A-Za-z0-9_.-], not "." or "..".
func ValidateIfName(arg, name string) error {
	switch {
	case name == "":
		return badArg(arg, name, "empty")
	case len(name) > IfNameMax:
		return badArg(arg, name, fmt.Sprintf("longer than %d bytes", IfNameMax))
	case name == "." || name == "..":
		return badArg(arg, name, "not an interface name")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return badArg(arg, name, fmt.Sprintf("character %q not allowed in an interface name", c))
		}
	}
	return nil
}

// ValidateLoopDevice accepts /dev/loopN.
func ValidateLoopDevice(arg, dev string) error {
	if !loopDevRE.MatchString(dev) {
		return badArg(arg, dev, "not a loop device (want /dev/loopN)")
	}
	return nil
}

// ValidateDevice accepts the device nodes chown.device may change:
// /dev/loopN, /dev/dm-N and /dev/mapper/banger-*.
func ValidateDevice(arg, dev string) error {
	if loopDevRE.MatchString(dev) || dmNodeRE.MatchString(dev) {
		return nil
	}
	if name, ok := strings.CutPrefix(dev, "/dev/mapper/"); ok {
		return ValidateDMName(arg, name)
	}
	return badArg(arg, dev, "not a device banger manages (want /dev/loopN, /dev/dm-N or /dev/mapper/banger-*)")
}

// ValidatePath accepts an absolute, clean path without "..", NUL or control
// characters, of valid UTF-8, at most PathMax bytes. Whether it lies under
// a state root is for the helper to decide on the real file system.
func ValidatePath(arg, p string) error {
	switch {
	case p == "":
		return badArg(arg, p, "empty")
	case len(p) > PathMax:
		return badArg(arg, p, fmt.Sprintf("longer than %d bytes", PathMax))
	case !utf8.ValidString(p):
		return badArg(arg, p, "not valid UTF-8")
	case !filepath.IsAbs(p):
		return badArg(arg, p, "not an absolute path")
	case p == "/":
		return badArg(arg, p, "the root directory")
	}
	for _, r := range p {
		if unicode.IsControl(r) {
			return badArg(arg, p, fmt.Sprintf("control character %q", r))
		}
	}
	for _, elem := range strings.Split(p, "/") {
		if elem == ".." {
			return badArg(arg, p, `contains ".."`)
		}
	}
	if filepath.Clean(p) != p {
		return badArg(arg, p, "not clean (want "+filepath.Clean(p)+")")
	}
	return nil
}

// ValidateID accepts a uid or gid; 4294967295 is (uid_t)-1, "no change".
func ValidateID(arg string, id uint32) error {
	if id == math.MaxUint32 {
		return badArg(arg, strconv.FormatUint(uint64(id), 10), "is (uid_t)-1")
	}
	return nil
}

// ValidateGatewayCIDR accepts an IPv4 host address with its subnet's prefix
// length, /8 to /30, written canonically (10.77.0.1/24); the address must be
// neither the subnet's network nor its broadcast address, nor loopback,
// link-local, multicast or unspecified.
func ValidateGatewayCIDR(arg, s string) error {
	p, err := parseIPv4Prefix(arg, s)
	if err != nil {
		return err
	}
	a := p.Addr()
	if a == p.Masked().Addr() {
		return badArg(arg, s, "is the subnet's network address; want the gateway's, e.g. "+nextAddr(p).String()+"/"+strconv.Itoa(p.Bits()))
	}
	if a == broadcast(p) {
		return badArg(arg, s, "is the subnet's broadcast address")
	}
	return nil
}

// ValidateSubnet accepts an IPv4 subnet in network form, /8 to /30, written
// canonically (10.77.0.0/24).
func ValidateSubnet(arg, s string) error {
	p, err := parseIPv4Prefix(arg, s)
	if err != nil {
		return err
	}
	if p.Masked() != p {
		return badArg(arg, s, "not in network form; want "+p.Masked().String())
	}
	return nil
}

// SubnetOf returns the subnet of a gateway CIDR: 10.77.0.1/24 -> 10.77.0.0/24.
func SubnetOf(gatewayCIDR string) (string, error) {
	if err := ValidateGatewayCIDR("cidr", gatewayCIDR); err != nil {
		return "", err
	}
	return netip.MustParsePrefix(gatewayCIDR).Masked().String(), nil
}

func parseIPv4Prefix(arg, s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, badArg(arg, s, "empty")
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, badArg(arg, s, "not an address/prefix")
	}
	a := p.Addr()
	switch {
	case !a.Is4():
		return netip.Prefix{}, badArg(arg, s, "not IPv4")
	case p.String() != s:
		return netip.Prefix{}, badArg(arg, s, "not canonical; want "+p.String())
	case p.Bits() < 8 || p.Bits() > 30:
		return netip.Prefix{}, badArg(arg, s, "prefix length outside /8../30")
	case a.IsLoopback(), a.IsMulticast(), a.IsUnspecified(), a.IsLinkLocalUnicast(), a == netip.IPv4Unspecified():
		return netip.Prefix{}, badArg(arg, s, "loopback, link-local, multicast or unspecified")
	}
	if m := p.Masked().Addr(); m.IsLoopback() || m.IsMulticast() || m.IsUnspecified() || m.IsLinkLocalUnicast() {
		return netip.Prefix{}, badArg(arg, s, "subnet is loopback, link-local, multicast or unspecified")
	}
	return p, nil
}

func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func nextAddr(p netip.Prefix) netip.Addr { return p.Masked().Addr().Next() }

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
	if err := ValidateBridgeName("bridge", p.Bridge); err != nil {
		return err
	}
	if err := ValidateID("uid", p.UID); err != nil {
		return err
	}
	return ValidateID("gid", p.GID)
}

// Validate checks every argument of tap.delete.
func (p TapDeleteParams) Validate() error { return ValidateTapName("name", p.Name) }

// Validate checks every argument of tap.open.
func (p TapOpenParams) Validate() error { return ValidateTapName("name", p.Name) }

// Validate checks every argument of nat.ensure.
func (p NATEnsureParams) Validate() error {
	if err := ValidateSubnet("subnet", p.Subnet); err != nil {
		return err
	}
	if err := ValidateBridgeName("bridge", p.Bridge); err != nil {
		return err
	}
	if p.Egress != "" {
		if err := ValidateIfName("egress", p.Egress); err != nil {
			return err
		}
		if p.Egress == p.Bridge {
			return badArg("egress", p.Egress, "is the bridge itself")
		}
	}
	return nil
}

// Validate checks every argument of nat.delete.
func (p NATDeleteParams) Validate() error { return ValidateBridgeName("bridge", p.Bridge) }

// Validate checks every argument of loop.attach.
func (p LoopAttachParams) Validate() error { return ValidatePath("path", p.Path) }

// Validate checks every argument of loop.detach.
func (p LoopDetachParams) Validate() error { return ValidateLoopDevice("device", p.Device) }

// Validate checks every argument of dm.snapshot.create.
func (p DMSnapshotCreateParams) Validate() error {
	if err := ValidateDMName("name", p.Name); err != nil {
		return err
	}
	if err := ValidateLoopDevice("base_device", p.BaseDevice); err != nil {
		return err
	}
	if err := ValidateLoopDevice("cow_device", p.COWDevice); err != nil {
		return err
	}
	if p.BaseDevice == p.COWDevice {
		return badArg("cow_device", p.COWDevice, "is the base device too")
	}
	if c := p.ChunkSectors; c != 0 && (c < DefaultChunkSectors || c > MaxChunkSectors || c&(c-1) != 0) {
		return badArg("chunk_sectors", strconv.FormatUint(uint64(c), 10),
			fmt.Sprintf("want a power of two from %d to %d", DefaultChunkSectors, MaxChunkSectors))
	}
	return ValidateID("uid", p.UID)
}

// Chunk returns the chunk size in sectors, the default when unset.
func (p DMSnapshotCreateParams) Chunk() uint32 {
	if p.ChunkSectors == 0 {
		return DefaultChunkSectors
	}
	return p.ChunkSectors
}

// Validate checks every argument of dm.snapshot.remove.
func (p DMSnapshotRemoveParams) Validate() error { return ValidateDMName("name", p.Name) }

// Validate checks every argument of chown.device.
func (p ChownDeviceParams) Validate() error {
	if err := ValidateDevice("device", p.Device); err != nil {
		return err
	}
	return ValidateID("uid", p.UID)
}
