// Package helperapi is the contract between bangerd and the root helper
// (cmd/banger-helper): the method names, their parameter and result types,
// the pure validation every argument goes through, the grants that say which
// bridge and subnet each user may have, and a typed client.
//
// The helper is the only privileged part of banger, so this list is short on
// purpose: it makes bridges, TAPs and NAT tables, opens TAPs and port 53
// sockets for their owners, and nothing else. No method takes a path, a
// mirror, a package or a script. Every method is idempotent (measure, act,
// verify): calling it twice leaves the host as calling it once does.
// docs/helper.md describes each method for users and reviewers; keep the two
// in step.
//
// Validation here is pure (no file system, no kernel): names must lie inside
// banger's prefixes and fit the kernel's limits, subnets must be private
// IPv4, a non-root caller's names and subnet must be those of its grant
// (CheckGrant). The helper runs the same functions and then the checks that
// need the host (owners of existing objects, overlaps with the host's
// addresses and routes).
package helperapi

// Method names. The helper serves exactly these.
const (
	// MethodVersion: VersionParams (none) -> VersionResult.
	MethodVersion = "helper.version"
	// MethodBridgeEnsure: BridgeEnsureParams -> BridgeResult.
	MethodBridgeEnsure = "bridge.ensure"
	// MethodBridgeDelete: BridgeDeleteParams -> DeleteResult.
	MethodBridgeDelete = "bridge.delete"
	// MethodNATEnsure: NATEnsureParams -> NATResult.
	MethodNATEnsure = "nat.ensure"
	// MethodNATDelete: NATDeleteParams -> DeleteResult.
	MethodNATDelete = "nat.delete"
	// MethodTapCreate: TapCreateParams -> TapResult.
	MethodTapCreate = "tap.create"
	// MethodTapDelete: TapDeleteParams -> DeleteResult.
	MethodTapDelete = "tap.delete"
	// MethodTapOpen: TapOpenParams -> TapOpenResult, plus the TAP's file
	// descriptor passed with the reply (SCM_RIGHTS).
	MethodTapOpen = "tap.open"
	// MethodDNSListen: DNSListenParams -> DNSListenResult, plus two
	// descriptors passed with the reply: a UDP socket and a listening TCP
	// socket, both bound to the caller's gateway address, port 53.
	MethodDNSListen = "dns.listen"
)

// Methods lists every method the helper serves, sorted.
var Methods = []string{
	MethodBridgeDelete,
	MethodBridgeEnsure,
	MethodDNSListen,
	MethodVersion,
	MethodNATDelete,
	MethodNATEnsure,
	MethodTapCreate,
	MethodTapDelete,
	MethodTapOpen,
}

// VersionParams is the empty parameter object of helper.version.
type VersionParams struct{}

// VersionResult answers helper.version: the helper's release, its pid, the
// methods it serves, and what the caller may have (its grant; nil for root,
// which may act on everything).
type VersionResult struct {
	Version string   `json:"version"`
	PID     int      `json:"pid"`
	Methods []string `json:"methods"`
	UID     uint32   `json:"uid"`
	Grant   *Grant   `json:"grant,omitempty"`
}

// DeleteResult answers every delete. Deleted is false when there was
// nothing to delete: the call still succeeds (idempotency).
type DeleteResult struct {
	Deleted bool `json:"deleted"`
}

// BridgeEnsureParams asks for a bridge that exists, is up, carries exactly
// the IPv4 address CIDR (the gateway address with the subnet's prefix
// length, for example 172.30.78.1/24), has IPv6 off, and has the filter
// chains of its nftables table `ip <bridge>` (what comes from the bridge
// must have a source in its subnet; only replies go into it), NAT or not.
// A non-root caller may ask only for its grant's bridge and gateway.
type BridgeEnsureParams struct {
	Name string `json:"name"`
	CIDR string `json:"cidr"`
}

// BridgeResult describes the bridge after bridge.ensure.
type BridgeResult struct {
	Name    string `json:"name"`
	Index   int    `json:"index"`
	Created bool   `json:"created"`
}

// BridgeDeleteParams names the bridge to delete, with its table.
type BridgeDeleteParams struct {
	Name string `json:"name"`
}

// NATEnsureParams asks for masquerading of what comes from Bridge with a
// source in Subnet (network form, for example 172.30.78.0/24: the bridge's
// own) towards anywhere but the subnet, optionally (root only) only out of
// Egress, and for forwarding from and back to Bridge. The masquerade chain
// joins the filter chains in the bridge's table, `ip <bridge>`. A non-root
// caller may ask only for its grant's bridge and subnet.
type NATEnsureParams struct {
	Bridge string `json:"bridge"`
	Subnet string `json:"subnet"`
	Egress string `json:"egress,omitempty"`
}

// NATResult describes the table after nat.ensure.
type NATResult struct {
	// Table is the nftables table, "ip <bridge>".
	Table string `json:"table"`
	// Created is true when the masquerade chain did not exist before.
	Created bool `json:"created"`
	// Forwarding lists the interfaces whose IPv4 forwarding this call
	// turned on: the bridge and the uplinks, each an interface of its own
	// (never net.ipv4.ip_forward, conf/all or conf/default); an uplink so
	// switched on forwards replies only (the helper's table ip
	// banger_uplink).
	Forwarding []string `json:"forwarding,omitempty"`
}

// NATDeleteParams names the bridge whose masquerade to delete (its filter
// chains stay until bridge.delete).
type NATDeleteParams struct {
	Bridge string `json:"bridge"`
}

// TapCreateParams asks for a persistent TAP attached to Bridge and up,
// owned by the caller (so a VMM running as the caller can open it), with
// IPv6 off. A non-root caller's TAP names start with its grant's prefix
// (Grant.TapPrefix) and its TAPs go on its own bridge only.
type TapCreateParams struct {
	Name   string `json:"name"`
	Bridge string `json:"bridge"`
}

// TapResult describes the TAP after tap.create.
type TapResult struct {
	Name    string `json:"name"`
	Index   int    `json:"index"`
	Created bool   `json:"created"`
}

// TapDeleteParams names the TAP to delete.
type TapDeleteParams struct {
	Name string `json:"name"`
}

// TapOpenParams names an existing TAP of the caller's to open for it.
type TapOpenParams struct {
	Name string `json:"name"`
}

// TapOpenResult answers tap.open; the descriptor itself travels beside the
// reply. VnetHdr says the descriptor was attached with IFF_VNET_HDR (qemu
// detects it by itself with TUNGETIFF).
type TapOpenResult struct {
	Name    string `json:"name"`
	VnetHdr bool   `json:"vnet_hdr"`
}

// DNSListenParams names the address to bind: the gateway address of the
// caller's bridge.
type DNSListenParams struct {
	Address string `json:"address"`
}

// DNSListenResult answers dns.listen.
type DNSListenResult struct {
	Address string `json:"address"`
	Bridge  string `json:"bridge"`
}
