package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"

	"github.com/banger-dev/banger/internal/rpc"
)

// The ops of docs/agent.md.
const (
	OpHello   = "hello"
	OpExec    = "exec"
	OpStat    = "stat"
	OpPut     = "put"
	OpGet     = "get"
	OpConnect = "connect"
	// OpConnectUDP relays UDP datagrams to a guest port, framed
	// (WriteDatagram): a name of its own, so an older agent refuses it.
	OpConnectUDP = "connect_udp"
	OpSetTime    = "set_time"
	OpShutdown   = "shutdown"
)

// Request is the first message of a stream as it travels: the op and the
// fields of that op (docs/agent.md, "Operations"). The host functions of
// this package build it; the agent reads it with DecodeRequest.
type Request struct {
	Op        string   `json:"op"`
	Argv      []string `json:"argv,omitempty"`       // exec
	Env       []string `json:"env,omitempty"`        // exec
	Dir       string   `json:"dir,omitempty"`        // exec, put
	User      string   `json:"user,omitempty"`       // exec
	Stdin     bool     `json:"stdin,omitempty"`      // exec
	TTY       *TTY     `json:"tty,omitempty"`        // exec
	TimeoutMS int64    `json:"timeout_ms,omitempty"` // exec
	Path      string   `json:"path,omitempty"`       // stat, get
	Name      string   `json:"name,omitempty"`       // put
	Port      int      `json:"port,omitempty"`       // connect
	UnixNano  int64    `json:"unix_nano,omitempty"`  // set_time, identity
	Reboot    bool     `json:"reboot,omitempty"`     // shutdown
	// identity (identity.go)
	Hostname   string `json:"hostname,omitempty"`
	MAC        string `json:"mac,omitempty"`
	Address    string `json:"address,omitempty"`
	Gateway    string `json:"gateway,omitempty"`
	DNS        string `json:"dns,omitempty"`
	MachineID  string `json:"machine_id,omitempty"`
	HostKey    string `json:"host_key,omitempty"`
	HostKeyPub string `json:"host_key_pub,omitempty"`
	Entropy    []byte `json:"entropy,omitempty"` // base64 in JSON
}

// requestFields lists the fields each op accepts besides "op".
var requestFields = map[string][]string{
	OpHello:      nil,
	OpExec:       {"argv", "env", "dir", "user", "stdin", "tty", "timeout_ms"},
	OpStat:       {"path"},
	OpPut:        {"dir", "name"},
	OpGet:        {"path"},
	OpConnect:    {"port"},
	OpConnectUDP: {"port"},
	OpSetTime:    {"unix_nano"},
	OpShutdown:   {"reboot"},
	OpIdentity:   {"hostname", "mac", "address", "gateway", "dns", "machine_id", "host_key", "host_key_pub", "entropy", "unix_nano"},
}

// TTY asks exec for a pseudo-terminal of this size.
type TTY struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
	Term string `json:"term,omitempty"` // TERM; default xterm-256color
}

// WinSize is a terminal size, for a resize.
type WinSize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// Control is a message the host sends while an exec runs: exactly one of a
// resize and a signal.
type Control struct {
	Resize *WinSize `json:"resize,omitempty"`
	Signal int      `json:"signal,omitempty"`
}

// Started is exec's first event: the process runs.
type Started struct {
	PID int `json:"pid"`
}

// ExitStatus is how an exec'd process ended: an exit code, or the signal
// that killed it (TimedOut: SIGKILL after the request's timeout).
type ExitStatus struct {
	Code     int  `json:"code"`
	Signal   int  `json:"signal,omitempty"`
	TimedOut bool `json:"timed_out,omitempty"`
}

// MarshalJSON writes {"code":N} or {"signal":S,"timed_out":B}.
func (e ExitStatus) MarshalJSON() ([]byte, error) {
	if e.Signal != 0 {
		return fmt.Appendf(nil, `{"signal":%d,"timed_out":%t}`, e.Signal, e.TimedOut), nil
	}
	return fmt.Appendf(nil, `{"code":%d}`, e.Code), nil
}

// Event is an exec event, agent to host: Started, then Exit after both
// outputs' EOF.
type Event struct {
	Started *Started    `json:"started,omitempty"`
	Exit    *ExitStatus `json:"exit,omitempty"`
}

// HelloResult is hello's answer.
type HelloResult struct {
	Version  int    `json:"version"`
	Release  string `json:"release"`
	BootID   string `json:"boot_id"`
	UptimeMS int64  `json:"uptime_ms"`
}

