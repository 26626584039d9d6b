package dns

import (
	"context"
	"net"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

func freeAddr(t *testing.T) string {
	l, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := l.LocalAddr().String()
	l.Close()
	return a
}

func TestAnswersVMNamesAndForwards(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// A fake upstream on loopback answers everything with 192.0.2.1.
	upAddr := freeAddr(t)
	up := &dns.Server{Addr: upAddr, Net: "udp", Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: net.IPv4(192, 0, 2, 1)})
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	up.NotifyStartedFunc = func() { close(started) }
	go up.ListenAndServe()
	<-started
	defer up.Shutdown()

	vms := map[string]netip.Addr{"web": netip.MustParseAddr("10.0.0.5")}
	s := &Server{Domain: "banger", Upstreams: []string{upAddr}, Lookup: func(n string) (netip.Addr, bool) {
		a, ok := vms[n]
		return a, ok
	}}
	addr := freeAddr(t)
	if err := s.Serve(ctx, addr); err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	ask := func(name, network string) *dns.Msg { return askAt(t, addr, name, network) }
	for _, network := range []string{"udp", "tcp"} {
		r := ask("web.banger.", network)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "10.0.0.5" || !r.Authoritative {
			t.Fatalf("web.banger over %s: %v", network, r)
		}
	}
	if r := ask("WEB.Banger.", "udp"); len(r.Answer) != 1 {
		t.Fatalf("case-insensitive lookup failed: %v", r)
	}
	if r := ask("nope.banger.", "udp"); r.Rcode != dns.RcodeNameError {
		t.Fatalf("unknown VM: rcode %d", r.Rcode)
	}
	if r := ask("a.web.banger.", "udp"); r.Rcode != dns.RcodeNameError {
		t.Fatalf("sub-name: rcode %d", r.Rcode)
	}
	if r := ask("example.org.", "udp"); len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "192.0.2.1" {
		t.Fatalf("forwarded answer: %v", r)
	}

	// Without upstreams, names outside the domain are refused.
	bare := &Server{Domain: "banger", Lookup: s.Lookup}
	bareAddr := freeAddr(t)
	if err := bare.Serve(ctx, bareAddr); err != nil {
		t.Fatal(err)
	}
	defer bare.Close()
	if r := askAt(t, bareAddr, "example.org.", "udp"); r.Rcode != dns.RcodeRefused {
		t.Fatalf("no upstream: rcode %d", r.Rcode)
	}
}

func askAt(t *testing.T, addr, name, network string) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network}
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s over %s: %v", name, network, err)
	}
	return r
}
