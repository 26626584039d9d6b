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
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/op"
)

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

type testServer struct {
	srv    *Server
	socket string
	log    *syncBuffer
	client *Client
}

// startServer serves a few test methods on a temp socket.
func startServer(t testing.TB, tune func(*Server)) *testServer {
	t.Helper()
	logBuf := &syncBuffer{}
	logger := logging.New(logBuf, slog.LevelDebug, "test")
	srv := NewServer("", logger)
	srv.ReadTimeout = 500 * time.Millisecond
	Register(srv, "echo", func(ctx context.Context, p struct{ Text string }) (map[string]string, error) {
		return map[string]string{"text": p.Text, "op_id": op.From(ctx)}, nil
	})
	Register(srv, "whoami", func(ctx context.Context, p struct{ N int }) (string, error) {
		logger.InfoContext(ctx, "handling", "n", p.N)
		time.Sleep(time.Millisecond)
		logger.DebugContext(ctx, "handled", "n", p.N)
		return op.From(ctx), nil
	})
	Register(srv, "missing", func(ctx context.Context, p struct{ Name string }) (any, error) {
		return nil, WithHint(Errorf(ErrNotFound, "vm %q", p.Name), "list VMs with: banger vm list")
	})
	Register(srv, "boom", func(ctx context.Context, _ struct{}) (any, error) {
		panic("kaboom")
	})
	if tune != nil {
		tune(srv)
	}
	socket := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ctx, ln)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return &testServer{srv: srv, socket: socket, log: logBuf, client: NewClient(socket)}
}

func raw(t *testing.T, ts *testServer, line string) *Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := ts.client.CallRaw(ctx, []byte(line))
	if err != nil {
		t.Fatalf("raw call %q: %v", line, err)
	}
	return resp
}

func TestEarlyPathsAreStampedWithOpID(t *testing.T) {
	ts := startServer(t, nil)
	cases := []struct {
		name, line string
		code       Code
		wantOpID   string // "" means: any fresh, valid op id
	}{
		{"unknown method", `{"version":1,"method":"nope"}` + "\n", CodeUnknownMethod, ""},
		{"unknown method with op id", `{"version":1,"method":"nope","op_id":"op-abc123"}` + "\n", CodeUnknownMethod, "op-abc123"},
		{"bad version", `{"version":99,"method":"echo"}` + "\n", CodeBadVersion, ""},
		{"missing version", `{"method":"echo","op_id":"op-fedcba"}` + "\n", CodeBadVersion, "op-fedcba"},
		{"malformed json", "{not json\n", CodeBadRequest, ""},
		{"no method", `{"version":1,"op_id":"op-111111"}` + "\n", CodeBadRequest, "op-111111"},
		{"bad params", `{"version":1,"method":"echo","params":{"Bogus":1}}` + "\n", CodeBadRequest, ""},
		{"bad op id", `{"version":1,"method":"echo","op_id":"op-\n; rm -rf"}` + "\n", CodeBadRequest, ""},
		{"handler error", `{"version":1,"method":"missing","params":{"Name":"x"},"op_id":"op-222222"}` + "\n", CodeNotFound, "op-222222"},
		{"handler panic", `{"version":1,"method":"boom"}` + "\n", CodeInternal, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp := raw(t, ts, tc.line)
			if resp.Error == nil {
				t.Fatalf("want error %s, got result %s", tc.code, resp.Result)
			}
			if resp.Error.Code != tc.code {
				t.Fatalf("code = %s, want %s (message %q)", resp.Error.Code, tc.code, resp.Error.Message)
			}
			if !op.Valid(resp.Error.OpID) {
				t.Fatalf("op id %q not stamped or invalid", resp.Error.OpID)
			}
			if tc.wantOpID != "" && resp.Error.OpID != tc.wantOpID {
				t.Fatalf("op id = %q, want the request's %q", resp.Error.OpID, tc.wantOpID)
			}
			// The failure line in the log carries the same op id.
			found := false
			for _, l := range ts.log.lines(t) {
				if l["msg"] == "rpc failed" && l["op_id"] == resp.Error.OpID && l["code"] == string(tc.code) {
					found = true
				}
			}
			if !found {
				t.Fatalf("no 'rpc failed' log line with op_id %s and code %s", resp.Error.OpID, tc.code)
			}
		})
	}
}

