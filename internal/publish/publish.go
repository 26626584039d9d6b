// Package publish is a VM's published ports: the --publish specs and the
// host listeners bangerd holds for a running VM. Each TCP connection (or
// UDP flow, one per client address) is forwarded over a stream the caller
// dials, in banger a guest agent stream connected to the guest's port: no
// NAT rule, no root, and a port is reachable only on the host address it
// was published on.
package publish

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/agent"
)

// Port is one published port.
type Port struct {
	HostAddr  string `json:"host_addr"`
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
	Proto     string `json:"proto"`
}

const form = "[HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp], e.g. 8080:80 or 127.0.0.1:5353:53/udp"

// Parse reads "[HOSTADDR:]HOSTPORT:GUESTPORT[/tcp|/udp]" (an IPv6
// HOSTADDR in brackets); HOSTADDR defaults to 127.0.0.1, the protocol to
// tcp.
func Parse(s string) (Port, error) {
	p := Port{HostAddr: "127.0.0.1", Proto: "tcp"}
	rest := s
	if i := strings.LastIndexByte(rest, '/'); i >= 0 {
		p.Proto, rest = rest[i+1:], rest[:i]
		if p.Proto != "tcp" && p.Proto != "udp" {
			return p, fmt.Errorf("protocol %q: want tcp or udp (%s)", p.Proto, form)
		}
	}
	if strings.HasPrefix(rest, "[") {
		end := strings.Index(rest, "]:")
		if end < 0 {
			return p, fmt.Errorf("%q: an IPv6 address goes in brackets: [::1]:8080:80", s)
		}
		p.HostAddr, rest = rest[1:end], rest[end+2:]
	} else if parts := strings.Split(rest, ":"); len(parts) == 3 {
		p.HostAddr, rest = parts[0], parts[1]+":"+parts[2]
	}
	ports := strings.Split(rest, ":")
	if len(ports) != 2 {
		return p, fmt.Errorf("%q: want %s", s, form)
	}
	a, err := netip.ParseAddr(p.HostAddr)
	if err != nil || a.Zone() != "" {
		return p, fmt.Errorf("host address %q is not an IP address (%s)", p.HostAddr, form)
	}
	p.HostAddr = a.String()
	for i, f := range ports {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n > 65535 {
			what := "host port"
			if i == 1 {
				what = "guest port"
			}
			return p, fmt.Errorf("%s %q: want 1..65535 (%s)", what, f, form)
		}
		if i == 0 {
			p.HostPort = n
		} else {
			p.GuestPort = n
		}
	}
	return p, nil
}

// String is p as Parse reads it.
func (p Port) String() string {
	return net.JoinHostPort(p.HostAddr, strconv.Itoa(p.HostPort)) + ":" + strconv.Itoa(p.GuestPort) + "/" + p.Proto
}

// Check refuses two ports on one host port and protocol whose addresses
// overlap (the same, or one a wildcard).
func Check(ports []Port) error {
	for i, a := range ports {
		for _, b := range ports[i+1:] {
			if a.Proto == b.Proto && a.HostPort == b.HostPort && overlap(a.HostAddr, b.HostAddr) {
				return fmt.Errorf("host port %s and %s overlap: publish each host port once", a, b)
			}
		}
	}
	return nil
}

func overlap(a, b string) bool {
	pa, _ := netip.ParseAddr(a)
	pb, _ := netip.ParseAddr(b)
	return a == b || pa.IsUnspecified() || pb.IsUnspecified()
}

// Errors Listen wraps, for the caller to give codes and hints.
var (
	ErrInUse      = errors.New("in use")
	ErrPrivileged = errors.New("privileged port")
	ErrNoAddress  = errors.New("address not on this host")
)

// Dialer opens a stream to the guest's port of p: raw bytes for tcp,
// agent.WriteDatagram frames for udp.
type Dialer func(ctx context.Context, p Port) (io.ReadWriteCloser, error)

// Listener is one published port, bound.
type Listener struct {
	Port Port
	// IdleTimeout ends a UDP flow no datagram crossed for that long
	// (default 60 s).
	IdleTimeout time.Duration
	// Logf, if set, is told about failed forwards.
	Logf func(format string, args ...any)

	ln    net.Listener
	pc    net.PacketConn
	conns atomic.Int64
	once  sync.Once
}

