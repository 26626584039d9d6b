package rpc

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// All test connections come from this process's uid. fakeUIDs makes the
// server take a connection's uid from its client's address instead: dialAs
// binds the client to an abstract name that carries the uid (abstract
// sockets leave nothing on the host and vanish with the connection).
var uidInAddr = regexp.MustCompile(`-uid([0-9]+)-`)

func fakeUIDs(s *Server) {
	s.peerCredOf = func(c net.Conn) (PeerCred, error) {
		cred, err := peerCred(c.(*net.UnixConn))
		if a := c.RemoteAddr(); a != nil {
			if m := uidInAddr.FindStringSubmatch(a.String()); m != nil {
				uid, perr := strconv.ParseUint(m[1], 10, 32)
				if perr != nil {
					return PeerCred{}, perr
				}
				cred.UID = uint32(uid)
			}
		}
		return cred, err
	}
}

var (
	dialSeq  atomic.Int64
	dialSalt = func() string {
		var b [4]byte
		_, _ = rand.Read(b[:])
		return hex.EncodeToString(b[:])
	}()
)

// dialAs connects to ts as uid (per fakeUIDs). The connection is closed
// when the test ends.
func dialAs(t *testing.T, ts *testServer, uid uint32) *net.UnixConn {
	t.Helper()
	name := fmt.Sprintf("@banger-rpc-test-%d-%s-%d-uid%d-", os.Getpid(), dialSalt, dialSeq.Add(1), uid)
	d := net.Dialer{LocalAddr: &net.UnixAddr{Name: name, Net: "unix"}}
	c, err := d.Dial("unix", ts.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.UnixConn)
}

// replyTimeout bounds waiting for an answer the server gives "at once". The
// servers under test hold silent connections for a minute (ReadTimeout), so
// an answer within it was not waiting for the request.
const replyTimeout = 15 * time.Second

// readReply reads the one response on c.
func readReply(t *testing.T, c net.Conn) *Response {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(replyTimeout))
	var r Response
	if err := readResponse(c, &r); err != nil {
		t.Fatalf("no reply: %v", err)
	}
	return &r
}

// callOn sends one request on c and reads its reply.
func callOn(t *testing.T, c net.Conn, method, opID string) *Response {
	t.Helper()
	line := fmt.Sprintf(`{"version":1,"method":%q,"op_id":%q}`+"\n", method, opID)
	if _, err := c.Write([]byte(line)); err != nil {
		t.Fatalf("sending %s: %v", method, err)
	}
	return readReply(t, c)
}

// wantRefused checks that r refuses with unavailable and a message
// containing msg, and that the connection is closed after it.
func wantRefused(t *testing.T, c net.Conn, r *Response, msg string) {
	t.Helper()
	if r.Error == nil || r.Error.Code != CodeUnavailable || !strings.Contains(r.Error.Message, msg) {
		t.Fatalf("want unavailable %q, got result %s error %+v", msg, r.Result, r.Error)
	}
	_ = c.SetReadDeadline(time.Now().Add(replyTimeout))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("refused connection not closed: %v", err)
	}
}

// eventually polls cond until it holds or a generous deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// budgetIs reports whether the server holds open connections and lingering
// refusals as given.
func budgetIs(s *Server, open, lingering int) func() bool {
	return func() bool {
		s.budget.mu.Lock()
		defer s.budget.mu.Unlock()
		sum := 0
		for _, n := range s.budget.perUID {
			sum += n
		}
		return s.budget.open == open && sum == open && s.budget.lingering == lingering
	}
}

// logLinesFor returns the log lines carrying op id id.
func logLinesFor(t *testing.T, ts *testServer, id string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range ts.log.lines(t) {
		if l["op_id"] == id {
			out = append(out, l)
		}
	}
	return out
}

