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
			return p, fmt.Errorf("%q: an IPv6 HOSTADDR goes in brackets, [::1]:8080:80 (%s)", s, form)
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
		if err != nil || strings.Trim(f, "0123456789") != "" || n < 1 || n > 65535 {
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
	ErrInUse      = errors.New("host port in use")
	ErrPrivileged = errors.New("privileged host port")
	ErrNoAddress  = errors.New("host address not on this host")
)

// listenError is Listen's classified failure: its own message, wrapping
// the sentinel and the system's error.
type listenError struct {
	msg       string
	kind, err error
}

func (e *listenError) Error() string   { return e.msg }
func (e *listenError) Unwrap() []error { return []error{e.kind, e.err} }

// Dialer opens a stream to the guest's port of p: raw bytes for tcp,
// agent.WriteDatagram frames for udp. A stream without CloseWrite must
// take Close as a half-close, as a yamux stream does: Serve closes it
// when the client is done sending and still reads the guest's answer.
type Dialer func(ctx context.Context, p Port) (io.ReadWriteCloser, error)

// Defaults of a Listener's fields.
const (
	DefaultIdleTimeout = 60 * time.Second
	DefaultMaxFlows    = 256
	dialTimeout        = 10 * time.Second
)

// Listener is one published port, bound.
type Listener struct {
	Port Port
	// IdleTimeout ends a UDP flow no datagram crossed for that long
	// (default DefaultIdleTimeout).
	IdleTimeout time.Duration
	// MaxFlows bounds the UDP flows (client addresses) served at once; a
	// new client's datagrams are dropped beyond it (default
	// DefaultMaxFlows).
	MaxFlows int
	// Logf, if set, is told about failed forwards.
	Logf func(format string, args ...any)

	ln     net.Listener
	pc     net.PacketConn
	conns  atomic.Int64 // forwards started
	active atomic.Int64 // forwards under way
	once   sync.Once
}

// Listen binds p on the host. Its errors for a port in use, a privileged
// port and an address the host does not have say what to do and wrap
// ErrInUse, ErrPrivileged and ErrNoAddress.
func Listen(p Port) (*Listener, error) {
	addr := net.JoinHostPort(p.HostAddr, strconv.Itoa(p.HostPort))
	l := &Listener{Port: p, IdleTimeout: DefaultIdleTimeout, MaxFlows: DefaultMaxFlows}
	var err error
	if p.Proto == "udp" {
		l.pc, err = net.ListenPacket("udp", addr)
	} else {
		l.ln, err = net.Listen("tcp", addr)
	}
	fail := func(kind error, format string, args ...any) error {
		return &listenError{msg: fmt.Sprintf(format, args...), kind: kind, err: err}
	}
	switch {
	case err == nil:
		return l, nil
	case errors.Is(err, syscall.EADDRINUSE):
		return nil, fail(ErrInUse, "host port %s/%s is in use (by another process or VM); choose another HOSTPORT", addr, p.Proto)
	case errors.Is(err, syscall.EACCES):
		return nil, fail(ErrPrivileged, "host port %s/%s: ports below 1024 need root or CAP_NET_BIND_SERVICE (or a lower net.ipv4.ip_unprivileged_port_start); choose a HOSTPORT of 1024 or more", addr, p.Proto)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return nil, fail(ErrNoAddress, "host address %s is not on this host; use 127.0.0.1 or one of this host's addresses", p.HostAddr)
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

// Active counts the connections (UDP: flows) under way.
func (l *Listener) Active() int64 { return l.active.Load() }

// Close stops listening and frees the port. TCP connections under way go
// on until either end closes or Serve's ctx ends; UDP flows end (their
// answers have no socket left).
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

// Serve forwards until ctx ends or Close. Each TCP connection, or UDP
// client address, gets a stream of its own from dial. When ctx ends, the
// forwards under way end too.
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
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE, ECONNABORTED and the like: the port stays served.
			l.logf("%s: accept: %v", l.Port, err)
			sleepCtx(ctx, 100*time.Millisecond)
			continue
		}
		l.conns.Add(1)
		l.active.Add(1)
		go func() {
			defer l.active.Add(-1)
			l.forward(ctx, c, dial)
		}()
	}
}

