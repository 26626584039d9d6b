// Package helper is banger's root helper: the only code of banger that runs
// with privileges. bangerd calls it over a unix socket (internal/rpc) with
// the methods of internal/helperapi, and it does the privileged mechanics and
// nothing else: bridges and TAPs (netlink), NAT (nftables), loop devices
// (ioctls), device-mapper snapshots (dmsetup) and the ownership of the device
// nodes it made, and the image build steps that need root (debootstrap,
// chroot, mke2fs as root) in a scratch directory of its own.
//
// Every call goes through the same gate, in this order:
//
//  1. the peer's uid (SO_PEERCRED) must be root or an allowed uid
//     (Helper.Authorize, asked by rpc.Server for every connection);
//  2. the params must decode strictly (unknown fields are refused) and pass
//     the pure validation of helperapi (names inside banger's prefixes,
//     clean absolute paths, numbers in range);
//  3. the method's own checks against the host: files must really lie under
//     a state root and belong to the caller, devices must trace back to such
//     files, uids handed out must be allowed;
//  4. one mutating call at a time (a mutex), each in the form measure, act,
//     verify, so that calling it twice is the same as calling it once.
//
// Commands that still run as processes (dmsetup) go through runner.Runner,
// argv only.
package helper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/runner"
	"github.com/banger-dev/banger/internal/version"
)

// Config is what a helper is allowed to do and with what.
type Config struct {
	// AllowedUIDs may call the helper besides root, and may be given
	// device nodes and TAPs.
	AllowedUIDs []uint32
	// SocketGID is the socket's group (-1: none). A non-root caller may
	// give a TAP to this group or to its own.
	SocketGID int
	// StateDirs are the state roots: the only places whose files may back
	// loop devices. Absolute, clean, not "/". They need not exist yet.
	StateDirs []string
	// Runner runs dmsetup. Default: runner.Exec.
	Runner runner.Runner
	// Logger receives the per-call lines and the helper's own.
	Logger *slog.Logger
	// SysRoot and DevRoot are /sys and /dev; tests point them elsewhere.
	SysRoot string
	DevRoot string
	// BuildDir is the root-only scratch directory of image builds
	// (image.go); "" turns the image methods off (they answer
	// unavailable). Made 0700 at New, and emptied of stale builds.
	BuildDir string
	// ImageRunner returns the runner of one image build step, whose
	// command output goes to log. Default: a copy of Runner with Log set
	// when Runner is a *runner.Exec, else Runner itself (a test's Fake).
	ImageRunner func(log io.Writer) runner.Runner
}

// Helper serves the helper's methods.
type Helper struct {
	cfg     Config
	allowed map[uint32]bool
	run     runner.Runner
	log     *slog.Logger
	// mu serialises every method that changes the host, so that measure,
	// act and verify see no other call of this helper in between.
	mu sync.Mutex
	// builds serialises the steps of each image build (image.go); image
	// steps take minutes and do not hold mu.
	builds buildLocks
	// buildErr is why the image methods are off, when they are.
	buildErr error
}

