package rpc

import (
	"context"
	"fmt"
	"math"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/op"
)

// Fair use. A peer that Authorize refuses is answered forbidden as soon as
// it is accepted and never counted: no uid without the right to talk to the
// server can take anything from those with it. Serve counts every other
// connection from accept to close, whether or not it has sent its request
// yet, against two budgets:
//
//   - MaxConns for the whole server, of which RootReserve are for uid 0
//     only: other uids together hold at most MaxConns-RootReserve, so root
//     (an administrator's banger doctor, or the helper's own tests) gets
//     through when they have used theirs. Root's own connections do not
//     count against that share.
//   - MaxConnsPerUID for each peer uid (0: none), so one user cannot take
//     the server from the others.
//
// A connection over a budget is answered at once with unavailable ("uid U
// already has N connections open (limit N); retry when its calls finish")
// and closed; it never waits in accept, so a flood from one uid does not
// delay anyone else. Before answering a refusal (forbidden or unavailable),
// refuse gives the request a short window (defaultRefuseWindow) to arrive,
// which a client that writes right after connecting has already used: the
// refusal then carries its op id, and the client reads the answer instead
// of failing to write to a closed socket. At most defaultMaxLingering
// refusals wait so at once; beyond that the answer goes out without
// waiting.
//
// Every refusal is answered, but its "rpc failed" line is logged only for
// the first defaultRefusalLogBurst refusals of a uid in a minute
// (refusalLog); at the end of the minute one line per uid says how many
// more were not logged, so a flood of refused connections cannot fill the
// log.
//
// There is no separate limit on calls in flight: a connection carries one
// call, so a uid's calls in flight are bounded by its connections. A limit
// on one kind of call (one build per image) belongs to its handler.

const (
	// DefaultMaxConns is MaxConns as NewServer sets it.
	DefaultMaxConns = 128
	// DefaultRootReserve is RootReserve as NewServer sets it.
	DefaultRootReserve = 8
	// SharedMaxConnsPerUID is the per-uid budget for a server that several
	// uids share, such as the root helper. NewServer leaves MaxConnsPerUID
	// at 0, which suits bangerd: its socket is its one user's.
	SharedMaxConnsPerUID = 16
)

const (
	// unknownUID is the budget key of peers whose credentials could not be
	// read ((uid_t)-1 is no one's uid). They count as one non-root uid.
	unknownUID uint32 = math.MaxUint32
	// defaultRefuseWindow is how long a refused connection may take to
	// send its request before the refusal goes out with a fresh op id.
	defaultRefuseWindow = 100 * time.Millisecond
	// defaultMaxLingering bounds the refused connections waiting out that
	// window at once.
	defaultMaxLingering = 16
	// refuseReadBytes bounds what refuse reads of a request.
	refuseReadBytes = 64 << 10
	// defaultRefusalLogBurst refusals of one uid are logged per
	// defaultRefusalLogWindow; the rest are counted.
	defaultRefusalLogBurst  = 5
	defaultRefusalLogWindow = time.Minute
	// maxRefusalUIDs bounds the uids counted one by one in a window (a
	// user with subordinate ids has 65536); further uids share one count.
	maxRefusalUIDs = 256
)

// connBudget counts the connections Serve holds open.
type connBudget struct {
	mu        sync.Mutex
	open      int
	perUID    map[uint32]int
	lingering int
}

// limits returns the server's connection limit for root and for other uids.
func (s *Server) limits() (total, nonRoot int) {
	total = max(s.MaxConns, 1)
	reserve := min(max(s.RootReserve, 0), total/2)
	return total, total - reserve
}

// admit counts a new connection from uid against the budgets. It returns
// the function that gives the slot back when the connection closes, or the
// refusal when a budget is spent.
func (s *Server) admit(uid uint32) (release func(), refusal error) {
	total, nonRoot := s.limits()
	b := &s.budget
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.perUID == nil {
		b.perUID = map[uint32]int{}
	}
	if n := b.perUID[uid]; s.MaxConnsPerUID > 0 && n >= s.MaxConnsPerUID {
		return nil, fmt.Errorf("uid %s already has %d connections open (limit %d); retry when its calls finish: %w",
			uidString(uid), n, s.MaxConnsPerUID, ErrUnavailable)
	}
	if b.open >= total {
		return nil, fmt.Errorf("the server has %d connections open (limit %d); retry when calls finish: %w",
			b.open, total, ErrUnavailable)
	}
	if others := b.open - b.perUID[0]; uid != 0 && others >= nonRoot {
		return nil, fmt.Errorf("the server has %d connections open from uids other than root (limit %d; %d more are kept for root); retry when calls finish: %w",
			others, nonRoot, total-nonRoot, ErrUnavailable)
	}
	b.open++
	b.perUID[uid]++
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.open--
		if b.perUID[uid]--; b.perUID[uid] == 0 {
			delete(b.perUID, uid)
		}
	}, nil
}

