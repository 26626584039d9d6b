// Package helper is banger's root helper: the only code of banger that runs
// with privileges. bangerd calls it over a unix socket (internal/rpc) with
// the methods of internal/helperapi, and it does the privileged network
// mechanics and nothing else: bridges and TAPs (netlink), NAT (nftables),
// a TAP or a port 53 socket opened for its owner (SCM_RIGHTS). It takes no
// path, mirror, package list or script from anyone (image builds run
// unprivileged in bangerd, internal/imagebuild).
//
// Every call goes through the same gate, in this order:
//
//  1. the peer's uid (SO_PEERCRED) must be root or have a grant
//     (Helper.Authorize, asked by rpc.Server as it accepts each connection,
//     before the connection budgets: a refused peer counts against none);
//  2. the params must decode strictly (unknown fields are refused) and pass
//     the pure validation of helperapi (names inside banger's prefixes,
//     private subnets, numbers in range);
//  3. a non-root caller's names and addresses must be its grant's
//     (helperapi.CheckGrant): its bridge, its subnet, its TAP prefix;
//  4. one mutating call at a time (a mutex), each in the form measure,
//     act, verify; an existing object must be the caller's (owners, kept
//     in a root-only state file), and a subnet must overlap nothing the
//     host already uses.
package helper

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/subid"
	"github.com/banger-dev/banger/internal/version"
)

// Config is what a helper is allowed to do and with what.
type Config struct {
	// Grants say which users may call the helper besides root, and for
	// which bridge, subnet and TAP names.
	Grants helperapi.Grants
	// StateFile records the owner of every object the helper made
	// (owners.go). Its directory is made 0700.
	StateFile string
	// Logger receives the per-call lines and the helper's own.
	Logger *slog.Logger
	// SubUIDs are the host's subordinate uid ranges (/etc/subuid): a grant
	// whose uid lies in one is warned of at start, since that range's
	// owner can act as the grant's user (SO_PEERCRED shows the mapped uid).
	SubUIDs []subid.Range
}

// Helper serves the helper's methods.
type Helper struct {
	grants helperapi.Grants
	owners *owners
	log    *slog.Logger
	// mu serialises every method that changes the host, so that measure,
	// act and verify see no other call of this helper in between.
	mu sync.Mutex
}

// New checks cfg, loads the owners' records and returns a helper.
func New(cfg Config) (*Helper, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Grants.Validate(); err != nil {
		return nil, err
	}
	o, err := loadOwners(cfg.StateFile)
	if err != nil {
		return nil, err
	}
	h := &Helper{grants: cfg.Grants, owners: o, log: cfg.Logger}
	for _, g := range cfg.Grants.Users {
		for _, r := range subid.Containing(cfg.SubUIDs, uint64(g.UID)) {
			h.log.Warn("granted uid inside a subordinate uid range", "user", g.User, "uid", g.UID,
				"range_owner", r.Owner, "range", fmt.Sprintf("%d-%d", r.Start, r.Last()),
				"why", fmt.Sprintf("%s can map uid %d in a user namespace and call the helper as %s", r.Owner, g.UID, g.User),
				"hint", fmt.Sprintf("move the range: sudo usermod --del-subuids %d-%d %s, then sudo banger system install --user %s gives %s a free one",
					r.Start, r.Last(), r.Owner, r.Owner, r.Owner))
		}
	}
	if err := h.reviewRecords(); err != nil {
		return nil, err
	}
	if err := h.reviewUplinks(); err != nil {
		return nil, err
	}
	return h, nil
}

// reviewRecords runs at start: it forgets the records of links that are
// gone, and warns of each recorded object whose owner no longer has a
// grant that covers it. Such an object stays its owner's (no one else may
// take it over, not even the user granted its name now) until root removes
// it.
func (h *Helper) reviewRecords() error {
	records := h.owners.all()
	keys := slices.Sorted(maps.Keys(records))
	for _, k := range keys {
		kind, name, _ := strings.Cut(k, "/")
		uid := records[k]
		l, err := linkByName(name)
		if err != nil {
			return err
		}
		if l == nil {
			if err := h.owners.drop(kind, name); err != nil {
				return err
			}
			continue
		}
		if uid == 0 {
			continue
		}
		why := ""
		switch g, ok := h.grants.For(uid); {
		case !ok:
			why = fmt.Sprintf("uid %d has no grant any more", uid)
		case kind == kindBridge && g.Bridge() != name, kind == kindTap && !strings.HasPrefix(name, g.TapPrefix()):
			why = fmt.Sprintf("uid %d's grant (%s) no longer covers it", uid, g.Bridge())
		default:
			continue
		}
		h.log.Warn("recorded object outside every grant", "kind", kind, "name", name, "owner", uid, "why", why,
			"hint", removeHint(kind, name))
	}
	return nil
}

// removeHint says how root removes an object of the helper's by hand (the
// helper then forgets its record when it next looks at it, or at start).
func removeHint(kind, name string) string {
	if kind == kindBridge {
		return "root removes it: sudo ip link delete " + name + " && sudo nft delete table ip " + name
	}
	return "root removes it: sudo ip link delete " + name
}

