package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
)

// netID is this daemon's network: the bridge, its subnet and the prefix of
// its TAP names. A root daemon takes them from its config (TAPs tap-*); a
// user's daemon from the grant root gave it (`banger system install
// --user NAME [--subnet CIDR]`), which the helper reports, since the helper
// refuses any other bridge, subnet or TAP name to that user.
type netID struct {
	Bridge    string
	Subnet    netip.Prefix
	TapPrefix string
	// Grant is the grant it came from (nil for a root daemon).
	Grant *helperapi.Grant
}

// Gateway is the bridge's address, the subnet's first host.
func (n netID) Gateway() netip.Addr { return n.Subnet.Addr().Next() }

// GatewayCIDR is the gateway with the subnet's length (172.30.77.1/24).
func (n netID) GatewayCIDR() string { return netip.PrefixFrom(n.Gateway(), n.Subnet.Bits()).String() }

// network returns this daemon's network, asking the helper for the grant
// the first time when bangerd runs as a user.
func (d *Daemon) network(ctx context.Context) (netID, error) {
	if os.Geteuid() == 0 {
		return d.rootNetwork(), nil
	}
	if n, ok := d.cachedNetwork(); ok {
		return n, nil
	}
	if _, err := d.helperClient(ctx); err != nil {
		return netID{}, fmt.Errorf("finding this user's network: %w", err)
	}
	n, ok := d.cachedNetwork()
	if !ok {
		return netID{}, rpc.WithHint(rpc.Errorf(rpc.ErrForbidden, "the root helper reports no network grant for uid %d", os.Getuid()),
			fmt.Sprintf("sudo banger system install --user %s", currentUserName()))
	}
	return n, nil
}

func (d *Daemon) rootNetwork() netID {
	return netID{Bridge: d.cfg.Network.Bridge, Subnet: d.cfg.Subnet(), TapPrefix: helperapi.RootTapPrefix}
}

// cachedNetwork is network without asking anyone: false for a user's daemon
// that has not heard from the helper yet.
func (d *Daemon) cachedNetwork() (netID, bool) {
	if os.Geteuid() == 0 {
		return d.rootNetwork(), true
	}
	d.netMu.Lock()
	g := d.grant
	d.netMu.Unlock()
	if g == nil {
		return netID{}, false
	}
	return netID{Bridge: g.Bridge(), Subnet: g.Prefix(), TapPrefix: g.TapPrefix(), Grant: g}, true
}

// setGrant records the grant the helper reported, after checking that the
// config does not ask for another network (a user's bridge and subnet are
// root's to choose).
func (d *Daemon) setGrant(ctx context.Context, g *helperapi.Grant) error {
	if g == nil {
		return nil
	}
	def := config.Defaults().Network
	if b := d.cfg.Network.Bridge; b != def.Bridge && b != g.Bridge() {
		return rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "network.bridge = %q in %s, but root granted uid %d bridge %s", b, d.opts.ConfigPath, g.UID, g.Bridge()),
			"remove network.bridge from the config: a user's network is the one root grants")
	}
	if s := d.cfg.Network.Subnet; s != def.Subnet && s != g.Subnet {
		return rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "network.subnet = %q in %s, but root granted uid %d subnet %s", s, d.opts.ConfigPath, g.UID, g.Subnet),
			fmt.Sprintf("remove network.subnet from the config, or ask root for it: sudo banger system install --user %s --subnet %s", g.User, s))
	}
	d.netMu.Lock()
	changed := d.grant == nil || *d.grant != *g
	d.grant = g
	d.netMu.Unlock()
	if changed {
		d.log.InfoContext(ctx, "network granted by root", "bridge", g.Bridge(), "subnet", g.Subnet, "tap_prefix", g.TapPrefix())
	}
	return nil
}

// bridgeReady reports, without the helper, whether the bridge exists, is up
// and carries the gateway address: then a VM start needs no network setup.
func bridgeReady(n netID) bool {
	l, err := netlink.LinkByName(n.Bridge)
	if err != nil || l.Attrs().Flags&net.FlagUp == 0 {
		return false
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if a.IPNet.String() == n.GatewayCIDR() {
			return true
		}
	}
	return false
}