func TestConnBudgetPerUID(t *testing.T) {
	ts := startServer(t, func(s *Server) {
		fakeUIDs(s)
		s.MaxConnsPerUID = 3
		s.ReadTimeout = time.Minute
	})
	// Three silent connections (no request, maybe never) hold uid 1001's
	// budget. Serve accepts in order, so they are counted before the next.
	var held []net.Conn
	for range 3 {
		held = append(held, dialAs(t, ts, 1001))
	}

	// The fourth is refused at once, without waiting for a request.
	c := dialAs(t, ts, 1001)
	r := readReply(t, c)
	wantRefused(t, c, r, "uid 1001 already has 3 connections open (limit 3); retry when its calls finish")
	lines := logLinesFor(t, ts, r.Error.OpID)
	if len(lines) != 1 || lines[0]["msg"] != "rpc failed" || lines[0]["code"] != "unavailable" {
		t.Fatalf("want one 'rpc failed' unavailable line for %s, got %v", r.Error.OpID, lines)
	}

	// Another uid is not affected.
	if r := callOn(t, dialAs(t, ts, 1002), "echo", "op-0e1002"); r.Error != nil {
		t.Fatalf("uid 1002 refused while uid 1001 is over budget: %+v", r.Error)
	}

	// A freed slot can be used again.
	held[0].Close()
	eventually(t, "uid 1001's freed slot", func() bool {
		r := callOn(t, dialAs(t, ts, 1001), "echo", "op-0e1001")
		if r.Error != nil && r.Error.Code != CodeUnavailable {
			t.Fatalf("want success or unavailable, got %+v", r.Error)
		}
		return r.Error == nil
	})

	// Every slot comes back once the connections close.
	for _, c := range held {
		c.Close()
	}
	eventually(t, "an empty budget", budgetIs(ts.srv, 0, 0))
}

func TestGlobalLimitAnswersAndKeepsRootReserve(t *testing.T) {
	ts := startServer(t, func(s *Server) {
		fakeUIDs(s)
		s.MaxConns = 4
		s.RootReserve = 1
		s.ReadTimeout = time.Minute
	})
	// Three uids take the three slots open to non-root callers.
	for uid := uint32(2001); uid <= 2003; uid++ {
		dialAs(t, ts, uid)
	}
	eventually(t, "three open connections", budgetIs(ts.srv, 3, 0))

	// A fourth uid is answered at once instead of waiting in accept.
	c := dialAs(t, ts, 2004)
	wantRefused(t, c, readReply(t, c), "the server has 3 connections open from uids other than root (limit 3; 1 more are kept for root)")

	// Root still gets through, on the reserve.
	if r := callOn(t, dialAs(t, ts, 0), "echo", "op-000001"); r.Error != nil {
		t.Fatalf("root refused: %+v", r.Error)
	}
	eventually(t, "root's call to give its slot back", budgetIs(ts.srv, 3, 0))

	// When root holds the reserve too, the server is full for root as well.
	dialAs(t, ts, 0)
	eventually(t, "four open connections", budgetIs(ts.srv, 4, 0))
	c = dialAs(t, ts, 0)
	wantRefused(t, c, readReply(t, c), "the server has 4 connections open (limit 4)")
}

func TestRefusalsWaitBrieflyForTheRequest(t *testing.T) {
	ts := startServer(t, func(s *Server) {
		fakeUIDs(s)
		s.MaxConnsPerUID = 1
		s.ReadTimeout = time.Minute
		s.refuseWindow = time.Minute
		s.maxLingering = 2
	})
	dialAs(t, ts, 3001)
	// Two refused connections wait (here: a minute) for their request.
	a, b := dialAs(t, ts, 3001), dialAs(t, ts, 3001)
	eventually(t, "two lingering refusals", budgetIs(ts.srv, 1, 2))

	// Beyond that, a refusal does not wait at all.
	c := dialAs(t, ts, 3001)
	wantRefused(t, c, readReply(t, c), "uid 3001 already has 1 connections open")

	// A request that arrives within the window gives the refusal its op id
	// and method.
	r := callOn(t, a, "echo", "op-11e9e2")
	wantRefused(t, a, r, "uid 3001 already has 1 connections open")
	if r.Error.OpID != "op-11e9e2" {
		t.Fatalf("refusal op id = %q, want the request's", r.Error.OpID)
	}
	lines := logLinesFor(t, ts, "op-11e9e2")
	if len(lines) != 1 || lines[0]["method"] != "echo" || lines[0]["code"] != "unavailable" {
		t.Fatalf("want one unavailable line for echo, got %v", lines)
	}

	// A client that leaves ends its refusal's wait.
	b.Close()
	eventually(t, "the lingering refusals to end", budgetIs(ts.srv, 1, 0))
}

