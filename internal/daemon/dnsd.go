package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/banger-dev/banger/internal/dns"
)

// ensureDNS starts the DNS responder on the bridge address once the bridge
// has it. Port 53 needs root: an unprivileged bangerd gets the bound
// sockets from the root helper (dns.listen). If neither works it runs
// without names and says so in its log and in doctor; VMs still reach each
// other by address.
func (d *Daemon) ensureDNS(ctx context.Context, n netID) {
	d.dnsMu.Lock()
	defer d.dnsMu.Unlock()
	if d.dnsServer != nil {
		return
	}
	gw := n.Gateway()
	addr := net.JoinHostPort(gw.String(), "53")
	s := &dns.Server{
		Domain:    d.cfg.Network.Domain,
		Upstreams: dns.HostUpstreams("/etc/resolv.conf"),
		Logger:    d.log,
		Lookup: func(name string) (netip.Addr, bool) {
			vm, err := d.store.GetVMByName(context.Background(), name)
			if err != nil || vm.Runtime.GuestIP == "" {
				return netip.Addr{}, false
			}
			a, err := netip.ParseAddr(vm.Runtime.GuestIP)
			return a, err == nil
		},
	}
	err := s.Serve(d.runCtx, addr)
	if err != nil && os.Geteuid() != 0 {
		// Port 53 is root's: the helper binds it and passes the sockets.
		err = d.serveDNSThroughHelper(ctx, s, gw.String())
	}
	if err != nil {
		d.dnsErr = err.Error()
		d.log.WarnContext(ctx, "dns responder not started: VMs cannot resolve each other by name", "address", addr, "error", err.Error(), "uid", os.Getuid())
		return
	}
	d.dnsServer, d.dnsErr = s, ""
	d.log.InfoContext(ctx, "dns responder started", "address", addr, "domain", d.cfg.Network.Domain, "upstreams", s.Upstreams)
}

func (d *Daemon) serveDNSThroughHelper(ctx context.Context, s *dns.Server, address string) error {
	hc, err := d.helperClient(ctx)
	if err != nil {
		return err
	}
	uf, tf, err := hc.DNSListen(ctx, address)
	if err != nil {
		return fmt.Errorf("asking the helper for port 53: %w", err)
	}
	defer uf.Close()
	defer tf.Close()
	pc, err := net.FilePacketConn(uf)
	if err != nil {
		return err
	}
	ln, err := net.FileListener(tf)
	if err != nil {
		pc.Close()
		return err
	}
	s.ServeOn(d.runCtx, pc, ln)
	return nil
}