// New checks cfg and returns a helper.
func New(cfg Config) (*Helper, error) {
	if cfg.Runner == nil {
		cfg.Runner = &runner.Exec{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.SysRoot == "" {
		cfg.SysRoot = "/sys"
	}
	if cfg.DevRoot == "" {
		cfg.DevRoot = "/dev"
	}
	h := &Helper{cfg: cfg, allowed: map[uint32]bool{0: true}, run: cfg.Runner, log: cfg.Logger}
	for _, u := range cfg.AllowedUIDs {
		if err := helperapi.ValidateID("allow-uid", u); err != nil {
			return nil, err
		}
		h.allowed[u] = true
	}
	for _, d := range cfg.StateDirs {
		if err := helperapi.ValidatePath("state-dir", d); err != nil {
			return nil, err
		}
	}
	if err := h.initImages(); err != nil {
		return nil, err
	}
	return h, nil
}

// Authorize admits root and the allowed uids. rpc.Server answers a refusal
// with code forbidden and logs it with the request's op id.
func (h *Helper) Authorize(cred rpc.PeerCred) error {
	if h.allowed[cred.UID] {
		return nil
	}
	return fmt.Errorf("uid %d (pid %d) may not use the banger helper: %w", cred.UID, cred.PID, rpc.ErrForbidden)
}

// NewServer returns an rpc server named "helper" (its lines read
// "helper rpc completed" / "helper rpc failed") with the peer check and
// every method registered.
func (h *Helper) NewServer() *rpc.Server {
	s := rpc.NewServer("helper", h.log)
	s.Authorize = h.Authorize
	h.Register(s)
	return s
}

// Register adds the helper's methods to s.
func (h *Helper) Register(s *rpc.Server) {
	handle(h, s, helperapi.MethodVersion, false, func(_ context.Context, _ rpc.PeerCred, _ helperapi.VersionParams) (helperapi.VersionResult, error) {
		return helperapi.VersionResult{Version: version.String(), PID: os.Getpid(), Methods: s.Methods()}, nil
	})
	handle(h, s, helperapi.MethodBridgeEnsure, true, h.bridgeEnsure)
	handle(h, s, helperapi.MethodBridgeDelete, true, h.bridgeDelete)
	handle(h, s, helperapi.MethodTapCreate, true, h.tapCreate)
	handle(h, s, helperapi.MethodTapDelete, true, h.tapDelete)
	handle(h, s, helperapi.MethodTapOpen, false, h.tapOpen)
	handle(h, s, helperapi.MethodDNSListen, false, h.dnsListen)
	handle(h, s, helperapi.MethodNATEnsure, true, h.natEnsure)
	handle(h, s, helperapi.MethodNATDelete, true, h.natDelete)
	handle(h, s, helperapi.MethodLoopAttach, true, h.loopAttach)
	handle(h, s, helperapi.MethodLoopDetach, true, h.loopDetach)
	handle(h, s, helperapi.MethodDMSnapshotCreate, true, h.dmSnapshotCreate)
	handle(h, s, helperapi.MethodDMSnapshotRemove, true, h.dmSnapshotRemove)
	handle(h, s, helperapi.MethodChownDevice, true, h.chownDevice)
	// Image steps run for minutes: they take a lock per build, not mu.
	handle(h, s, helperapi.MethodImageBootstrap, false, h.imageBootstrap)
	handle(h, s, helperapi.MethodImageConfigure, false, h.imageConfigure)
	handle(h, s, helperapi.MethodImagePack, false, h.imagePack)
	handle(h, s, helperapi.MethodImageDiscard, false, h.imageDiscard)
}

// handle registers fn behind the gate: peer known, params valid, and the
// mutex for methods that change the host.
func handle[P interface{ Validate() error }, R any](h *Helper, s *rpc.Server, method string, mutates bool,
	fn func(context.Context, rpc.PeerCred, P) (R, error)) {
	rpc.Register(s, method, func(ctx context.Context, p P) (R, error) {
		var zero R
		caller, ok := rpc.PeerFrom(ctx)
		if !ok {
			return zero, fmt.Errorf("peer credentials unavailable: %w", rpc.ErrForbidden)
		}
		if err := p.Validate(); err != nil {
			return zero, err
		}
		if mutates {
			h.mu.Lock()
			defer h.mu.Unlock()
		}
		return fn(ctx, caller, p)
	})
}

// checkUID refuses handing anything to a uid that may not call the helper.
func (h *Helper) checkUID(arg string, uid uint32) error {
	if !h.allowed[uid] {
		return fmt.Errorf("argument %s %d: not an allowed uid (see --allow-uid): %w", arg, uid, rpc.ErrForbidden)
	}
	return nil
}

// checkGID lets root give anything to any group, and others only to their
// own group or the socket's.
func (h *Helper) checkGID(caller rpc.PeerCred, gid uint32) error {
	if caller.UID == 0 || gid == caller.GID || (h.cfg.SocketGID >= 0 && gid == uint32(h.cfg.SocketGID)) {
		return nil
	}
	return fmt.Errorf("argument gid %d: neither the caller's group %d nor the socket's: %w", gid, caller.GID, rpc.ErrForbidden)
}

// realRoots returns the state roots with symlinks resolved; roots that do
// not exist (yet) hold nothing and are left out.
func (h *Helper) realRoots() []string {
	var out []string
	for _, d := range h.cfg.StateDirs {
		r, err := filepath.EvalSymlinks(d)
		if err != nil {
			continue
		}
		if r == "/" {
			// A root that resolves to "/" (a user's symlink) would admit
			// everything; the ownership check still applies, but refuse.
			continue
		}
		out = append(out, r)
	}
	return out
}

// underRoots reports whether the real path p lies strictly inside a real
// state root.
func underRoots(p string, roots []string) bool {
	return slices.ContainsFunc(roots, func(r string) bool {
		rel, err := filepath.Rel(r, p)
		return err == nil && rel != "." && filepath.IsLocal(rel)
	})
}

// isNotExist is errors.Is(err, os.ErrNotExist) for brevity.
func isNotExist(err error) bool { return errors.Is(err, os.ErrNotExist) }