func TestAdmitLimits(t *testing.T) {
	// RootReserve counts for at most half of MaxConns: here 1 of 2.
	s := &Server{MaxConns: 2, RootReserve: 8}
	var releases []func()
	// admit checks the outcome for uid: admitted when refusal is "", else
	// refused with unavailable and a message containing refusal.
	admit := func(uid uint32, refusal string) {
		t.Helper()
		release, err := s.admit(uid)
		switch {
		case refusal == "" && err != nil:
			t.Fatalf("admit(%d): %v", uid, err)
		case refusal != "" && err == nil:
			t.Fatalf("admit(%d) admitted, want %q", uid, refusal)
		case err != nil && (CodeOf(err) != CodeUnavailable || !strings.Contains(err.Error(), refusal)):
			t.Fatalf("admit(%d): %v (code %s), want %q", uid, err, CodeOf(err), refusal)
		case err == nil:
			releases = append(releases, release)
		}
	}
	admit(1000, "")
	admit(1001, "the server has 1 connections open from uids other than root (limit 1; 1 more are kept for root)")
	admit(unknownUID, "the server has 1 connections open from uids other than root")
	admit(0, "")
	admit(0, "the server has 2 connections open (limit 2)")
	releases[0]() // 1000 leaves; root's connection does not shrink the others' share
	releases = releases[1:]
	admit(1001, "")
	admit(0, "the server has 2 connections open (limit 2)")
	for _, r := range releases {
		r()
	}
	if s.budget.open != 0 || len(s.budget.perUID) != 0 {
		t.Fatalf("budget not empty after release: open %d, %v", s.budget.open, s.budget.perUID)
	}
	s.MaxConnsPerUID = 1
	admit(0, "")
	admit(0, "uid 0 already has 1 connections open (limit 1)")
	admit(unknownUID, "")
	admit(unknownUID, "uid unknown already has 1 connections open (limit 1)")
}

// denyAllBut is an Authorize that admits root and the given uids only.
func denyAllBut(uids ...uint32) Authorizer {
	return func(c PeerCred) error {
		if c.UID == 0 || slices.Contains(uids, c.UID) {
			return nil
		}
		return fmt.Errorf("uid %d may not use this server: %w", c.UID, ErrForbidden)
	}
}

// wantForbidden checks that r refuses with forbidden naming uid, and that
// the connection is closed after it.
func wantForbidden(t *testing.T, c net.Conn, r *Response, uid uint32) {
	t.Helper()
	if r.Error == nil || r.Error.Code != CodeForbidden || !strings.Contains(r.Error.Message, fmt.Sprintf("uid %d may not", uid)) {
		t.Fatalf("uid %d: want forbidden, got result %s error %+v", uid, r.Result, r.Error)
	}
	_ = c.SetReadDeadline(time.Now().Add(replyTimeout))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("uid %d: refused connection not closed: %v", uid, err)
	}
}

// Peers Authorize refuses are answered forbidden as soon as they connect,
// without sending anything, and never take a slot of any budget: many
// uids without the right to talk, silent, cannot keep a uid that has it
// from being served. (They used to be counted until their request came,
// up to ReadTimeout, and filled the budget the others share.)
func TestUnauthorizedPeersNeverCounted(t *testing.T) {
	ts := startServer(t, func(s *Server) {
		fakeUIDs(s)
		s.MaxConns = 4
		s.RootReserve = 1
		s.MaxConnsPerUID = 2
		s.ReadTimeout = time.Minute
		s.refuseWindow = time.Minute
		s.maxLingering = 2
		s.Authorize = denyAllBut(1000)
	})
	var silent []net.Conn
	for uid := uint32(5001); uid <= 5020; uid++ {
		silent = append(silent, dialAs(t, ts, uid))
	}
	// Two refusals wait (here: a minute) for their request; they hold no
	// slot. The others are answered at once.
	eventually(t, "two lingering refusals and nothing counted", budgetIs(ts.srv, 0, 2))
	for i, c := range silent[2:] {
		wantForbidden(t, c, readReply(t, c), uint32(5003+i))
	}
	// The uid with the right is served, up to its own budget, while they
	// linger.
	held := []net.Conn{dialAs(t, ts, 1000), dialAs(t, ts, 1000)}
	eventually(t, "uid 1000's two connections counted", budgetIs(ts.srv, 2, 2))
	c := dialAs(t, ts, 1000)
	wantRefused(t, c, readReply(t, c), "uid 1000 already has 2 connections open (limit 2)")
	held[0].Close()
	eventually(t, "uid 1000's freed slot", budgetIs(ts.srv, 1, 2))
	if r := callOn(t, dialAs(t, ts, 1000), "echo", "op-0c1000"); r.Error != nil {
		t.Fatalf("uid 1000 refused while unauthorised peers linger: %+v", r.Error)
	}
	// A lingering refusal still takes the request that comes, and answers
	// with its op id, logged once.
	r := callOn(t, silent[0], "echo", "op-5001aa")
	wantForbidden(t, silent[0], r, 5001)
	if r.Error.OpID != "op-5001aa" {
		t.Errorf("refusal op id %q, want the request's", r.Error.OpID)
	}
	if lines := logLinesFor(t, ts, "op-5001aa"); len(lines) != 1 || lines[0]["code"] != "forbidden" || lines[0]["method"] != "echo" || lines[0]["peer_uid"] != "5001" {
		t.Errorf("want one forbidden line for echo from uid 5001, got %v", lines)
	}
	silent[1].Close()
	held[1].Close()
	eventually(t, "an empty budget", budgetIs(ts.srv, 0, 0))
}

