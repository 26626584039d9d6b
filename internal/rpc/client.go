package rpc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/op"
)

// DefaultMaxResponseBytes bounds what a client reads of one response.
const DefaultMaxResponseBytes = 64 << 20

// Client calls one server's socket. It is safe for concurrent use; each call
// opens its own connection.
type Client struct {
	// SocketPath is the server's unix socket.
	SocketPath string
	// DialTimeout bounds connecting (default 2s).
	DialTimeout time.Duration
}

// NewClient returns a client for the socket at path.
func NewClient(path string) *Client { return &Client{SocketPath: path} }

// UnreachableError means the server's socket did not accept a connection:
// the server is not running, or the socket is stale.
type UnreachableError struct {
	Socket string
	Err    error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot reach %s: %v", e.Socket, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrUnavailable) true for an unreachable server.
func (e *UnreachableError) Is(target error) bool { return target == ErrUnavailable }

// IsUnreachable reports whether err says the server's socket did not answer.
func IsUnreachable(err error) bool {
	var ue *UnreachableError
	return errors.As(err, &ue)
}

// Call sends method with params and decodes the result into result (which
// may be nil). The context's op id, if any, travels in the request. A server
// error comes back as *ErrorResponse; a missing server as *UnreachableError.
// The context's deadline bounds the whole call.
func (c *Client) Call(ctx context.Context, method string, params, result any) error {
	req := Request{Version: Version, Method: method, OpID: op.From(ctx)}
	if params != nil {
		raw, err := json.Marshal(params)
		if err != nil {
			return fmt.Errorf("encoding params of %s: %w", method, err)
		}
		req.Params = raw
	}
	line, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encoding request %s: %w", method, err)
	}
	line = append(line, '\n')
	return c.roundTrip(ctx, method, line, result)
}

// CallRaw sends a pre-encoded request line as is. Tests use it to send what
// a well-behaved client would not.
func (c *Client) CallRaw(ctx context.Context, line []byte) (*Response, error) {
	var resp Response
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := conn.Write(line); err != nil {
		return nil, err
	}
	if err := readResponse(conn, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

func (c *Client) roundTrip(ctx context.Context, method string, line []byte, result any) error {
	conn, err := c.dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := conn.Write(line); err != nil {
		return c.ctxErr(ctx, method, fmt.Errorf("sending %s to %s: %w", method, c.SocketPath, err))
	}
	var resp Response
	if err := readResponse(conn, &resp); err != nil {
		return c.ctxErr(ctx, method, fmt.Errorf("reading reply to %s from %s: %w", method, c.SocketPath, err))
	}
	if resp.Error != nil {
		return resp.Error
	}
	if result != nil && len(resp.Result) > 0 {
		if err := json.Unmarshal(resp.Result, result); err != nil {
			return fmt.Errorf("decoding reply to %s: %w", method, err)
		}
	}
	return nil
}

func (c *Client) ctxErr(ctx context.Context, method string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", method, context.Cause(ctx))
	}
	return err
}

func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	timeout := c.DialTimeout
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "unix", c.SocketPath)
	if err != nil {
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		var errno syscall.Errno
		if errors.As(err, &errno) && errno == syscall.EACCES {
			return nil, fmt.Errorf("connecting to %s: %w: %w", c.SocketPath, err, ErrForbidden)
		}
		return nil, &UnreachableError{Socket: c.SocketPath, Err: err}
	}
	return conn, nil
}

func readResponse(r io.Reader, resp *Response) error {
	br := bufio.NewReader(io.LimitReader(r, DefaultMaxResponseBytes))
	line, err := br.ReadBytes('\n')
	if err != nil && !(errors.Is(err, io.EOF) && len(line) > 0) {
		if errors.Is(err, io.EOF) {
			return errors.New("connection closed without a reply")
		}
		return err
	}
	if err := json.Unmarshal(line, resp); err != nil {
		return fmt.Errorf("malformed reply: %w", err)
	}
	return nil
}

// Call is a one-shot Client{SocketPath: socket}.Call.
func Call(ctx context.Context, socket, method string, params, result any) error {
	return NewClient(socket).Call(ctx, method, params, result)
}