// StatResult is stat's answer. Mode holds the permission bits (07777).
type StatResult struct {
	Exists bool   `json:"exists"`
	Dir    bool   `json:"dir"`
	Mode   uint32 `json:"mode"`
	Size   int64  `json:"size"`
}

// PutResult is put's answer: the regular files written and their bytes.
type PutResult struct {
	Files int   `json:"files"`
	Bytes int64 `json:"bytes"`
}

// GetResult is get's first answer: whether the path is a directory and the
// total size of its regular files (what the tar will carry, for progress).
type GetResult struct {
	Dir  bool  `json:"dir"`
	Size int64 `json:"size"`
}

// RemoteError is an error the agent answered with.
type RemoteError struct {
	Code    rpc.Code `json:"code"`
	Message string   `json:"message"`
}

func (e *RemoteError) Error() string { return e.Message }

// Is maps the error's code to banger's rpc sentinels, so that
// errors.Is(err, rpc.ErrNotFound) and rpc.CodeOf work on it.
func (e *RemoteError) Is(target error) bool {
	switch e.Code {
	case rpc.CodeBadRequest:
		return target == rpc.ErrBadRequest
	case rpc.CodeNotFound:
		return target == rpc.ErrNotFound
	case rpc.CodeConflict:
		return target == rpc.ErrConflict
	case rpc.CodeForbidden:
		return target == rpc.ErrForbidden
	}
	return false
}

// ErrorCode is the code the agent answers err with: a *RemoteError's own,
// an rpc sentinel's, not_found for fs.ErrNotExist, forbidden for
// fs.ErrPermission, conflict for fs.ErrExist, otherwise internal.
func ErrorCode(err error) rpc.Code {
	var re *RemoteError
	if errors.As(err, &re) {
		return re.Code
	}
	switch {
	case errors.Is(err, rpc.ErrBadRequest):
		return rpc.CodeBadRequest
	case errors.Is(err, rpc.ErrNotFound), errors.Is(err, fs.ErrNotExist):
		return rpc.CodeNotFound
	case errors.Is(err, rpc.ErrConflict), errors.Is(err, fs.ErrExist):
		return rpc.CodeConflict
	case errors.Is(err, rpc.ErrForbidden), errors.Is(err, fs.ErrPermission):
		return rpc.CodeForbidden
	}
	return rpc.CodeInternal
}

// WriteMsg writes v as one M frame.
func WriteMsg(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return WriteFrame(w, KindMsg, b)
}

// WriteOK writes {"ok":true} merged with the fields of result (a struct or
// nil).
func WriteOK(w io.Writer, result any) error {
	b := []byte("{}")
	if result != nil {
		var err error
		if b, err = json.Marshal(result); err != nil {
			return err
		}
		if len(b) < 2 || b[0] != '{' {
			return fmt.Errorf("result %T is not a JSON object", result)
		}
	}
	msg := []byte(`{"ok":true`)
	if len(b) > 2 {
		msg = append(msg, ',')
	}
	msg = append(msg, b[1:]...)
	return WriteFrame(w, KindMsg, msg)
}

// WriteError writes {"error":{"code":C,"message":M}} for err (ErrorCode).
func WriteError(w io.Writer, err error) error {
	return WriteMsg(w, struct {
		Error RemoteError `json:"error"`
	}{RemoteError{Code: ErrorCode(err), Message: err.Error()}})
}

// badRequest is an error answered with bad_request.
func badRequest(format string, args ...any) error {
	return rpc.Errorf(rpc.ErrBadRequest, format, args...)
}

// DecodeRequest decodes and checks a stream's first message: a known op,
// only that op's fields, and valid values (absolute paths, a single path
// component for put's name, a port in 1..65535, ...). Its errors wrap
// rpc.ErrBadRequest.
func DecodeRequest(payload []byte) (Request, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(payload, &fields); err != nil {
		return Request{}, badRequest("request is not a JSON object: %v", err)
	}
	var op string
	if raw, ok := fields["op"]; !ok || json.Unmarshal(raw, &op) != nil {
		return Request{}, badRequest("request has no op")
	}
	allowed, ok := requestFields[op]
	if !ok {
		return Request{}, badRequest("unknown op %q", op)
	}
	for k := range fields {
		if k != "op" && !slices.Contains(allowed, k) {
			return Request{}, badRequest("op %s has no field %q", op, k)
		}
	}
	var req Request
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return Request{}, badRequest("op %s: %v", op, err)
	}
	req.Op = op
	if err := req.check(); err != nil {
		return Request{}, err
	}
	return req, nil
}

