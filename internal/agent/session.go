package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/hashicorp/yamux"
)

// Yamux settings shared by both ends. StreamCloseTimeout is off so that a
// half-closed stream (a port forward whose guest side finished sending)
// lives as long as the other direction needs; each end closes its streams.
const (
	streamWindow     = 1 << 20
	keepAlive        = 30 * time.Second
	writeTimeout     = 30 * time.Second
	streamOpenExpiry = 60 * time.Second
)

// YamuxConfig is the yamux configuration of one end: the host (client)
// sends keepalives; the agent only answers them. Logs go to logOutput
// (io.Discard for none).
func YamuxConfig(client bool, logOutput io.Writer) *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = client
	c.KeepAliveInterval = keepAlive
	c.ConnectionWriteTimeout = writeTimeout
	c.MaxStreamWindowSize = streamWindow
	c.StreamOpenTimeout = streamOpenExpiry
	c.StreamCloseTimeout = 0
	c.LogOutput = logOutput
	return c
}

// Session is the host's session with one agent: one yamux client over one
// byte stream.
type Session struct {
	mux  *yamux.Session
	info Info
}

// Dial runs the handshake on conn and starts a yamux client on it, with
// keepalives (a silent agent ends the session within about a minute). The
// handshake does not time out by itself: bound it with a deadline on conn
// (cleared once Dial returns) or by closing conn. Dial takes conn: it
// closes it on failure and when the session ends.
func Dial(conn io.ReadWriteCloser) (*Session, error) {
	info, err := ClientHandshake(conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	mux, err := yamux.Client(conn, YamuxConfig(true, io.Discard))
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &Session{mux: mux, info: info}, nil
}

// Info is what the agent announced in the handshake.
func (s *Session) Info() Info { return s.info }

// Open opens a stream for one operation. The stream's Close half-closes it
// (the agent sees EOF on its side); every stream must be closed.
func (s *Session) Open(ctx context.Context) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, context.Cause(ctx)
	}
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := s.mux.OpenStream()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, fmt.Errorf("opening an agent stream: %w", r.err)
		}
		return r.c, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.err == nil {
				r.c.Close()
			}
		}()
		return nil, context.Cause(ctx)
	case <-s.mux.CloseChan():
		return nil, fmt.Errorf("opening an agent stream: %w", yamux.ErrSessionShutdown)
	}
}

// Close ends the session and closes its connection; open streams fail.
func (s *Session) Close() error { return s.mux.Close() }

// Done is closed when the session has ended: closed, the connection lost,
// a protocol error (such as BootLine from a rebooted agent), or keepalives
// unanswered.
func (s *Session) Done() <-chan struct{} { return s.mux.CloseChan() }

// NumStreams is the number of streams open on the session.
func (s *Session) NumStreams() int { return s.mux.NumStreams() }
