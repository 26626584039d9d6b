package daemon

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/store"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// newTestDaemon is a daemon on a temp state directory whose helper socket
// is served by fakeHelper (when given).
func newTestDaemon(t testing.TB, fakeHelper func(*rpc.Server)) (*Daemon, *lockedBuffer) {
	t.Helper()
	// Never let a root test daemon start a real helper.
	t.Setenv("BANGER_HELPER", "/bin/false")
	root, err := os.MkdirTemp("", "bgd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	l := paths.Layout{StateDir: filepath.Join(root, "state"), RuntimeDir: filepath.Join(root, "run"), HelperSocket: filepath.Join(root, "helper.sock")}
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := store.Open(ctx, l.Database())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	logs := &lockedBuffer{}
	cfg := config.Defaults()
	cfg.Image.Mirror = "http://mirror.invalid/debian"
	d := &Daemon{
		opts: Options{Layout: l, Config: cfg, LogLevel: "debug"}, layout: l, cfg: cfg,
		log: logging.New(logs, slog.LevelDebug, "test"), store: st, started: time.Now(), stop: cancel, runCtx: ctx,
		ops: newOpRegistry(), imageBuilds: map[string]string{}, handles: map[string]*model.VMHandles{},
		vmLocks: map[string]*vmLock{}, helperPeers: []uint32{0, uint32(os.Getuid())},
	}
	if os.Geteuid() != 0 {
		// A user's daemon learns its network from the helper; tests that
		// fake no helper get the grant it would report.
		d.grant = &helperapi.Grant{User: "test", UID: uint32(os.Getuid()), Net: 1, Subnet: cfg.Network.Subnet}
	}
	if fakeHelper != nil {
		srv := rpc.NewServer("helper", logging.New(logs, slog.LevelDebug, "fake-helper"))
		fakeHelper(srv)
		ln, err := net.Listen("unix", l.HelperSocket)
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ctx, ln)
	}
	return d, logs
}
