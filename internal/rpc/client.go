package rpc

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
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
	// Dial, when set, makes the connection instead of dialing SocketPath
	// (which then only names the server in messages); tests use it to call
	// over a connection made elsewhere, as another uid say. Its errors are
	// returned as they are.
	Dial func(ctx context.Context) (net.Conn, error)
	// VerifyPeer, when set, is asked about the server's credentials
	// (SO_PEERCRED of the connected socket) before anything is sent. A
	// refusal fails the call with a *PeerError, which is ErrForbidden.
	VerifyPeer func(PeerCred) error
}

// PeerError is a server that VerifyPeer refused, or whose credentials could
// not be read. errors.Is(err, ErrForbidden) is true for it.
type PeerError struct {
	// Socket is the server's socket.
	Socket string
	// Cred is who serves it (zero when it could not be read).
	Cred PeerCred
	// Err is VerifyPeer's refusal, or why the credentials are unknown.
	Err error
}

func (e *PeerError) Error() string {
	return fmt.Sprintf("refusing the server on %s: %v", e.Socket, e.Err)
}

func (e *PeerError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrForbidden) true for a refused server.
func (e *PeerError) Is(target error) bool { return target == ErrForbidden }

// PeerUIDs returns a VerifyPeer that accepts a server run by one of uids
// and refuses any other, naming the uid (and pid) serving the socket and
// the uids expected.
func PeerUIDs(uids ...uint32) func(PeerCred) error {
	allowed := append([]uint32(nil), uids...)
	return func(c PeerCred) error {
		for _, u := range allowed {
			if c.UID == u {
				return nil
			}
		}
		want := make([]string, len(allowed))
		for i, u := range allowed {
			want[i] = fmt.Sprint(u)
		}
		return fmt.Errorf("it is served by uid %d (pid %d), expected uid %s", c.UID, c.PID, strings.Join(want, " or "))
	}
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

// dial connects (with Dial when set) and, when VerifyPeer is set, checks
// who serves the socket before the caller sends anything.
func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	var conn net.Conn
	var err error
	if c.Dial != nil {
		conn, err = c.Dial(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, context.Cause(ctx)
			}
			return nil, err
		}
	} else if conn, err = c.dialSocket(ctx); err != nil {
		return nil, err
	}
	if c.VerifyPeer == nil {
		return conn, nil
	}
	if err := c.verifyPeer(conn); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

func (c *Client) verifyPeer(conn net.Conn) error {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return &PeerError{Socket: c.SocketPath, Err: fmt.Errorf("cannot check who serves it: a %T is not a unix socket", conn)}
	}
	cred, err := peerCred(uc)
	if err != nil {
		return &PeerError{Socket: c.SocketPath, Err: fmt.Errorf("reading its peer credentials (SO_PEERCRED): %w", err)}
	}
	if err := c.VerifyPeer(cred); err != nil {
		return &PeerError{Socket: c.SocketPath, Cred: cred, Err: err}
	}
	return nil
}

func (c *Client) dialSocket(ctx context.Context) (net.Conn, error) {
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
