package rpc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/op"
)

// HandlerFunc serves one method. params is the raw JSON of the request's
// params (nil when absent). The result is marshalled as JSON.
type HandlerFunc func(ctx context.Context, params json.RawMessage) (any, error)

// Authorizer decides whether a peer may talk to the server at all. It sees
// the peer's credentials from SO_PEERCRED, as soon as the connection is
// accepted: a refused peer is answered with CodeForbidden at once, is never
// counted against a connection budget, and its refusal is logged (with the
// request's op id when the request comes within a short window, and at
// most a few lines a minute per uid: limits.go).
type Authorizer func(cred PeerCred) error

// PeerCred is the process on the other end of a unix socket, per the kernel.
type PeerCred struct {
	PID int32
	UID uint32
	GID uint32
}

type peerKey struct{}

// WithPeer returns ctx carrying cred as its peer, as the server does for
// each connection; tests of handlers use it.
func WithPeer(ctx context.Context, cred PeerCred) context.Context {
	return context.WithValue(ctx, peerKey{}, cred)
}

// PeerFrom returns the peer credentials of the connection serving ctx.
func PeerFrom(ctx context.Context) (PeerCred, bool) {
	c, ok := ctx.Value(peerKey{}).(PeerCred)
	return c, ok
}

// Server dispatches requests to handlers. The zero value is not usable; use
// NewServer.
type Server struct {
	// Name prefixes the per-call log message: "<Name> rpc completed" or
	// "<Name> rpc failed". Empty gives "rpc completed".
	Name string
	// Logger receives one line per call plus connection-level problems.
	Logger *slog.Logger
	// MaxRequestBytes bounds one request; larger ones get bad_request.
	MaxRequestBytes int
	// ReadTimeout bounds how long a client may take to send its request.
	ReadTimeout time.Duration
	// WriteTimeout bounds writing the response.
	WriteTimeout time.Duration
	// MaxConns bounds the connections open at once, silent ones (no
	// request yet) included. One over it is answered unavailable at once
	// and closed; the accept loop never waits for a slot. RootReserve of
	// them are for uid 0 only. See limits.go.
	MaxConns int
	// RootReserve is how many of MaxConns only uid 0 may use, so root still
	// gets through when other uids hold the rest. At most MaxConns/2 count.
	RootReserve int
	// MaxConnsPerUID bounds the connections one peer uid holds open at
	// once (0: no per-uid limit). A connection carries one call, so this
	// is also the bound on the uid's calls in flight.
	MaxConnsPerUID int
	// Authorize, when set, is asked about every connection's peer when it
	// is accepted, before the connection budgets.
	Authorize Authorizer
	// CompletedLevel is the level of "rpc completed" lines (failures are
	// always logged at warn or error).
	CompletedLevel slog.Level

	mu       sync.RWMutex
	handlers map[string]HandlerFunc
	wg       sync.WaitGroup
	budget   connBudget
	refusals refusalLog

	// Test hooks. peerCredOf replaces SO_PEERCRED (all test connections
	// share one uid); refuseWindow and maxLingering replace the defaults of
	// refuse, refusalLogWindow and refusalLogBurst those of its log limit;
	// watchObserved sees every check of the disconnect watch.
	peerCredOf       func(net.Conn) (PeerCred, error)
	refuseWindow     time.Duration
	maxLingering     int
	refusalLogWindow time.Duration
	refusalLogBurst  int
	watchObserved    func(revents int16, gone bool)
}

// NewServer returns a server with the package defaults.
func NewServer(name string, logger *slog.Logger) *Server {
	return &Server{
		Name:            name,
		Logger:          logger,
		MaxRequestBytes: DefaultMaxRequestBytes,
		ReadTimeout:     5 * time.Second,
		WriteTimeout:    10 * time.Second,
		MaxConns:        DefaultMaxConns,
		RootReserve:     DefaultRootReserve,
		CompletedLevel:  slog.LevelInfo,
		handlers:        map[string]HandlerFunc{},
	}
}

// Handle registers h for method. Registering a method twice panics.
func (s *Server) Handle(method string, h HandlerFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.handlers[method]; dup {
		panic("rpc: method registered twice: " + method)
	}
	s.handlers[method] = h
}

// Methods lists the registered methods, sorted.
func (s *Server) Methods() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, 0, len(s.handlers))
	for m := range s.handlers {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// Register adds a typed handler: params are decoded into P, strictly (an
// unknown field is a bad_request), and the R result is returned as JSON.
func Register[P, R any](s *Server, method string, fn func(context.Context, P) (R, error)) {
	s.Handle(method, func(ctx context.Context, raw json.RawMessage) (any, error) {
		var p P
		if err := DecodeParams(raw, &p); err != nil {
			return nil, err
		}
		return fn(ctx, p)
	})
}

// DecodeParams decodes raw into v, refusing unknown fields and trailing data.
// An absent params object decodes as the zero value.
func DecodeParams(raw json.RawMessage, v any) error {
	if len(bytes.TrimSpace(raw)) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decoding params: %v: %w", err, ErrBadRequest)
	}
	if dec.More() {
		return fmt.Errorf("decoding params: trailing data: %w", ErrBadRequest)
	}
	return nil
}

