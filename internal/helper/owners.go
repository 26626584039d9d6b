package helper

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
)

// Owners. Every link the helper makes (a bridge, a TAP) is recorded with
// the uid that asked for it (a bridge's nftables table is the bridge
// owner's: nat.go), in a state file only root can
// read or write (its directory 0700), written anew and renamed into place
// on every change, so the records survive a helper restart or crash. A call
// on an existing object succeeds only for its recorded owner (or root).
//
// An object that exists without a record (made before this helper kept
// records, or after the file was lost) goes to the caller whose grant
// covers its name: a bridge of its grant's bridge name; a TAP of its
// grant's prefix only if the kernel says the caller owns it too (the
// kernel's owner is a hint, not a proof: the TAP's owner may change it,
// TUNSETOWNER, so it only settles unrecorded TAPs in the caller's own
// names). A record of an object that no longer exists is dropped when the
// object is next measured, and at the helper's start.

// Object kinds in the records.
const (
	kindBridge = "bridge"
	kindTap    = "tap"
	// kindNAT records were kept for NAT tables before a bridge's table
	// followed the bridge; loadOwners drops them.
	kindNAT = "nat"
)

type owners struct {
	path string // "" keeps the records in memory only (unit tests)
	mu   sync.RWMutex
	m    map[string]uint32
	// uplinks whose forwarding the helper switched on (uplink.go).
	uplinks []string
}

type ownersFile struct {
	Owners  map[string]uint32 `json:"owners"`
	Uplinks []string          `json:"uplinks,omitempty"`
}

func ownerKey(kind, name string) string { return kind + "/" + name }

// loadOwners reads the state file, creating its directory (0700) when
// missing; a missing file is an empty record.
func loadOwners(path string) (*owners, error) {
	o := &owners{path: path, m: map[string]uint32{}}
	if path == "" {
		return o, nil
	}
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("state file %q: want an absolute path", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating the state directory %s: %w", filepath.Dir(path), err)
	}
	if err := os.Chmod(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("making the state directory %s 0700: %w", filepath.Dir(path), err)
	}
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return o, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the state file %s: %w", path, err)
	}
	var f ownersFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("state file %s is corrupt (%v); move it aside to start with no records", path, err)
	}
	maps.Copy(o.m, f.Owners)
	for _, u := range f.Uplinks {
		if helperapi.ValidateIfName("uplink", u) == nil && !slices.Contains(o.uplinks, u) {
			o.uplinks = append(o.uplinks, u)
		}
	}
	legacy := false
	for k := range o.m {
		if strings.HasPrefix(k, kindNAT+"/") {
			delete(o.m, k)
			legacy = true
		}
	}
	if legacy {
		o.mu.Lock()
		defer o.mu.Unlock()
		if err := o.saveLocked(); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// guardedUplinks returns the uplinks whose forwarding the helper switched on.
func (o *owners) guardedUplinks() []string {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return slices.Clone(o.uplinks)
}

// setUplinks records the uplinks whose forwarding the helper switched on.
func (o *owners) setUplinks(ups []string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	ups = slices.Compact(slices.Sorted(slices.Values(ups)))
	if slices.Equal(ups, o.uplinks) {
		return nil
	}
	o.uplinks = ups
	return o.saveLocked()
}

// all returns a copy of the records, keyed kind/name.
func (o *owners) all() map[string]uint32 {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return maps.Clone(o.m)
}

// owner returns the recorded owner of kind/name.
func (o *owners) owner(kind, name string) (uint32, bool) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	uid, ok := o.m[ownerKey(kind, name)]
	return uid, ok
}

// set records uid as the owner of kind/name.
func (o *owners) set(kind, name string, uid uint32) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	k := ownerKey(kind, name)
	if have, ok := o.m[k]; ok && have == uid {
		return nil
	}
	o.m[k] = uid
	return o.saveLocked()
}

// drop forgets kind/name.
func (o *owners) drop(kind, name string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	k := ownerKey(kind, name)
	if _, ok := o.m[k]; !ok {
		return nil
	}
	delete(o.m, k)
	return o.saveLocked()
}

// saveLocked writes the records to a new file and renames it over the old.
func (o *owners) saveLocked() error {
	if o.path == "" {
		return nil
	}
	raw, err := json.MarshalIndent(ownersFile{Owners: o.m, Uplinks: o.uplinks}, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the state file %s: %w", o.path, err)
	}
	tmp := o.path + ".new"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("writing the state file %s: %w", tmp, err)
	}
	_, err = f.Write(append(raw, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, o.path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing the state file %s: %w", o.path, err)
	}
	if d, err := os.Open(filepath.Dir(o.path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// claim decides whether caller may act on kind/name, which exists on the
// host, and records it as the caller's when it had no owner yet (see the
// top of this file). kernelOwner is the TAP's owner per the kernel (nil for
// other kinds). Root may act on everything and claims nothing it did not
// make.
func (h *Helper) claim(caller rpc.PeerCred, kind, name string, kernelOwner *uint32) error {
	rec, ok := h.owners.owner(kind, name)
	switch {
	case caller.UID == 0:
		return nil
	case ok && rec == caller.UID:
		return nil
	case ok:
		return rpc.WithHint(fmt.Errorf("%s %s belongs to uid %d, not to the caller (uid %d): %w", kind, name, rec, caller.UID, rpc.ErrForbidden),
			fmt.Sprintf("only uid %d or root may change it; if uid %d is done with it, %s", rec, rec, removeHint(kind, name)))
	case kernelOwner != nil && *kernelOwner != caller.UID:
		return rpc.WithHint(fmt.Errorf("%s %s exists, owned by uid %d, and banger has no record of it: %w", kind, name, *kernelOwner, rpc.ErrForbidden),
			"if it is stale, "+removeHint(kind, name))
	}
	return h.owners.set(kind, name, caller.UID)
}
