// Package helperapi is the contract between bangerd and the root helper
// (cmd/banger-helper): the method names, their parameter and result types,
// the pure validation every argument goes through, and a typed client.
//
// The helper is the only privileged part of banger, so this list is short on
// purpose and every method is idempotent (measure, act, verify): calling it
// twice leaves the host as calling it once does. docs/helper.md describes each
// method for users and reviewers; keep the two in step.
//
// Validation here is pure (no file system, no kernel): names must lie inside
// banger's prefixes and fit the kernel's limits, paths must be absolute and
// clean, numbers must be in range. The helper runs the same functions and then
// the checks that need the host (real paths under the state roots, backing
// files of loop devices, the caller's uid).
package helperapi

// Method names. The helper serves exactly these.
const (
	// MethodVersion: VersionParams (none) -> VersionResult.
	MethodVersion = "helper.version"
	// MethodBridgeEnsure: BridgeEnsureParams -> BridgeResult.
	MethodBridgeEnsure = "bridge.ensure"
	// MethodBridgeDelete: BridgeDeleteParams -> DeleteResult.
	MethodBridgeDelete = "bridge.delete"
	// MethodTapCreate: TapCreateParams -> TapResult.
	MethodTapCreate = "tap.create"
	// MethodTapDelete: TapDeleteParams -> DeleteResult.
	MethodTapDelete = "tap.delete"
	// MethodTapOpen: TapOpenParams -> TapOpenResult, plus the TAP's file
	// descriptor passed with the reply (SCM_RIGHTS).
	MethodTapOpen = "tap.open"
	// MethodNATEnsure: NATEnsureParams -> NATResult.
	MethodNATEnsure = "nat.ensure"
	// MethodNATDelete: NATDeleteParams -> DeleteResult.
	MethodNATDelete = "nat.delete"
	// MethodLoopAttach: LoopAttachParams -> LoopAttachResult.
	MethodLoopAttach = "loop.attach"
	// MethodLoopDetach: LoopDetachParams -> DeleteResult.
	MethodLoopDetach = "loop.detach"
	// MethodDMSnapshotCreate: DMSnapshotCreateParams -> DMSnapshotResult.
	MethodDMSnapshotCreate = "dm.snapshot.create"
	// MethodDMSnapshotRemove: DMSnapshotRemoveParams -> DeleteResult.
	MethodDMSnapshotRemove = "dm.snapshot.remove"
	// MethodChownDevice: ChownDeviceParams -> ChownDeviceResult.
	MethodChownDevice = "chown.device"
)

// Methods lists every method the helper serves, sorted.
var Methods = []string{
	MethodBridgeDelete,
	MethodBridgeEnsure,
	MethodChownDevice,
	MethodDMSnapshotCreate,
	MethodDMSnapshotRemove,
	MethodDNSListen,
	MethodVersion,
	MethodImageBootstrap,
	MethodImageConfigure,
	MethodImageDiscard,
	MethodImagePack,
	MethodLoopAttach,
	MethodLoopDetach,
	MethodNATDelete,
	MethodNATEnsure,
	MethodTapCreate,
	MethodTapDelete,
	MethodTapOpen,
}

// VersionParams is the empty parameter object of helper.version.
type VersionParams struct{}

// Validate accepts the empty object.
func (VersionParams) Validate() error { return nil }

// VersionResult answers helper.version.
type VersionResult struct {
	Version string   `json:"version"`
	PID     int      `json:"pid"`
	Methods []string `json:"methods"`
}

// DeleteResult answers every delete, detach and remove. Deleted is false when
// there was nothing to delete: the call still succeeds (idempotency).
type DeleteResult struct {
	Deleted bool `json:"deleted"`
}

// BridgeEnsureParams asks for a bridge that exists, is up and carries exactly
// the IPv4 address CIDR (the gateway address with the subnet's prefix
// length, for example 10.77.0.1/24).
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

// BridgeDeleteParams names the bridge to delete.
type BridgeDeleteParams struct {
	Name string `json:"name"`
}

// TapCreateParams asks for a persistent TAP attached to Bridge and up, owned
// by UID and GID so that a VMM running as that user can open it.
type TapCreateParams struct {
	Name   string `json:"name"`
	Bridge string `json:"bridge"`
	UID    uint32 `json:"uid"`
	GID    uint32 `json:"gid"`
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

// TapOpenParams names an existing TAP to open for the caller.
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

// NATEnsureParams asks for masquerading of Subnet (network form, for
// example 10.77.0.0/24) towards anywhere but the subnet itself, optionally
// only out of Egress, and for forwarding from and back to Bridge. The rules
// live in an nftables table of their own, `ip <bridge>`.
type NATEnsureParams struct {
	Subnet string `json:"subnet"`
	Bridge string `json:"bridge"`
	Egress string `json:"egress,omitempty"`
}

// NATResult describes the table after nat.ensure.
type NATResult struct {
	// Table is the nftables table, "ip <bridge>".
	Table string `json:"table"`
	// Created is true when the table did not exist before.
	Created bool `json:"created"`
	// IPForwardEnabled is true when this call turned net.ipv4.ip_forward on.
	IPForwardEnabled bool `json:"ip_forward_enabled"`
}

// NATDeleteParams names the bridge whose NAT table to delete.
type NATDeleteParams struct {
	Bridge string `json:"bridge"`
}

// LoopAttachParams asks for a loop device backed by the regular file Path,
// which must lie under one of the helper's state roots.
type LoopAttachParams struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only"`
}

// LoopAttachResult names the loop device. Existing is true when the file was
// already attached (with the same read-only mode) and nothing changed.
type LoopAttachResult struct {
	Device   string `json:"device"`
	Existing bool   `json:"existing"`
}

// LoopDetachParams names the loop device to detach, /dev/loopN.
type LoopDetachParams struct {
	Device string `json:"device"`
}

// DMSnapshotCreateParams asks for a device-mapper snapshot named Name over
// the read-only BaseDevice with copy-on-write store COWDevice (both loop
// devices backed by files under the state roots), its node owned by UID.
// ChunkSectors is the snapshot chunk size in 512-byte sectors (0: 8).
type DMSnapshotCreateParams struct {
	Name         string `json:"name"`
	BaseDevice   string `json:"base_device"`
	COWDevice    string `json:"cow_device"`
	ChunkSectors uint32 `json:"chunk_sectors,omitempty"`
	UID          uint32 `json:"uid"`
}

// DMSnapshotResult describes the snapshot device.
type DMSnapshotResult struct {
	Name string `json:"name"`
	// Device is /dev/mapper/<name>.
	Device string `json:"device"`
	// Node is the block device node it resolves to, /dev/dm-N.
	Node    string `json:"node"`
	Sectors uint64 `json:"sectors"`
	Created bool   `json:"created"`
}

// DMSnapshotRemoveParams names the snapshot to remove.
type DMSnapshotRemoveParams struct {
	Name string `json:"name"`
}

// ChownDeviceParams asks for Device's node to be owned by UID.
type ChownDeviceParams struct {
	Device string `json:"device"`
	UID    uint32 `json:"uid"`
}

// ChownDeviceResult names the node that was changed (a /dev/mapper name
// resolves to its /dev/dm-N node).
type ChownDeviceResult struct {
	Node string `json:"node"`
}