// Authorize admits root and the users with a grant. rpc.Server answers a
// refusal with code forbidden and logs it with the request's op id.
func (h *Helper) Authorize(cred rpc.PeerCred) error {
	if _, ok := h.grants.For(cred.UID); ok || cred.UID == 0 {
		return nil
	}
	return rpc.WithHint(fmt.Errorf("uid %d (pid %d) may not use the banger helper: %w", cred.UID, cred.PID, rpc.ErrForbidden),
		"root grants it: sudo banger system install --user NAME")
}

// ReadTimeout is how long the helper gives an admitted connection to send
// its request: bangerd sends it as soon as it has connected, so a
// connection silent for longer only holds a slot of its uid's budget.
const ReadTimeout = 2 * time.Second

// NewServer returns an rpc server named "helper" (its lines read
// "helper rpc completed" / "helper rpc failed") with the peer check (at
// accept: a peer without a grant is refused at once and never counted), a
// connection budget per uid and every method registered.
func (h *Helper) NewServer() *rpc.Server {
	s := rpc.NewServer("helper", h.log)
	s.Authorize = h.Authorize
	s.MaxConnsPerUID = rpc.SharedMaxConnsPerUID
	s.ReadTimeout = ReadTimeout
	h.Register(s)
	return s
}

// Register adds the helper's methods to s.
func (h *Helper) Register(s *rpc.Server) {
	handle(h, s, helperapi.MethodVersion, false, func(_ context.Context, c rpc.PeerCred, _ helperapi.VersionParams) (helperapi.VersionResult, error) {
		methods := slices.DeleteFunc(s.Methods(), func(m string) bool { _, gone := removed[m]; return gone })
		r := helperapi.VersionResult{Version: version.String(), PID: os.Getpid(), Methods: methods, UID: c.UID}
		if g, ok := h.grants.For(c.UID); ok {
			r.Grant = &g
		}
		return r, nil
	})
	handle(h, s, helperapi.MethodBridgeEnsure, true, h.bridgeEnsure)
	handle(h, s, helperapi.MethodBridgeDelete, true, h.bridgeDelete)
	handle(h, s, helperapi.MethodNATEnsure, true, h.natEnsure)
	handle(h, s, helperapi.MethodNATDelete, true, h.natDelete)
	handle(h, s, helperapi.MethodTapCreate, true, h.tapCreate)
	handle(h, s, helperapi.MethodTapDelete, true, h.tapDelete)
	handle(h, s, helperapi.MethodTapOpen, false, h.tapOpen)
	handle(h, s, helperapi.MethodDNSListen, false, h.dnsListen)
	for m, why := range removed {
		s.Handle(m, func(context.Context, json.RawMessage) (any, error) {
			return nil, rpc.WithHint(fmt.Errorf("%s is no longer a helper method: %s: %w", m, why, rpc.ErrBadRequest),
				"upgrade bangerd to the helper's release (banger daemon stop, then any banger command)")
		})
	}
}

// removed are the methods earlier helpers served, with why they are gone;
// a daemon of an older release calling one is told so (bad_request).
var removed = map[string]string{
	"image.bootstrap":    "images are built by bangerd as its user (mmdebstrap --mode=unshare)",
	"image.configure":    "images are built by bangerd as its user (mmdebstrap --mode=unshare)",
	"image.pack":         "images are built by bangerd as its user (mmdebstrap --mode=unshare)",
	"image.discard":      "images are built by bangerd as its user (mmdebstrap --mode=unshare)",
	"loop.attach":        "the helper makes no loop devices",
	"loop.detach":        "the helper makes no loop devices",
	"dm.snapshot.create": "the helper makes no device-mapper devices",
	"dm.snapshot.remove": "the helper makes no device-mapper devices",
	"chown.device":       "the helper hands no device node to anyone",
}

// handle registers fn behind the gate: peer known, params valid and within
// the caller's grant, and the mutex for methods that change the host.
func handle[P interface{ Validate() error }, R any](h *Helper, s *rpc.Server, method string, mutates bool,
	fn func(context.Context, rpc.PeerCred, P) (R, error)) {
	rpc.Register(s, method, func(ctx context.Context, p P) (R, error) {
		var zero R
		caller, err := h.check(ctx, p)
		if err != nil {
			return zero, err
		}
		if mutates {
			h.mu.Lock()
			defer h.mu.Unlock()
		}
		return fn(ctx, caller, p)
	})
}

// check is the pure part of the gate: who calls, whether the params are
// valid, and whether a non-root caller's grant covers them. The fuzz test
// drives it directly.
func (h *Helper) check(ctx context.Context, p interface{ Validate() error }) (rpc.PeerCred, error) {
	caller, ok := rpc.PeerFrom(ctx)
	if !ok {
		return caller, fmt.Errorf("peer credentials unavailable: %w", rpc.ErrForbidden)
	}
	if err := h.Authorize(caller); err != nil {
		return caller, err
	}
	if err := p.Validate(); err != nil {
		return caller, err
	}
	if caller.UID == 0 {
		return caller, nil
	}
	g, _ := h.grants.For(caller.UID)
	return caller, helperapi.CheckGrant(g, p)
}
