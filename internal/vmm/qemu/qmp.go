package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/banger-dev/banger/internal/vmm"
)

// Execute runs one QMP command on the socket and returns its "return"
// value. Each call opens its own connection: QMP sessions are cheap and this
// keeps no state in bangerd.
func Execute(ctx context.Context, socket, command string, args any) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("QMP %s: %w: %v", socket, vmm.ErrNotRunning, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	r := bufio.NewReader(conn)
	if _, err := r.ReadBytes('\n'); err != nil { // greeting
		return nil, fmt.Errorf("QMP greeting: %w", err)
	}
	if _, err := roundTrip(conn, r, "qmp_capabilities", nil); err != nil {
		return nil, err
	}
	return roundTrip(conn, r, command, args)
}

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
}

func roundTrip(conn net.Conn, r *bufio.Reader, command string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("QMP %s: %w", command, err)
	}
	for {
		line, err := r.ReadBytes('\n')
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
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return "", err
	}
	return st.Status, nil
}
