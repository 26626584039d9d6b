package rpc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/op"
)

// Streams. A call may turn its connection into a raw byte stream once it
// has answered: the handler calls Upgrade with a function that takes the
// connection over after the reply line has been written, and the client
// calls CallStream, which returns the connection after the reply. bangerd
// uses this to splice a CLI's connection onto a stream to a VM's agent
// (vm exec, vm cp, vm port-forward), so the CLI speaks the agent's frames
// end to end while the call's op id, checks and log line stay the
// daemon's. The client sends nothing after its request until it has the
// reply, so no byte of the stream is read by the request parser.

type upgradeKey struct{}

type upgradeSlot struct {
	mu sync.Mutex
	fn func(net.Conn)
}

func withUpgradeSlot(ctx context.Context) context.Context {
	return context.WithValue(ctx, upgradeKey{}, &upgradeSlot{})
}

// Upgrade arranges for fn to take over the connection of the call ctx
// serves once its successful reply is written; the server closes the
// connection when fn returns. When the reply is not a success (the handler
// failed, or the client went away) fn is called with nil, so it can release
// what it holds.
func Upgrade(ctx context.Context, fn func(conn net.Conn)) error {
	s, ok := ctx.Value(upgradeKey{}).(*upgradeSlot)
	if !ok {
		return errors.New("this connection cannot be upgraded to a stream")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fn != nil {
		return errors.New("the call already upgrades its connection")
	}
	s.fn = fn
	return nil
}

// runUpgrade runs the upgrade function of ctx, if any: on conn when ok,
// with nil otherwise.
func runUpgrade(ctx context.Context, conn net.Conn, ok bool) {
	s, has := ctx.Value(upgradeKey{}).(*upgradeSlot)
	if !has {
		return
	}
	s.mu.Lock()
	fn := s.fn
	s.fn = nil
	s.mu.Unlock()
	if fn == nil {
		return
	}
	if !ok {
		fn(nil)
		return
	}
	_ = conn.SetDeadline(time.Time{})
	fn(conn)
}

// CallStream is Call for a method that upgrades its connection: after a
// successful reply (decoded into result) it returns the connection, which
// now carries the method's stream; the caller closes it. On an error the
// connection is closed.
func (c *Client) CallStream(ctx context.Context, method string, params, result any) (net.Conn, error) {
	req := Request{Version: Version, Method: method, OpID: op.From(ctx)}
	if params != nil {
		raw, err := json.Marshal(params)
		if err != nil {
			return nil, fmt.Errorf("encoding params of %s: %w", method, err)
		}
		req.Params = raw
	}
	line, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encoding request %s: %w", method, err)
	}
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (net.Conn, error) {
		stop()
		conn.Close()
		return nil, err
	}
	if _, err := conn.Write(append(line, '\n')); err != nil {
		return fail(c.ctxErr(ctx, method, fmt.Errorf("sending %s to %s: %w", method, c.SocketPath, err)))
	}
	br := bufio.NewReader(conn)
	reply, err := br.ReadBytes('\n')
	if err != nil {
		return fail(c.ctxErr(ctx, method, fmt.Errorf("reading reply to %s from %s: %w", method, c.SocketPath, err)))
	}
	var resp Response
	if err := json.Unmarshal(reply, &resp); err != nil {
		return fail(fmt.Errorf("reading reply to %s: malformed reply: %w", method, err))
	}
	if resp.Error != nil {
		return fail(resp.Error)
	}
	if result != nil && len(resp.Result) > 0 {
		if err := json.Unmarshal(resp.Result, result); err != nil {
			return fail(fmt.Errorf("decoding reply to %s: %w", method, err))
		}
	}
	if !stop() {
		// The context ended while the reply arrived: the deadline is set.
		conn.Close()
		return nil, c.ctxErr(ctx, method, context.Cause(ctx))
	}
	return &bufferedConn{Conn: conn, r: br}, nil
}

// bufferedConn reads what the reply's reader already took from the
// connection before the connection itself.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// CloseWrite half-closes the connection (unix sockets), so the other end
// reads EOF while this end can still read.
func (c *bufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("the connection cannot be half-closed")
}