func TestCallReturnsTypedErrorWithOpIDAndHint(t *testing.T) {
	ts := startServer(t, nil)
	ctx := op.With(context.Background(), "op-c0ffee")
	err := ts.client.Call(ctx, "missing", map[string]string{"Name": "web"}, nil)
	var er *ErrorResponse
	if !errors.As(err, &er) {
		t.Fatalf("error %T %v is not *rpc.ErrorResponse", err, err)
	}
	if er.Code != CodeNotFound || er.OpID != "op-c0ffee" {
		t.Fatalf("got code %s op %s", er.Code, er.OpID)
	}
	if !errors.Is(err, ErrNotFound) {
		t.Fatal("errors.Is(err, ErrNotFound) = false")
	}
	if got, want := err.Error(), `vm "web": not found (op-c0ffee)`; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
	if er.Hint != "list VMs with: banger vm list" {
		t.Fatalf("hint = %q", er.Hint)
	}
}

func TestContextOpIDIsUsedByServer(t *testing.T) {
	ts := startServer(t, nil)
	ctx := op.With(context.Background(), "op-5e1f00")
	var res map[string]string
	if err := ts.client.Call(ctx, "echo", map[string]string{"Text": "hi"}, &res); err != nil {
		t.Fatal(err)
	}
	if res["op_id"] != "op-5e1f00" || res["text"] != "hi" {
		t.Fatalf("server saw %v, want op-5e1f00", res)
	}
	// Without one, the server mints a fresh id.
	if err := ts.client.Call(context.Background(), "echo", nil, &res); err != nil {
		t.Fatal(err)
	}
	if !op.Valid(res["op_id"]) || res["op_id"] == "op-5e1f00" {
		t.Fatalf("minted op id = %q", res["op_id"])
	}
}

func TestConcurrentCallsKeepTheirOpIDsApart(t *testing.T) {
	ts := startServer(t, nil)
	const n = 50
	ids := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := ts.client.Call(context.Background(), "whoami", map[string]int{"N": i}, &ids[i]); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for i, id := range ids {
		if !op.Valid(id) {
			t.Fatalf("call %d: op id %q", i, id)
		}
		if j, dup := seen[id]; dup {
			t.Fatalf("calls %d and %d share op id %s", i, j, id)
		}
		seen[id] = i
	}
	perCall := map[int]int{}
	for _, l := range ts.log.lines(t) {
		id, _ := l["op_id"].(string)
		if id == "" {
			t.Fatalf("log line without op_id: %v", l)
		}
		if nf, ok := l["n"].(float64); ok {
			if ids[int(nf)] != id {
				t.Fatalf("log line of call %d carries %s, want %s", int(nf), id, ids[int(nf)])
			}
			perCall[int(nf)]++
		}
	}
	for i := 0; i < n; i++ {
		if perCall[i] != 2 {
			t.Fatalf("call %d has %d handler log lines, want 2", i, perCall[i])
		}
	}
}

