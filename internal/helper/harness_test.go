package helper

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/testutil"
)

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// lines decodes the JSON log.
func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader([]byte(s.String())))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.CleanupDialAs()
	os.Exit(code)
}

// harness is a helper served in-process on a real unix socket.
type harness struct {
	h      *Helper
	socket string
	// client calls as the test process's own uid (root in the root tier).
	client    *helperapi.Client
	log       *syncBuffer
	stateFile string
}

type harnessOpt func(*Config)

// Test users. A unit-tier run (not root) grants its own uid as "self";
// the root tier adds an attacker and a victim with uids no account has.
const (
	victimUID   = 60102
	attackerUID = 60101
)

var (
	victim   = helperapi.Grant{User: "victim", UID: victimUID, Net: 1, Subnet: "10.231.1.0/24"}
	attacker = helperapi.Grant{User: "attacker", UID: attackerUID, Net: 2, Subnet: "10.231.2.0/24"}
)

// selfGrant is the grant of the test process's own uid when it is not root.
func selfGrant() helperapi.Grant {
	return helperapi.Grant{User: "self", UID: uint32(os.Getuid()), Net: 7, Subnet: "10.231.7.0/24"}
}

// startHelper serves a helper whose state file is in a fresh temp dir and
// whose grants are the victim's and the attacker's (and the test's own uid
// when it is not root).
func startHelper(t *testing.T, opts ...harnessOpt) *harness {
	t.Helper()
	dir, err := os.MkdirTemp("", "banger-helper-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// Traversable, so that other uids reach the socket.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return startHelperAt(t, filepath.Join(dir, "helper.sock"), 0o666, nil, opts...)
}

// startHelperTuned is startHelper with tune applied to the helper's rpc
// server before it serves.
func startHelperTuned(t *testing.T, tune func(*rpc.Server), opts ...harnessOpt) *harness {
	t.Helper()
	dir, err := os.MkdirTemp("", "banger-helper-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return startHelperAt(t, filepath.Join(dir, "helper.sock"), 0o666, tune, opts...)
}

// startHelperAt is startHelper with the socket at sock, of the given mode,
// and tune (if set) applied to the server.
func startHelperAt(t *testing.T, sock string, mode os.FileMode, tune func(*rpc.Server), opts ...harnessOpt) *harness {
	t.Helper()
	log := &syncBuffer{}
	cfg := Config{
		Grants:    helperapi.Grants{Users: []helperapi.Grant{victim, attacker}},
		StateFile: filepath.Join(t.TempDir(), "state", "state.json"),
		Logger:    logging.New(log, slog.LevelDebug, "helper"),
	}
	if os.Getuid() != 0 {
		cfg.Grants.Users = append(cfg.Grants.Users, selfGrant())
	}
	for _, o := range opts {
		o(&cfg)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(sock, mode)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	srv := h.NewServer()
	if tune != nil {
		tune(srv)
	}
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("server did not stop")
		}
	})
	c := helperapi.NewClient(sock)
	c.VerifyPeer = rpc.PeerUIDs(uint32(os.Getuid())) // the helper is this process
	return &harness{h: h, socket: sock, client: c, log: log, stateFile: cfg.StateFile}
}

// as returns a client that calls the helper as uid (its primary group the
// same number), one child process per connection (testutil.DialAs).
func (hs *harness) as(t *testing.T, uid uint32) *helperapi.Client {
	t.Helper()
	testutil.RequireRoot(t)
	c := helperapi.NewClient(hs.socket)
	c.Dial = testutil.DialerAs(uid, uid, hs.socket)
	c.VerifyPeer = nil // a connection made by a child, to a helper that is this process
	return c
}

// raw calls a method bypassing the typed client's validation.
func (hs *harness) raw(ctx context.Context, method string, params any) error {
	return hs.client.Call(ctx, method, params, nil)
}

func wantCode(t *testing.T, what string, err error, code rpc.Code) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: succeeded, want %s", what, code)
		return
	}
	if got := rpc.CodeOf(err); got != code {
		t.Errorf("%s: code %s, want %s (%v)", what, got, code, err)
	}
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