func uidString(uid uint32) string {
	if uid == unknownUID {
		return "unknown"
	}
	return fmt.Sprint(uid)
}

// refuse answers a connection from uid that may not be served (Authorize
// said no, or a budget is spent) with refusal and closes it, logging the
// one "rpc failed" line unless uid is over its log limit. It does not
// block the accept loop: the request window runs on its own goroutine, or
// is skipped when too many refusals already wait.
func (s *Server) refuse(ctx context.Context, conn net.Conn, uid uint32, refusal error) {
	start := time.Now()
	log := s.logRefusal(uid)
	b := &s.budget
	b.mu.Lock()
	linger := b.lingering < s.lingerLimit()
	if linger {
		b.lingering++
	}
	b.mu.Unlock()
	if !linger {
		// A first write to a fresh socket fits its buffer: this does not
		// block the accept loop.
		s.respond(op.With(ctx, op.New()), conn, "", start, nil, refusal, log, "peer_uid", uidString(uid))
		conn.Close()
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() {
			b.mu.Lock()
			b.lingering--
			b.mu.Unlock()
		}()
		defer conn.Close()
		id, method := op.New(), ""
		_ = conn.SetReadDeadline(time.Now().Add(s.window()))
		if req, _ := readRequest(conn, min(s.maxBytes(), refuseReadBytes)); req != nil {
			method = truncate(req.Method, 64)
			if op.Valid(req.OpID) {
				id = req.OpID
			}
		}
		s.respond(op.With(ctx, id), conn, method, start, nil, refusal, log, "peer_uid", uidString(uid))
	}()
}

// refusalLog counts the refusals of each uid in the current window.
type refusalLog struct {
	mu     sync.Mutex
	timer  *time.Timer // ends the window; nil between windows
	perUID map[uint32]*refusalCount
	others refusalCount // uids beyond maxRefusalUIDs
}

type refusalCount struct{ logged, dropped int }

// logRefusal counts a refusal of uid and reports whether to log it: the
// first few of each uid in a window are logged, the rest only counted.
// The first refusal after a quiet spell opens a window; flushRefusals
// closes it.
func (s *Server) logRefusal(uid uint32) bool {
	r := &s.refusals
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.perUID == nil {
		r.perUID = map[uint32]*refusalCount{}
		r.timer = time.AfterFunc(s.refusalWindow(), s.flushRefusals)
	}
	c := r.perUID[uid]
	if c == nil {
		if len(r.perUID) < maxRefusalUIDs {
			c = &refusalCount{}
			r.perUID[uid] = c
		} else {
			c = &r.others
		}
	}
	if c.logged < s.refusalBurst() {
		c.logged++
		return true
	}
	c.dropped++
	return false
}

// flushRefusals ends the refusal log's window: one line for each uid with
// refusals that were not logged, with their count.
func (s *Server) flushRefusals() {
	r := &s.refusals
	r.mu.Lock()
	perUID, others := r.perUID, r.others
	if r.timer != nil {
		r.timer.Stop()
	}
	r.timer, r.perUID, r.others = nil, nil, refusalCount{}
	r.mu.Unlock()
	uids := make([]uint32, 0, len(perUID))
	for uid, c := range perUID {
		if c.dropped > 0 {
			uids = append(uids, uid)
		}
	}
	slices.Sort(uids)
	msg := s.prefix() + " refusals not logged"
	window := s.refusalWindow().String()
	for _, uid := range uids {
		s.Logger.Warn(msg, "peer_uid", uidString(uid), "not_logged", perUID[uid].dropped, "window", window,
			"logged", perUID[uid].logged)
	}
	if others.dropped > 0 {
		s.Logger.Warn(msg, "peer_uid", fmt.Sprintf("others (beyond %d uids)", maxRefusalUIDs), "not_logged", others.dropped, "window", window,
			"logged", others.logged)
	}
}

func (s *Server) refusalWindow() time.Duration {
	if s.refusalLogWindow > 0 {
		return s.refusalLogWindow
	}
	return defaultRefusalLogWindow
}

func (s *Server) refusalBurst() int {
	if s.refusalLogBurst > 0 {
		return s.refusalLogBurst
	}
	return defaultRefusalLogBurst
}

func (s *Server) window() time.Duration {
	if s.refuseWindow > 0 {
		return s.refuseWindow
	}
	return defaultRefuseWindow
}

func (s *Server) lingerLimit() int {
	if s.maxLingering > 0 {
		return s.maxLingering
	}
	return defaultMaxLingering
}
