// Package daemon is bangerd: the per-user process that holds all policy. It
// owns the SQLite store, serves the CLI over a 0600 unix socket with the rpc
// package, and (in later parts) drives VM lifecycle, images, network and the
// root helper.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/dns"
	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/store"
	"github.com/banger-dev/banger/internal/version"
)

// Options configure a daemon.
type Options struct {
	Layout     paths.Layout
	Config     config.Config
	ConfigPath string
	Logger     *slog.Logger
	LogLevel   string
}

// Daemon is one running bangerd.
type Daemon struct {
	opts    Options
	layout  paths.Layout
	cfg     config.Config
	log     *slog.Logger
	store   *store.Store
	started time.Time

	helperMu    sync.Mutex
	helperPeers []uint32 // who may serve the helper socket; nil: root
	kvm         kvmCache
	ops         *opRegistry

	allocMu    sync.Mutex // IP and CID allocation
	snapMu     sync.Mutex // snapshot deletion, template making and the bases' collection
	snapping   sync.Map   // ids of the VMs a snapshot is being taken of
	keyMu      sync.Mutex
	pool       tapPool
	netMu      sync.Mutex
	grant      *helperapi.Grant // a user's network, as the helper reports it
	netSetupMu sync.Mutex
	netReady   bool // this daemon set the network up (bridge, NAT, DNS)
	handlesMu  sync.Mutex
	handles    map[string]*model.VMHandles
	agents     agentSessions
	ports      ports
	vmLocks    map[string]*vmLock

	runCtx    context.Context // the daemon's lifetime
	dnsMu     sync.Mutex
	dnsServer *dns.Server
	dnsErr    string

	imagesMu    sync.Mutex
	imageBuilds map[string]string // image name -> op id of its running build

	stopOnce sync.Once
	stop     context.CancelFunc
}

type vmLock struct{ sync.Mutex }

// Run starts bangerd and serves until ctx is done or daemon.stop is called.
// It refuses to start when another bangerd of the same user holds the lock.
func Run(ctx context.Context, opts Options) error {
	l := opts.Layout
	if err := l.Ensure(); err != nil {
		return err
	}
	lock, err := acquireLock(l.DaemonLock())
	if err != nil {
		return err
	}
	defer lock.release()

	st, err := store.Open(ctx, l.Database())
	if err != nil {
		return fmt.Errorf("opening store %s: %w", l.Database(), err)
	}
	defer st.Close()

	ln, err := listen(l.DaemonSocket())
	if err != nil {
		return err
	}
	defer os.Remove(l.DaemonSocket())

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	d := &Daemon{
		opts:    opts,
		layout:  l,
		cfg:     opts.Config,
		log:     opts.Logger,
		store:   st,
		started: time.Now(),
		stop:    cancel,
		runCtx:  ctx,

		ops:         newOpRegistry(),
		imageBuilds: map[string]string{},
		handles:     map[string]*model.VMHandles{},
		vmLocks:     map[string]*vmLock{},
	}
	srv := rpc.NewServer("", d.log)
	d.register(srv)
	d.reconcileImages(ctx)
	d.reconcileVMs(ctx)
	if n, ok := d.cachedNetwork(); ok {
		d.adoptPool(ctx, n)
	}
	go d.monitor(ctx)
	d.probeKVMEarly(ctx)

	d.log.Info("bangerd started",
		"pid", os.Getpid(), "version", version.String(), "socket", l.DaemonSocket(),
		"state_dir", l.StateDir, "database", l.Database(), "log_level", opts.LogLevel)
	err = srv.Serve(ctx, ln)
	d.log.Info("bangerd stopped", "pid", os.Getpid())
	return err
}

// requestStop makes Run return once in-flight calls have finished.
func (d *Daemon) requestStop() {
	d.stopOnce.Do(func() { d.stop() })
}

// listen binds the daemon socket with mode 0600. The caller holds the lock,
// so a socket file already there is stale and is replaced.
func listen(path string) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale socket %s: %w", path, err)
	}
	old := syscall.Umask(0o177)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	return ln, nil
}