func (r *Request) check() error {
	switch r.Op {
	case OpExec:
		if len(r.Argv) == 0 || r.Argv[0] == "" {
			return badRequest("exec: argv is empty")
		}
		for _, a := range r.Argv {
			if strings.IndexByte(a, 0) >= 0 {
				return badRequest("exec: an argument holds a NUL byte")
			}
		}
		for _, e := range r.Env {
			k, _, ok := strings.Cut(e, "=")
			if !ok || k == "" || strings.IndexByte(e, 0) >= 0 {
				return badRequest("exec: env entry %q is not K=V", e)
			}
		}
		if r.Dir != "" {
			if err := checkAbs("exec: dir", r.Dir); err != nil {
				return err
			}
		}
		if strings.IndexByte(r.User, 0) >= 0 {
			return badRequest("exec: user holds a NUL byte")
		}
		if r.TTY != nil && strings.IndexByte(r.TTY.Term, 0) >= 0 {
			return badRequest("exec: tty term holds a NUL byte")
		}
		if r.TimeoutMS < 0 {
			return badRequest("exec: negative timeout_ms")
		}
	case OpStat:
		return checkAbs("stat: path", r.Path)
	case OpGet:
		if err := checkAbs("get: path", r.Path); err != nil {
			return err
		}
		if path.Clean(r.Path) == "/" {
			return badRequest("get: path / has no name to copy as")
		}
	case OpPut:
		if err := checkAbs("put: dir", r.Dir); err != nil {
			return err
		}
		return CheckName(r.Name)
	case OpConnect, OpConnectUDP:
		if r.Port < 1 || r.Port > 65535 {
			return badRequest("%s: port %d is not in 1..65535", r.Op, r.Port)
		}
	case OpSetTime:
		if r.UnixNano <= 0 {
			return badRequest("set_time: unix_nano must be positive")
		}
	case OpIdentity:
		return r.checkIdentity()
	}
	return nil
}

func checkAbs(what, p string) error {
	if !strings.HasPrefix(p, "/") {
		return badRequest("%s %q is not an absolute path", what, p)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return badRequest("%s holds a NUL byte", what)
	}
	return nil
}

// CheckName checks that name is one path component: what put creates, and
// the top entry of every tar (WriteTar, ExtractTar). Its error wraps
// rpc.ErrBadRequest.
func CheckName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return badRequest("%q is not a file name", name)
	}
	return nil
}

// DecodeControl decodes a message the host sent during an exec: exactly
// one of resize and signal (1..64). Its errors wrap rpc.ErrBadRequest.
func DecodeControl(payload []byte) (Control, error) {
	var c Control
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Control{}, badRequest("exec control message: %v", err)
	}
	if dec.More() {
		return Control{}, badRequest("exec control message: trailing data")
	}
	switch {
	case c.Resize != nil && c.Signal != 0, c.Resize == nil && c.Signal == 0:
		return Control{}, badRequest("exec control message: want exactly one of resize and signal")
	case c.Signal < 0 || c.Signal > 64:
		return Control{}, badRequest("exec control message: no signal %d", c.Signal)
	}
	return c, nil
}

// reply is every message the host reads, decoded leniently.
type reply struct {
	OK      bool         `json:"ok"`
	Error   *RemoteError `json:"error"`
	Started *Started     `json:"started"`
	Exit    *ExitStatus  `json:"exit"`
}

// readReply reads the next frame, which must be an M frame. An error
// answer is returned as *RemoteError. The raw JSON is returned for the
// result's own fields.
func readReply(r io.Reader) (reply, []byte, error) {
	k, payload, err := ReadFrame(r, nil)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return reply{}, nil, fmt.Errorf("reading the agent's answer: %w", err)
	}
	if k != KindMsg {
		return reply{}, nil, fmt.Errorf("the agent sent a %q frame where an answer belongs: %w", k, ErrBadFrame)
	}
	var m reply
	if err := json.Unmarshal(payload, &m); err != nil {
		return reply{}, nil, fmt.Errorf("the agent's answer is not JSON: %w", err)
	}
	if m.Error != nil {
		if m.Error.Code == "" {
			m.Error.Code = rpc.CodeInternal
		}
		return m, payload, m.Error
	}
	return m, payload, nil
}

// readOK reads an answer that ends an operation and decodes its fields
// into result (nil for none).
func readOK(r io.Reader, result any) error {
	m, payload, err := readReply(r)
	if err != nil {
		return err
	}
	if !m.OK {
		return fmt.Errorf("the agent's answer %.200s is neither ok nor an error", payload)
	}
	if result != nil {
		if err := json.Unmarshal(payload, result); err != nil {
			return fmt.Errorf("the agent's answer %.200s: %w", payload, err)
		}
	}
	return nil
}
