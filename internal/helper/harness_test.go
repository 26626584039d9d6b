package helper

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/runner"
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

// harness is a helper served in-process on a real unix socket.
type harness struct {
	h        *Helper
	socket   string
	client   *helperapi.Client
	log      *syncBuffer
	stateDir string
	fake     *runner.Fake
}

type harnessOpt func(*Config)

// startHelper serves a helper whose state root is a fresh temp dir, whose
// runner is a Fake expecting nothing unless told, and which admits root,
// the test's own uid and 65534.
func startHelper(t *testing.T, opts ...harnessOpt) *harness {
	t.Helper()
	return startHelperAt(t, filepath.Join(t.TempDir(), "helper.sock"), 0o600, opts...)
}

// startHelperAt is startHelper with the socket at sock, of the given mode.
func startHelperAt(t *testing.T, sock string, mode os.FileMode, opts ...harnessOpt) *harness {
	t.Helper()
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatal(err)
	}
	log := &syncBuffer{}
	fake := &runner.Fake{}
	cfg := Config{
		AllowedUIDs: []uint32{uint32(os.Getuid()), 65534},
		SocketGID:   -1,
		StateDirs:   []string{state},
		Runner:      fake,
		Logger:      logging.New(log, logLevelDebug, "helper"),
	}
	for _, o := range opts {
		o(&cfg)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(sock, mode, -1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	srv := h.NewServer()
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
		if unmet := fake.Unmet(); len(unmet) > 0 {
			t.Errorf("expected commands not run: %q", unmet)
		}
	})
	return &harness{h: h, socket: sock, client: helperapi.NewClient(sock), log: log, stateDir: state, fake: fake}
}

const logLevelDebug = slog.LevelDebug

// raw calls a method bypassing the typed client's validation.
func (hs *harness) raw(ctx context.Context, method string, params any) error {
	return hs.client.Call(ctx, method, params, nil)
}

// hostSnapshot is what a refused call must leave as it was.
type hostSnapshot struct {
	links []string
	loops []string
}

func snapshotHost(t *testing.T) hostSnapshot {
	t.Helper()
	var s hostSnapshot
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range ifs {
		s.links = append(s.links, i.Name)
	}
	names, _ := filepath.Glob("/sys/block/loop*")
	for _, n := range names {
		if raw, err := os.ReadFile(filepath.Join(n, "loop", "backing_file")); err == nil {
			s.loops = append(s.loops, filepath.Base(n)+"="+string(raw))
		}
	}
	return s
}

func (s hostSnapshot) diff(t *testing.T, after hostSnapshot) {
	t.Helper()
	for _, l := range after.links {
		if !slices.Contains(s.links, l) {
			t.Errorf("a link appeared: %s", l)
		}
	}
	for _, l := range after.loops {
		if !slices.Contains(s.loops, l) {
			t.Errorf("a loop device was attached: %s", l)
		}
	}
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
