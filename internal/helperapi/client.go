package helperapi

import (
	"context"
	"fmt"
	"os"

	"github.com/banger-dev/banger/internal/rpc"
)

// Client is bangerd's typed view of the helper. Each method validates its
// arguments locally first (the helper validates them again) and forwards
// the context's op id, so the helper's log lines carry the daemon's.
type Client struct {
	*rpc.Client
}

// NewClient returns a client for the helper's socket that talks only to a
// helper run by root: a socket served by anyone else (another user who got
// there first) is refused before anything is sent.
func NewClient(socket string) *Client {
	c := rpc.NewClient(socket)
	c.VerifyPeer = rpc.PeerUIDs(0)
	return &Client{Client: c}
}

func call[P interface{ Validate() error }, R any](ctx context.Context, c *Client, method string, p P) (R, error) {
	var r R
	if err := p.Validate(); err != nil {
		return r, err
	}
	err := c.Call(ctx, method, p, &r)
	return r, err
}

// Version asks for the helper's version, pid and methods.
func (c *Client) Version(ctx context.Context) (VersionResult, error) {
	return call[VersionParams, VersionResult](ctx, c, MethodVersion, VersionParams{})
}

// EnsureBridge creates the bridge if missing, gives it exactly the address
// p.CIDR and its table's filter chains, and brings it up.
func (c *Client) EnsureBridge(ctx context.Context, p BridgeEnsureParams) (BridgeResult, error) {
	return call[BridgeEnsureParams, BridgeResult](ctx, c, MethodBridgeEnsure, p)
}

// DeleteBridge deletes the bridge and its table; a missing bridge is not an
// error.
func (c *Client) DeleteBridge(ctx context.Context, name string) (DeleteResult, error) {
	return call[BridgeDeleteParams, DeleteResult](ctx, c, MethodBridgeDelete, BridgeDeleteParams{Name: name})
}

// CreateTap creates the TAP (owned by the caller) if missing, attaches it
// to p.Bridge and brings it up.
func (c *Client) CreateTap(ctx context.Context, p TapCreateParams) (TapResult, error) {
	return call[TapCreateParams, TapResult](ctx, c, MethodTapCreate, p)
}

// DeleteTap deletes the TAP; a missing TAP is not an error.
func (c *Client) DeleteTap(ctx context.Context, name string) (DeleteResult, error) {
	return call[TapDeleteParams, DeleteResult](ctx, c, MethodTapDelete, TapDeleteParams{Name: name})
}

// EnsureNAT (re)writes the masquerade chain of the bridge's table and turns
// on IPv4 forwarding for the bridge and its uplinks.
func (c *Client) EnsureNAT(ctx context.Context, p NATEnsureParams) (NATResult, error) {
	return call[NATEnsureParams, NATResult](ctx, c, MethodNATEnsure, p)
}

// DeleteNAT deletes the masquerade chain of the bridge's table; a missing
// one is not an error.
func (c *Client) DeleteNAT(ctx context.Context, bridge string) (DeleteResult, error) {
	return call[NATDeleteParams, DeleteResult](ctx, c, MethodNATDelete, NATDeleteParams{Bridge: bridge})
}

// OpenTap asks the helper to open the caller's TAP and returns the open
// descriptor (the caller closes it), for qemu's -netdev tap,fd=N where the
// VMM's user cannot open /dev/net/tun. Pass it to the VMM with
// exec.Cmd.ExtraFiles.
func (c *Client) OpenTap(ctx context.Context, name string) (*os.File, TapOpenResult, error) {
	var r TapOpenResult
	p := TapOpenParams{Name: name}
	if err := p.Validate(); err != nil {
		return nil, r, err
	}
	files, err := c.CallFiles(ctx, MethodTapOpen, p, &r)
	if err != nil {
		return nil, r, err
	}
	if len(files) != 1 {
		for _, f := range files {
			f.Close()
		}
		return nil, r, fmt.Errorf("tap.open %s: got %d file descriptors, want 1", name, len(files))
	}
	return files[0], r, nil
}

// DNSListen asks for UDP and TCP sockets bound to address:53 (the gateway
// of the caller's bridge), returned open: udp first, then tcp.
func (c *Client) DNSListen(ctx context.Context, address string) (udp, tcp *os.File, err error) {
	p := DNSListenParams{Address: address}
	if err := p.Validate(); err != nil {
		return nil, nil, err
	}
	var r DNSListenResult
	files, err := c.CallFiles(ctx, MethodDNSListen, p, &r)
	if err != nil {
		return nil, nil, err
	}
	if len(files) != 2 {
		for _, f := range files {
			f.Close()
		}
		return nil, nil, fmt.Errorf("dns.listen %s: got %d file descriptors, want 2", address, len(files))
	}
	return files[0], files[1], nil
}