// refusalLines counts the "rpc failed" lines of peer uid.
func refusalLines(t *testing.T, ts *testServer, uid string) int {
	t.Helper()
	n := 0
	for _, l := range ts.log.lines(t) {
		if l["msg"] == "rpc failed" && l["peer_uid"] == uid {
			n++
		}
	}
	return n
}

// notLogged returns the "rpc refusals not logged" lines of peer uid.
func notLogged(t *testing.T, ts *testServer, uid string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range ts.log.lines(t) {
		if l["msg"] == "rpc refusals not logged" && l["peer_uid"] == uid {
			out = append(out, l)
		}
	}
	return out
}

// Refused connections are answered every time, but logged only for the
// first few of a uid in a window; the window's end logs one line per uid
// with the count of those that were not. Other uids keep their own count.
func TestRefusalLoggingLimitedPerUID(t *testing.T) {
	ts := startServer(t, func(s *Server) {
		fakeUIDs(s)
		s.Authorize = denyAllBut(1000)
		s.refusalLogBurst = 3
		s.refusalLogWindow = time.Hour // ended by hand below
	})
	for i := range 10 {
		c := dialAs(t, ts, 5001)
		wantForbidden(t, c, callOn(t, c, "echo", fmt.Sprintf("op-5001%02d", i)), 5001)
	}
	for i := range 2 {
		c := dialAs(t, ts, 5002)
		wantForbidden(t, c, callOn(t, c, "echo", fmt.Sprintf("op-5002%02d", i)), 5002)
	}
	if n := refusalLines(t, ts, "5001"); n != 3 {
		t.Errorf("uid 5001: %d refusal lines, want the first 3", n)
	}
	if n := refusalLines(t, ts, "5002"); n != 2 {
		t.Errorf("uid 5002: %d refusal lines, want 2", n)
	}
	if l := notLogged(t, ts, "5001"); len(l) != 0 {
		t.Errorf("summary before the window ended: %v", l)
	}
	ts.srv.flushRefusals()
	if l := notLogged(t, ts, "5001"); len(l) != 1 || l[0]["not_logged"] != float64(7) || l[0]["logged"] != float64(3) {
		t.Errorf("uid 5001's summary: %v, want one line with not_logged 7", l)
	}
	if l := notLogged(t, ts, "5002"); len(l) != 0 {
		t.Errorf("uid 5002 had nothing unlogged: %v", l)
	}
	// A new window logs again.
	c := dialAs(t, ts, 5001)
	wantForbidden(t, c, callOn(t, c, "echo", "op-5001ff"), 5001)
	if lines := logLinesFor(t, ts, "op-5001ff"); len(lines) != 1 {
		t.Errorf("first refusal of a new window: %v", lines)
	}
}

// The window ends by itself: the summary comes without another refusal.
func TestRefusalLogWindowEnds(t *testing.T) {
	ts := startServer(t, func(s *Server) {
		fakeUIDs(s)
		s.Authorize = denyAllBut(1000)
		s.refusalLogBurst = 1
		s.refusalLogWindow = 200 * time.Millisecond
	})
	// Refuse until one window has held two refusals (the second one not
	// logged) and its end has said so.
	eventually(t, "a summary line for uid 5001", func() bool {
		for i := range 2 {
			c := dialAs(t, ts, 5001)
			wantForbidden(t, c, callOn(t, c, "echo", fmt.Sprintf("op-5001e%d", i)), 5001)
		}
		time.Sleep(300 * time.Millisecond)
		return len(notLogged(t, ts, "5001")) > 0
	})
}