// forward splices c and a stream to the guest, half-closes passed on.
func (l *Listener) forward(ctx context.Context, c net.Conn, dial Dialer) {
	defer c.Close()
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	st, err := dial(dctx, l.Port)
	cancel()
	if err != nil {
		l.logf("%s from %s: %v", l.Port, c.RemoteAddr(), err)
		return
	}
	defer abort(st)
	stop := context.AfterFunc(ctx, func() {
		abort(st)
		c.Close()
	})
	defer stop()
	up := make(chan struct{})
	go func() {
		defer close(up)
		if _, err := io.Copy(st, c); err != nil {
			abort(st) // the client went away: so does the guest's side
			return
		}
		halfClose(st)
	}()
	if _, err := io.Copy(c, st); err != nil {
		c.Close() // the guest's side broke: so does the client's
	} else {
		halfClose(c)
	}
	<-up
}

// halfClose ends w's sending side: CloseWrite if it has one, else Close
// (a yamux stream's Close is a half-close).
func halfClose(w io.Closer) {
	if cw, ok := w.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	w.Close()
}

// abort ends a stream both ways: Close (a yamux stream tells the guest),
// then a deadline in the past for its pending reads and writes.
func abort(st io.Closer) {
	st.Close()
	if d, ok := st.(interface{ SetDeadline(time.Time) error }); ok {
		d.SetDeadline(time.Unix(1, 0))
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// flow is one UDP client's datagrams on their way to its stream.
type flow struct {
	in   chan []byte
	last atomic.Int64 // unix nanoseconds of the last datagram either way
}

func (f *flow) touch() { f.last.Store(time.Now().UnixNano()) }

// serveUDP reads the port's datagrams and hands each to its client's flow
// (made at its first datagram), until the socket closes; then the flows
// end.
func (l *Listener) serveUDP(ctx context.Context, dial Dialer) {
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	limit := l.MaxFlows
	if limit <= 0 {
		limit = DefaultMaxFlows
	}
	var mu sync.Mutex
	flows := map[string]*flow{}
	buf := make([]byte, agent.MaxDatagram)
	for {
		n, from, err := l.pc.ReadFrom(buf)
		if err != nil {
			if fctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			l.logf("%s: read: %v", l.Port, err)
			continue
		}
		key := from.String()
		mu.Lock()
		f := flows[key]
		if f == nil {
			if len(flows) >= limit {
				mu.Unlock()
				l.logf("%s: %d UDP flows already; dropped a datagram from %s", l.Port, limit, from)
				continue
			}
			f = &flow{in: make(chan []byte, 64)}
			f.touch()
			flows[key] = f
			l.conns.Add(1)
			l.active.Add(1)
			go func() {
				l.runFlow(fctx, dial, f, from)
				mu.Lock()
				delete(flows, key)
				mu.Unlock()
				l.active.Add(-1)
			}()
		}
		// Under mu: a flow gone from the map gets no more datagrams. A
		// full queue drops the datagram, as a full socket would.
		select {
		case f.in <- append([]byte(nil), buf[:n]...):
		default:
		}
		mu.Unlock()
	}
}

// runFlow dials f's stream and writes f's datagrams to it while replies
// sends its answers to the client, until the stream ends, the flow is
// idle for IdleTimeout, or ctx ends.
func (l *Listener) runFlow(ctx context.Context, dial Dialer, f *flow, client net.Addr) {
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	st, err := dial(dctx, l.Port)
	cancel()
	if err != nil {
		l.logf("%s from %s: %v", l.Port, client, err)
		return
	}
	defer abort(st)
	answered := make(chan struct{})
	go func() {
		defer close(answered)
		l.replies(st, f, client)
	}()
	stop := context.AfterFunc(ctx, func() { abort(st) })
	defer stop()
	idle := l.IdleTimeout
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	t := time.NewTimer(idle)
	defer t.Stop()
	for {
		select {
		case b := <-f.in:
			f.touch()
			if agent.WriteDatagram(st, b) != nil {
				return
			}
		case <-t.C:
			quiet := time.Since(time.Unix(0, f.last.Load()))
			if quiet >= idle {
				return
			}
			t.Reset(idle - quiet)
		case <-answered:
			return
		case <-ctx.Done():
			return
		}
	}
}

// replies sends a flow's answers back to its client until its stream
// ends.
func (l *Listener) replies(st io.Reader, f *flow, client net.Addr) {
	buf := make([]byte, agent.MaxDatagram)
	for {
		n, err := agent.ReadDatagram(st, buf)
		if err != nil {
			return
		}
		f.touch()
		if _, err := l.pc.WriteTo(buf[:n], client); err != nil {
			return
		}
	}
}
