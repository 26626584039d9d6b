// Package dns is banger's DNS responder on the bridge address: it answers
// <vm-name>.<domain> with the VM's address (so VMs reach each other by
// name) and forwards every other question to the host's resolvers, so
// guests resolve the rest of the world through the same server.
package dns

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Lookup returns the address of the VM named name (a DNS label), if any.
type Lookup func(name string) (netip.Addr, bool)

// Server answers for one domain on one address, UDP and TCP.
type Server struct {
	Domain    string   // "banger": answers demo.banger.
	Lookup    Lookup   // names inside Domain
	Upstreams []string // host:port of resolvers for the rest; empty: REFUSED
	Logger    *slog.Logger
	TTL       uint32

	mu      sync.Mutex
	servers []*dns.Server
}

// Serve listens on addr (ip:port) for UDP and TCP and answers until ctx is
// done. It returns once both listeners are bound (or failed).
func (s *Server) Serve(ctx context.Context, addr string) error {
	udp, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	tcp, err := net.Listen("tcp", addr)
	if err != nil {
		udp.Close()
		return err
	}
	s.ServeOn(ctx, udp, tcp)
	return nil
}

// ServeOn answers on sockets bound elsewhere (by the root helper, for port
// 53) until ctx is done.
func (s *Server) ServeOn(ctx context.Context, udp net.PacketConn, tcp net.Listener) {
	if s.TTL == 0 {
		s.TTL = 5
	}
	zone := dns.Fqdn(strings.ToLower(s.Domain))
	mux := dns.NewServeMux()
	mux.HandleFunc(zone, s.answerLocal)
	mux.HandleFunc(".", s.forward)
	us := &dns.Server{PacketConn: udp, Handler: mux}
	ts := &dns.Server{Listener: tcp, Handler: mux}
	s.mu.Lock()
	s.servers = append(s.servers, us, ts)
	s.mu.Unlock()
	go func() { _ = us.ActivateAndServe() }()
	go func() { _ = ts.ActivateAndServe() }()
	context.AfterFunc(ctx, func() {
		_ = us.Shutdown()
		_ = ts.Shutdown()
	})
}

// Close stops every listener.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, srv := range s.servers {
		_ = srv.Shutdown()
	}
	s.servers = nil
}

func (s *Server) answerLocal(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	zone := dns.Fqdn(strings.ToLower(s.Domain))
	for _, q := range req.Question {
		name := strings.ToLower(q.Name)
		label := strings.TrimSuffix(strings.TrimSuffix(name, zone), ".")
		if label == "" || strings.Contains(label, ".") {
			m.Rcode = dns.RcodeNameError
			continue
		}
		addr, ok := s.Lookup(label)
		if !ok {
			m.Rcode = dns.RcodeNameError
			continue
		}
		if q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY {
			if addr.Is4() {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: s.TTL},
					A:   net.IP(addr.AsSlice()),
				})
			}
		}
		// Other types of a known name: NOERROR with no answer.
	}
	_ = w.WriteMsg(m)
}

func (s *Server) forward(w dns.ResponseWriter, req *dns.Msg) {
	if len(s.Upstreams) == 0 {
		m := new(dns.Msg)
		m.SetRcode(req, dns.RcodeRefused)
		_ = w.WriteMsg(m)
		return
	}
	network := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		network = "tcp"
	}
	c := &dns.Client{Net: network, Timeout: 3 * time.Second}
	var lastErr error
	for _, up := range s.Upstreams {
		resp, _, err := c.Exchange(req, up)
		if err == nil {
			_ = w.WriteMsg(resp)
			return
		}
		lastErr = err
	}
	if s.Logger != nil {
		s.Logger.Debug("dns forward failed", "question", questionName(req), "error", errString(lastErr))
	}
	m := new(dns.Msg)
	m.SetRcode(req, dns.RcodeServerFailure)
	_ = w.WriteMsg(m)
}

func questionName(m *dns.Msg) string {
	if len(m.Question) == 0 {
		return ""
	}
	return m.Question[0].Name
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// HostUpstreams reads the nameservers of resolv.conf as host:port. A
// loopback one (a stub resolver such as 127.0.0.53) is kept: bangerd
// forwards from the host, where it answers.
func HostUpstreams(resolvConf string) []string {
	cfg, err := dns.ClientConfigFromFile(resolvConf)
	if err != nil {
		return nil
	}
	var out []string
	for _, s := range cfg.Servers {
		out = append(out, net.JoinHostPort(s, cfg.Port))
	}
	return out
}