// ensureNetwork makes the bridge and, when configured, the NAT table exist.
// Each helper call is idempotent; once this daemon has set the network up
// and the bridge is still as it left it, a VM start skips the helper calls.
func (d *Daemon) ensureNetwork(ctx context.Context) (api.NetworkStatus, error) {
	n, err := d.network(ctx)
	if err != nil {
		return api.NetworkStatus{}, err
	}
	st := d.networkStatus(n)
	d.netSetupMu.Lock()
	defer d.netSetupMu.Unlock()
	if d.netReady && bridgeReady(n) {
		st.BridgeUp = true
		if d.cfg.Network.NAT {
			st.NATTable = "ip " + st.Bridge
		}
		return st, nil
	}
	d.netReady = false
	h, err := d.helperClient(ctx)
	if err != nil {
		return st, fmt.Errorf("setting up bridge %s: %w", st.Bridge, err)
	}
	br, err := h.EnsureBridge(ctx, helperapi.BridgeEnsureParams{Name: st.Bridge, CIDR: st.Gateway})
	if err != nil {
		return st, fmt.Errorf("setting up bridge %s: %w", st.Bridge, err)
	}
	st.BridgeUp = true
	d.log.InfoContext(ctx, "bridge ready", "bridge", br.Name, "cidr", st.Gateway, "created", br.Created)
	if d.cfg.Network.NAT {
		nat, err := h.EnsureNAT(ctx, helperapi.NATEnsureParams{Subnet: st.Subnet, Bridge: st.Bridge})
		if err != nil {
			return st, fmt.Errorf("setting up NAT for %s: %w", st.Subnet, err)
		}
		st.NATTable = nat.Table
		d.log.InfoContext(ctx, "nat ready", "table", nat.Table, "created", nat.Created)
	}
	d.ensureDNS(ctx, n)
	d.adoptPool(ctx, n)
	d.refillPool(ctx, n)
	d.netReady = true
	return st, nil
}

func (d *Daemon) networkStatus(n netID) api.NetworkStatus {
	return api.NetworkStatus{
		Bridge:  n.Bridge,
		Subnet:  n.Subnet.String(),
		Gateway: n.GatewayCIDR(),
		Domain:  d.cfg.Network.Domain,
		NAT:     d.cfg.Network.NAT,
	}
}

func (d *Daemon) networkUp(ctx context.Context, _ noParams) (api.NetworkStatus, error) {
	return d.ensureNetwork(ctx)
}

// networkDown removes NAT and the bridge; it refuses while VMs run.
func (d *Daemon) networkDown(ctx context.Context, _ noParams) (api.NetworkStatus, error) {
	n, err := d.network(ctx)
	if err != nil {
		return api.NetworkStatus{}, err
	}
	st := d.networkStatus(n)
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return st, err
	}
	var running []string
	for _, vm := range vms {
		if vm.Runtime.State.Live() {
			running = append(running, vm.Name)
		}
	}
	if len(running) > 0 {
		return st, rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "bridge %s is in use by running VM(s) %v", st.Bridge, running), "stop them first: banger vm stop NAME")
	}
	h, err := d.helperClient(ctx)
	if err != nil {
		return st, err
	}
	d.netSetupMu.Lock()
	d.netReady = false
	d.netSetupMu.Unlock()
	d.dnsMu.Lock()
	if d.dnsServer != nil {
		d.dnsServer.Close()
		d.dnsServer = nil
	}
	d.dnsMu.Unlock()
	d.pool.mu.Lock()
	idle := d.pool.idle
	d.pool.idle = nil
	d.pool.mu.Unlock()
	for _, tap := range idle {
		if _, err := h.DeleteTap(ctx, tap); err != nil {
			d.log.WarnContext(ctx, "deleting pool TAP", "tap", tap, "error", err.Error())
		}
	}
	if _, err := h.DeleteNAT(ctx, st.Bridge); err != nil {
		return st, fmt.Errorf("removing NAT of %s: %w", st.Bridge, err)
	}
	if _, err := h.DeleteBridge(ctx, st.Bridge); err != nil {
		return st, fmt.Errorf("removing bridge %s: %w", st.Bridge, err)
	}
	d.log.InfoContext(ctx, "network removed", "bridge", st.Bridge)
	return st, nil
}
