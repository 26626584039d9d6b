package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/rpc"
)

// gatewayCIDR is the bridge's address: the subnet's first host, with the
// subnet's prefix length (172.30.77.1/24).
func (d *Daemon) gatewayCIDR() string {
	p := d.cfg.Subnet()
	return netip.PrefixFrom(p.Addr().Next(), p.Bits()).String()
}

// bridgeReady reports, without the helper, whether the bridge exists, is up
// and carries the gateway address: then a VM start needs no network setup.
func (d *Daemon) bridgeReady() bool {
	l, err := netlink.LinkByName(d.cfg.Network.Bridge)
	if err != nil || l.Attrs().Flags&net.FlagUp == 0 {
		return false
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if a.IPNet.String() == d.gatewayCIDR() {
			return true
		}
	}
	return false
}

// ensureNetwork makes the bridge and, when configured, the NAT table exist.
// Each helper call is idempotent; once this daemon has set the network up
// and the bridge is still as it left it, a VM start skips the helper calls.
func (d *Daemon) ensureNetwork(ctx context.Context) (api.NetworkStatus, error) {
	st := d.networkConfig()
	d.netMu.Lock()
	defer d.netMu.Unlock()
	if d.netReady && d.bridgeReady() {
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
	d.ensureDNS(ctx)
	d.refillPool(ctx, st.Bridge)
	d.netReady = true
	return st, nil
}

func (d *Daemon) networkConfig() api.NetworkStatus {
	return api.NetworkStatus{
		Bridge:  d.cfg.Network.Bridge,
		Subnet:  d.cfg.Network.Subnet,
		Gateway: d.gatewayCIDR(),
		Domain:  d.cfg.Network.Domain,
		NAT:     d.cfg.Network.NAT,
	}
}

func (d *Daemon) networkUp(ctx context.Context, _ noParams) (api.NetworkStatus, error) {
	return d.ensureNetwork(ctx)
}

// networkDown removes NAT and the bridge; it refuses while VMs run.
func (d *Daemon) networkDown(ctx context.Context, _ noParams) (api.NetworkStatus, error) {
	st := d.networkConfig()
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return st, err
	}
	var running []string
	for _, vm := range vms {
		if vm.Runtime.State == model.StateRunning {
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
	d.netMu.Lock()
	d.netReady = false
	d.netMu.Unlock()
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