// Listen binds p on the host.
func Listen(p Port) (*Listener, error) {
	addr := net.JoinHostPort(p.HostAddr, strconv.Itoa(p.HostPort))
	l := &Listener{Port: p, IdleTimeout: 60 * time.Second}
	var err error
	if p.Proto == "udp" {
		l.pc, err = net.ListenPacket("udp", addr)
	} else {
		l.ln, err = net.Listen("tcp", addr)
	}
	switch {
	case err == nil:
		return l, nil
	case errors.Is(err, syscall.EADDRINUSE):
		return nil, fmt.Errorf("host port %s/%s is in use (by another process or VM): %w", addr, p.Proto, ErrInUse)
	case errors.Is(err, syscall.EACCES):
		return nil, fmt.Errorf("host port %s/%s: ports below 1024 need root or CAP_NET_BIND_SERVICE (or net.ipv4.ip_unprivileged_port_start): %w", addr, p.Proto, ErrPrivileged)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return nil, fmt.Errorf("host address %s is not on this host: %w", p.HostAddr, ErrNoAddress)
	}
	return nil, fmt.Errorf("publishing %s: %w", p, err)
}

// Addr is the bound address.
func (l *Listener) Addr() net.Addr {
	if l.pc != nil {
		return l.pc.LocalAddr()
	}
	return l.ln.Addr()
}

// Connections counts the connections (UDP: flows) forwarded so far.
func (l *Listener) Connections() int64 { return l.conns.Load() }

// Close stops listening and frees the port; forwards under way go on
// until either end closes.
func (l *Listener) Close() error {
	var err error
	l.once.Do(func() {
		if l.pc != nil {
			err = l.pc.Close()
		} else {
			err = l.ln.Close()
		}
	})
	return err
}

func (l *Listener) logf(format string, args ...any) {
	if l.Logf != nil {
		l.Logf(format, args...)
	}
}

// Serve forwards until ctx ends or Close.
func (l *Listener) Serve(ctx context.Context, dial Dialer) {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	if l.pc != nil {
		l.serveUDP(ctx, dial)
		return
	}
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return
		}
		l.conns.Add(1)
		go l.forward(ctx, c, dial)
	}
}

func (l *Listener) forward(ctx context.Context, c net.Conn, dial Dialer) {
	defer c.Close()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	st, err := dial(dctx, l.Port)
	cancel()
	if err != nil {
		l.logf("%s from %s: %v", l.Port, c.RemoteAddr(), err)
		return
	}
	defer st.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(st, c)
		closeWrite(st)
	}()
	io.Copy(c, st)
	closeWrite(c)
	<-done
}

// closeWrite half-closes w when it can (the other side reads EOF).
func closeWrite(w any) {
	if cw, ok := w.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// maxFlows bounds the UDP flows one port holds at once.
const maxFlows = 256

type flow struct {
	st   io.ReadWriteCloser
	last atomic.Int64 // unix nanoseconds of the last datagram
}

func (l *Listener) serveUDP(ctx context.Context, dial Dialer) {
	var mu sync.Mutex
	flows := map[string]*flow{}
	buf := make([]byte, agent.MaxDatagram)
	for {
		n, from, err := l.pc.ReadFrom(buf)
		if err != nil {
			mu.Lock()
			for _, f := range flows {
				f.st.Close()
			}
			mu.Unlock()
			return
		}
		key := from.String()
		mu.Lock()
		f := flows[key]
		if f == nil {
			if len(flows) >= maxFlows {
				mu.Unlock()
				l.logf("%s: %d UDP flows already; dropped a datagram from %s", l.Port, maxFlows, from)
				continue
			}
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			st, err := dial(dctx, l.Port)
			cancel()
			if err != nil {
				mu.Unlock()
				l.logf("%s from %s: %v", l.Port, from, err)
				continue
			}
			f = &flow{st: st}
			flows[key] = f
			l.conns.Add(1)
			go func() {
				l.replies(f, from)
				mu.Lock()
				if flows[key] == f {
					delete(flows, key)
				}
				mu.Unlock()
			}()
			go l.idle(f)
		}
		mu.Unlock()
		f.last.Store(time.Now().UnixNano())
		if err := agent.WriteDatagram(f.st, buf[:n]); err != nil {
			f.st.Close()
		}
	}
}

// replies sends a flow's answers back to its client until its stream ends.
func (l *Listener) replies(f *flow, to net.Addr) {
	defer f.st.Close()
	buf := make([]byte, agent.MaxDatagram)
	for {
		n, err := agent.ReadDatagram(f.st, buf)
		if err != nil {
			return
		}
		f.last.Store(time.Now().UnixNano())
		if _, err := l.pc.WriteTo(buf[:n], to); err != nil {
			return
		}
	}
}

// idle closes a flow nothing crossed for IdleTimeout.
func (l *Listener) idle(f *flow) {
	t := l.IdleTimeout
	if t <= 0 {
		t = 60 * time.Second
	}
	for {
		time.Sleep(t / 4)
		if time.Since(time.Unix(0, f.last.Load())) > t {
			f.st.Close()
			return
		}
	}
}