// Serve accepts connections on ln until ctx is done or ln fails, serving each
// on its own goroutine within the connection budgets (limits.go). A peer
// Authorize refuses is answered forbidden at once and never counted; one
// over a budget is refused with unavailable at once, so accept never waits.
// Serve waits for in-flight calls before returning.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer s.flushRefusals()
	defer s.wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accepting: %w", err)
		}
		cred, credErr := s.credOf(conn)
		uid := unknownUID
		if credErr == nil {
			uid = cred.UID
		}
		// Who may talk at all is decided before anything is counted: a
		// peer that may not cannot hold a slot of anyone's budget.
		if aerr := s.authorize(cred, credErr); aerr != nil {
			s.refuse(ctx, conn, uid, aerr)
			continue
		}
		release, refusal := s.admit(uid)
		if refusal != nil {
			s.refuse(ctx, conn, uid, refusal)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer release()
			s.serveConn(ctx, conn, cred, credErr == nil)
		}()
	}
}

// authorize is Authorize's answer for a peer (nil without an Authorize),
// always with code forbidden.
func (s *Server) authorize(cred PeerCred, credErr error) error {
	if s.Authorize == nil {
		return nil
	}
	if credErr != nil {
		return fmt.Errorf("peer credentials unavailable (%v): %w", credErr, ErrForbidden)
	}
	err := s.Authorize(cred)
	if err != nil && CodeOf(err) != CodeForbidden {
		hint := HintOf(err)
		err = fmt.Errorf("%v: %w", err, ErrForbidden)
		if hint != "" {
			err = WithHint(err, hint)
		}
	}
	return err
}

// credOf returns the peer of conn: SO_PEERCRED, or the test hook.
func (s *Server) credOf(conn net.Conn) (PeerCred, error) {
	if s.peerCredOf != nil {
		return s.peerCredOf(conn)
	}
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return PeerCred{}, errors.New("not a unix socket")
	}
	return peerCred(uc)
}

func (s *Server) serveConn(ctx context.Context, conn net.Conn, cred PeerCred, haveCred bool) {
	defer conn.Close()
	start := time.Now()

	if haveCred {
		ctx = context.WithValue(ctx, peerKey{}, cred)
	}
	if _, ok := conn.(*net.UnixConn); ok {
		ctx = withFileSlot(ctx)
	}
	ctx = withUpgradeSlot(ctx)

	if s.ReadTimeout > 0 {
		_ = conn.SetReadDeadline(time.Now().Add(s.ReadTimeout))
	}
	req, err := readRequest(conn, s.maxBytes())
	if err != nil {
		// Early paths still get an op id: the request's own when it parsed
		// far enough to carry a valid one, else a new one.
		id := op.New()
		if req != nil && op.Valid(req.OpID) {
			id = req.OpID
		}
		ctx = op.With(ctx, id)
		if isTimeout(err) {
			s.finish(ctx, conn, "", start, nil, fmt.Errorf("no complete request within %s: %w", s.ReadTimeout, ErrBadRequest))
			return
		}
		s.finish(ctx, conn, "", start, nil, err)
		return
	}

	id := req.OpID
	if id == "" {
		id = op.New()
	} else if !op.Valid(id) {
		ctx = op.With(ctx, op.New())
		s.finish(ctx, conn, req.Method, start, nil, fmt.Errorf("malformed op_id %q: %w", truncate(id, 40), ErrBadRequest))
		return
	}
	ctx = op.With(ctx, id)

	if req.Version != Version {
		s.finish(ctx, conn, req.Method, start, nil, &ErrorResponse{
			Code:    CodeBadVersion,
			Message: fmt.Sprintf("protocol version %d not supported; this server speaks %d", req.Version, Version),
			Hint:    "the client and the server are different banger releases; restart the daemon with `banger daemon stop`",
		})
		return
	}
	s.mu.RLock()
	h, ok := s.handlers[req.Method]
	s.mu.RUnlock()
	if !ok {
		s.finish(ctx, conn, req.Method, start, nil, &ErrorResponse{
			Code:    CodeUnknownMethod,
			Message: fmt.Sprintf("unknown method %q", truncate(req.Method, 64)),
		})
		return
	}
	// The deadline on the connection is for reading the request; a handler
	// runs as long as its own context allows, or until its client goes
	// away (watch.go).
	_ = conn.SetReadDeadline(time.Time{})
	callCtx, stopWatch := s.watchPeer(ctx, conn)
	result, herr := s.call(callCtx, h, req.Params)
	if stopWatch() {
		if herr != nil && CodeOf(herr) == CodeInternal {
			herr = fmt.Errorf("%w; the handler returned: %v", ErrClientGone, herr)
		}
		s.finish(ctx, conn, req.Method, start, result, herr, "cancel_cause", ErrClientGone.Error())
		runUpgrade(ctx, conn, false)
		return
	}
	werr := s.finish(ctx, conn, req.Method, start, result, herr)
	runUpgrade(ctx, conn, herr == nil && werr == nil)
}