func TestMisbehavingClientsDoNotStopOthers(t *testing.T) {
	// The silent clients hold their connections for the whole read
	// timeout; a good call must be served long before it ends.
	ts := startServer(t, func(s *Server) { s.MaxRequestBytes = 4096; s.ReadTimeout = 3 * time.Second })

	// A silent client: connects and sends nothing.
	silent, err := net.Dial("unix", ts.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	// A client that sends a partial line and stalls.
	stall, err := net.Dial("unix", ts.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer stall.Close()
	if _, err := stall.Write([]byte(`{"version":1,`)); err != nil {
		t.Fatal(err)
	}

	// Meanwhile a good call succeeds at once.
	start := time.Now()
	var res map[string]string
	if err := ts.client.Call(context.Background(), "echo", map[string]string{"Text": "ok"}, &res); err != nil {
		t.Fatalf("good call failed while others stall: %v", err)
	}
	if time.Since(start) > 2*time.Second {
		t.Fatalf("good call waited %s behind silent clients (read timeout 3s)", time.Since(start))
	}

	// Oversized: a valid-looking request bigger than the limit.
	big := `{"version":1,"method":"echo","params":{"Text":"` + strings.Repeat("a", 8192) + `"}}` + "\n"
	resp := raw(t, ts, big)
	if resp.Error == nil || resp.Error.Code != CodeBadRequest || !strings.Contains(resp.Error.Message, "larger than 4096") {
		t.Fatalf("oversized: got %+v", resp.Error)
	}
	// Garbage bytes.
	resp = raw(t, ts, "\x00\xff\xfe garbage\n")
	if resp.Error == nil || resp.Error.Code != CodeBadRequest || !op.Valid(resp.Error.OpID) {
		t.Fatalf("garbage: got %+v", resp.Error)
	}

	// The silent clients get a timeout answer, then are dropped.
	for name, c := range map[string]net.Conn{"silent": silent, "stalled": stall} {
		_ = c.SetReadDeadline(time.Now().Add(6 * time.Second))
		var r Response
		if err := readResponse(c, &r); err != nil {
			t.Fatalf("%s client: want a timeout reply, got %v", name, err)
		}
		if r.Error == nil || r.Error.Code != CodeBadRequest || !strings.Contains(r.Error.Message, "no complete request") {
			t.Fatalf("%s client: got %+v", name, r.Error)
		}
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("%s client: connection not closed: %v", name, err)
		}
	}
	// And the server still serves.
	if err := ts.client.Call(context.Background(), "echo", nil, nil); err != nil {
		t.Fatal(err)
	}
}

func TestUnreachableServer(t *testing.T) {
	err := Call(context.Background(), filepath.Join(t.TempDir(), "none.sock"), "echo", nil, nil)
	if !IsUnreachable(err) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("got %T %v", err, err)
	}
}

func TestAuthorizeRefusalIsForbiddenAndLogged(t *testing.T) {
	ts := startServer(t, func(s *Server) {
		s.Authorize = func(c PeerCred) error { return fmt.Errorf("uid %d is not allowed", c.UID) }
	})
	ctx := op.With(context.Background(), "op-a11ce5")
	err := ts.client.Call(ctx, "echo", nil, nil)
	var er *ErrorResponse
	if !errors.As(err, &er) || er.Code != CodeForbidden || er.OpID != "op-a11ce5" {
		t.Fatalf("got %v", err)
	}
	found := false
	for _, l := range ts.log.lines(t) {
		if l["msg"] == "rpc failed" && l["op_id"] == "op-a11ce5" && l["code"] == "forbidden" {
			found = true
		}
	}
	if !found {
		t.Fatal("refusal not logged with its op id")
	}
}

func TestNestedErrorKeepsCodeWithoutRepeatingOpID(t *testing.T) {
	inner := &ErrorResponse{Code: CodeConflict, Message: "tap busy", OpID: "op-123456"}
	er := NewErrorResponse(fmt.Errorf("creating network: %w", inner), "op-123456")
	if er.Code != CodeConflict || er.Message != "creating network: tap busy" {
		t.Fatalf("got %+v", er)
	}
}

func BenchmarkRoundTrip(b *testing.B) {
	ts := startServer(b, func(s *Server) { s.CompletedLevel = slog.LevelDebug - 4 })
	ts.srv.Logger = logging.New(io.Discard, slog.LevelInfo, "bench")
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var res map[string]string
		if err := ts.client.Call(ctx, "echo", map[string]string{"Text": "x"}, &res); err != nil {
			b.Fatal(err)
		}
	}
}
