package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/vmm"
)

// QMP is small (a greeting, then one JSON object a line each way), so it
// is spoken here rather than through a library: Session adds to it only
// what migrations to a file need, passing a descriptor with getfd.

// Session is one QMP connection, past the greeting and capabilities
// negotiation. Descriptors passed with SendFile belong to it: a command
// that names one (migrate fd:NAME) must run on the same Session.
type Session struct {
	conn *net.UnixConn
	r    *bufio.Reader
}

// Dial connects to the QMP socket and negotiates capabilities; ctx's
// deadline, or 5 s, bounds it.
func Dial(ctx context.Context, socket string) (*Session, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(dctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("QMP %s: %w: %v", socket, vmm.ErrNotRunning, err)
	}
	s := &Session{conn: c.(*net.UnixConn), r: bufio.NewReader(c)}
	if dl, ok := dctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := s.r.ReadBytes('\n'); err != nil { // greeting
		c.Close()
		return nil, fmt.Errorf("QMP greeting: %w", err)
	}
	if _, err := s.roundTrip("qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	return s, nil
}

// Close ends the session; qemu closes the descriptors it still holds.
func (s *Session) Close() error { return s.conn.Close() }

// Run executes one command and returns its "return" value; ctx's deadline,
// or 5 s, bounds it.
func (s *Session) Run(ctx context.Context, command string, args any) (json.RawMessage, error) {
	s.deadline(ctx)
	return s.roundTrip(command, args, nil)
}

// SendFile hands f to qemu under name (getfd), for a later fd:NAME.
func (s *Session) SendFile(ctx context.Context, name string, f *os.File) error {
	s.deadline(ctx)
	_, err := s.roundTrip("getfd", map[string]any{"fdname": name}, f)
	return err
}

func (s *Session) deadline(ctx context.Context) {
	dl := time.Now().Add(5 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	_ = s.conn.SetDeadline(dl)
}

// Execute runs one QMP command on its own connection and returns its
// "return" value: QMP sessions are cheap and this keeps no state in
// bangerd.
func Execute(ctx context.Context, socket, command string, args any) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := Dial(ctx, socket)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return s.Run(ctx, command, args)
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
}

// roundTrip sends command (with f's descriptor attached, when set) and
// reads up to its reply, skipping events.
func (s *Session) roundTrip(command string, args any, f *os.File) (json.RawMessage, error) {
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	b = append(b, '\n')
	if f != nil {
		n, oobn, err := s.conn.WriteMsgUnix(b, syscall.UnixRights(int(f.Fd())), nil)
		if err == nil && (n != len(b) || oobn == 0) {
			err = errors.New("short write")
		}
		if err != nil {
			return nil, fmt.Errorf("QMP %s: %w", command, err)
		}
	} else if _, err := s.conn.Write(b); err != nil {
		return nil, fmt.Errorf("QMP %s: %w", command, err)
	}
	for {
		line, err := s.r.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("QMP %s: %w", command, err)
		}
		var rep qmpReply
		if err := json.Unmarshal(line, &rep); err != nil {
			return nil, fmt.Errorf("QMP %s: bad reply %q", command, line)
		}
		if rep.Event != "" {
			continue
		}
		if rep.Error != nil {
			return nil, fmt.Errorf("QMP %s: %s: %s", command, rep.Error.Class, rep.Error.Desc)
		}
		if rep.Return == nil {
			return nil, errors.New("QMP " + command + ": reply without return")
		}
		return rep.Return, nil
	}
}

// QueryStatus returns the guest's run state ("running", "paused", ...).
func QueryStatus(ctx context.Context, socket string) (string, error) {
	raw, err := Execute(ctx, socket, "query-status", nil)
	if err != nil {
		return "", err
	}
	return decodeStatus(raw)
}

func decodeStatus(raw json.RawMessage) (string, error) {
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return "", err
	}
	return st.Status, nil
}