// call runs h, turning a panic into an internal error so one bad handler
// cannot take the server down.
func (s *Server) call(ctx context.Context, h HandlerFunc, params json.RawMessage) (result any, err error) {
	defer func() {
		if r := recover(); r != nil {
			s.Logger.ErrorContext(ctx, "rpc handler panicked", "panic", fmt.Sprint(r))
			err = fmt.Errorf("internal error: handler panicked: %v", r)
		}
	}()
	return h(ctx, params)
}

// finish writes the response and logs the single per-call line, with attrs
// added to it.
// It returns nil when a successful reply was delivered.
func (s *Server) finish(ctx context.Context, conn net.Conn, method string, start time.Time, result any, err error, attrs ...any) error {
	return s.respond(ctx, conn, method, start, result, err, true, attrs...)
}

// prefix starts the server's log messages: "<Name> rpc", or "rpc".
func (s *Server) prefix() string {
	if s.Name != "" {
		return s.Name + " rpc"
	}
	return "rpc"
}

// respond is finish, logging the per-call line only when log is set (a
// refusal over its uid's log limit is answered without one).
func (s *Server) respond(ctx context.Context, conn net.Conn, method string, start time.Time, result any, err error, log bool, attrs ...any) error {
	id := op.From(ctx)
	var resp Response
	if err == nil {
		raw, merr := json.Marshal(result)
		if merr != nil {
			err = fmt.Errorf("encoding result: %w", merr)
		} else {
			resp.Result = raw
		}
	}
	if err != nil {
		resp.Error = NewErrorResponse(err, id)
	}
	// Log before replying, so a caller that reads the log right after the
	// reply (banger daemon logs --op) finds the line.
	dur := time.Since(start)
	attrs = append([]any{"method", method, "duration_ms", dur.Milliseconds()}, attrs...)
	prefix := s.prefix()
	switch {
	case !log:
	case resp.Error != nil:
		level := slog.LevelWarn
		if resp.Error.Code == CodeInternal {
			level = slog.LevelError
		}
		attrs = append(attrs, "code", string(resp.Error.Code), "error", resp.Error.Message)
		s.Logger.Log(ctx, level, prefix+" failed", attrs...)
	default:
		s.Logger.Log(ctx, s.CompletedLevel, prefix+" completed", attrs...)
	}

	if s.WriteTimeout > 0 {
		_ = conn.SetWriteDeadline(time.Now().Add(s.WriteTimeout))
	}
	out, _ := json.Marshal(resp)
	out = append(out, '\n')
	werr := writeResponse(ctx, conn, out, resp.Error == nil)
	if werr != nil {
		s.Logger.DebugContext(ctx, prefix+" reply not delivered", "method", method, "error", werr.Error())
		return werr
	}
	if resp.Error != nil {
		return resp.Error
	}
	return nil
}

func (s *Server) maxBytes() int {
	if s.MaxRequestBytes > 0 {
		return s.MaxRequestBytes
	}
	return DefaultMaxRequestBytes
}

// readRequest reads one newline-terminated (or EOF-terminated) request of at
// most limit bytes. When it fails after decoding enough to see an op id, it
// returns the partial request along with the error.
func readRequest(r io.Reader, limit int) (*Request, error) {
	br := bufio.NewReaderSize(io.LimitReader(r, int64(limit)+1), 4096)
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > limit {
			return nil, fmt.Errorf("request larger than %d bytes: %w", limit, ErrBadRequest)
		}
		if err == nil {
			break
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) {
			if len(bytes.TrimSpace(line)) == 0 {
				return nil, fmt.Errorf("empty request: %w", ErrBadRequest)
			}
			break
		}
		if isTimeout(err) {
			return nil, err
		}
		return nil, fmt.Errorf("reading request: %v: %w", err, ErrBadRequest)
	}
	return DecodeRequest(line)
}

// DecodeRequest parses one request line. It is what the fuzz test exercises.
func DecodeRequest(line []byte) (*Request, error) {
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		return nil, fmt.Errorf("malformed request: %v: %w", err, ErrBadRequest)
	}
	if req.Method == "" {
		return &req, fmt.Errorf("request has no method: %w", ErrBadRequest)
	}
	return &req, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

func peerCred(uc *net.UnixConn) (PeerCred, error) {
	raw, err := uc.SyscallConn()
	if err != nil {
		return PeerCred{}, err
	}
	var cred *syscall.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return PeerCred{}, err
	}
	if serr != nil {
		return PeerCred{}, serr
	}
	return PeerCred{PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}
