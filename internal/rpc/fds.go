package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/op"
)

// File descriptor passing. A handler may attach open files to its reply;
// the server sends them with the response line in one sendmsg (SCM_RIGHTS)
// and closes its copies. A client that expects files calls CallFiles, which
// receives them with the reply. Only successful replies carry files.
//
// The root helper uses this to hand an unprivileged VMM a TAP it could not
// open itself (/dev/net/tun is 0600 root on some hosts).

// MaxFiles bounds the files one reply may carry.
const MaxFiles = 4

type filesKey struct{}

// fileSlot holds the files a handler attached to its reply.
type fileSlot struct {
	mu    sync.Mutex
	files []*os.File
}

// withFileSlot gives ctx a slot for AttachFiles; the server does this for
// every unix-socket connection.
func withFileSlot(ctx context.Context) context.Context {
	return context.WithValue(ctx, filesKey{}, &fileSlot{})
}

// AttachFiles arranges for files to travel with the reply to the call ctx
// serves. The server closes them once sent (or when the call fails). It
// fails when the connection cannot carry files or too many are attached; the
// caller still owns the files then.
func AttachFiles(ctx context.Context, files ...*os.File) error {
	s, ok := ctx.Value(filesKey{}).(*fileSlot)
	if !ok {
		return errors.New("this connection cannot carry file descriptors")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.files)+len(files) > MaxFiles {
		return fmt.Errorf("more than %d files in one reply", MaxFiles)
	}
	s.files = append(s.files, files...)
	return nil
}

// takeFiles empties the slot of ctx.
func takeFiles(ctx context.Context) []*os.File {
	s, ok := ctx.Value(filesKey{}).(*fileSlot)
	if !ok {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.files
	s.files = nil
	return f
}

// writeResponse writes the response line, with the files attached to ctx
// when send is true (a successful reply), and closes those files.
func writeResponse(ctx context.Context, conn net.Conn, out []byte, send bool) error {
	files := takeFiles(ctx)
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	uc, ok := conn.(*net.UnixConn)
	if !send || len(files) == 0 || !ok {
		_, err := conn.Write(out)
		return err
	}
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	n, oobn, err := uc.WriteMsgUnix(out, syscall.UnixRights(fds...), nil)
	if err != nil {
		return err
	}
	if oobn == 0 {
		return errors.New("file descriptors not sent")
	}
	if n < len(out) {
		_, err = conn.Write(out[n:])
	}
	return err
}

// CallFiles is Call for a method whose reply carries files: it returns them
// (the caller closes them). On any error no file is left open.
func (c *Client) CallFiles(ctx context.Context, method string, params, result any) (files []*os.File, err error) {
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
	line = append(line, '\n')

	conn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, fmt.Errorf("%s: not a unix socket", c.SocketPath)
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	defer func() {
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			files = nil
		}
	}()

	if _, err := conn.Write(line); err != nil {
		return nil, c.ctxErr(ctx, method, fmt.Errorf("sending %s to %s: %w", method, c.SocketPath, err))
	}
	var reply []byte
	buf := make([]byte, 64<<10)
	oob := make([]byte, syscall.CmsgSpace(MaxFiles*4))
	for bytes.IndexByte(reply, '\n') < 0 {
		n, oobn, flags, _, rerr := uc.ReadMsgUnix(buf, oob)
		got, perr := parseRights(oob[:oobn])
		files = append(files, got...)
		if perr != nil {
			return files, fmt.Errorf("reading files of %s: %w", method, perr)
		}
		if flags&syscall.MSG_CTRUNC != 0 {
			return files, fmt.Errorf("reply to %s carried more than %d files", method, MaxFiles)
		}
		reply = append(reply, buf[:n]...)
		if len(reply) > DefaultMaxResponseBytes {
			return files, fmt.Errorf("reply to %s larger than %d bytes", method, DefaultMaxResponseBytes)
		}
		eof := errors.Is(rerr, io.EOF) || (rerr == nil && n == 0 && oobn == 0)
		if eof && len(reply) > 0 {
			break
		}
		if eof {
			rerr = errors.New("connection closed without a reply")
		}
		if rerr != nil {
			return files, c.ctxErr(ctx, method, fmt.Errorf("reading reply to %s from %s: %w", method, c.SocketPath, rerr))
		}
	}
	var resp Response
	if err := json.Unmarshal(bytes.TrimSpace(reply), &resp); err != nil {
		return files, fmt.Errorf("reading reply to %s: malformed reply: %w", method, err)
	}
	if resp.Error != nil {
		return files, resp.Error
	}
	if result != nil && len(resp.Result) > 0 {
		if err := json.Unmarshal(resp.Result, result); err != nil {
			return files, fmt.Errorf("decoding reply to %s: %w", method, err)
		}
	}
	return files, nil
}

// parseRights turns SCM_RIGHTS control messages into files.
func parseRights(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := syscall.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "passed-fd"))
		}
	}
	return files, nil
}
