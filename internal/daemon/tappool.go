package daemon

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/op"
)

// tapPool keeps network.tap_pool_size idle TAPs (<prefix>pool-N, tap-pool-N
// for a root daemon, tap<N>-pool-N for a user's), attached to the bridge and
// owned by the daemon's user, so a create takes one instead of waiting for
// the helper to make one. Taken TAPs come back on stop and delete; the pool
// refills in the background. Pool TAPs outlive bangerd and are adopted
// again when the daemon first knows its network.
type tapPool struct {
	mu        sync.Mutex
	idle      []string
	refilling bool
	adopted   bool
}

func (n netID) poolPrefix() string { return n.TapPrefix + "pool-" }

func (n netID) isPoolTap(name string) bool { return strings.HasPrefix(name, n.poolPrefix()) }

// vmTap is the per-VM TAP name: the prefix and as much of the VM id as fits.
func (n netID) vmTap(vmID string) string {
	if room := helperapi.IfNameMax - len(n.TapPrefix); len(vmID) > room {
		vmID = vmID[:room]
	}
	return n.TapPrefix + strings.TrimRight(vmID, "-")
}

// takeTap returns a TAP for vm: an idle pool TAP when there is one, else a
// new per-VM TAP through the helper.
func (d *Daemon) takeTap(ctx context.Context, vm model.VM, n netID) (string, bool, error) {
	d.pool.mu.Lock()
	if k := len(d.pool.idle); k > 0 {
		tap := d.pool.idle[k-1]
		d.pool.idle = d.pool.idle[:k-1]
		d.pool.mu.Unlock()
		d.refillPool(ctx, n)
		return tap, true, nil
	}
	d.pool.mu.Unlock()
	d.refillPool(ctx, n)
	hc, err := d.helperClient(ctx)
	if err != nil {
		return "", false, err
	}
	tap := n.vmTap(vm.ID)
	if _, err := hc.CreateTap(ctx, helperapi.TapCreateParams{Name: tap, Bridge: n.Bridge}); err != nil {
		return "", false, fmt.Errorf("creating TAP %s: %w", tap, err)
	}
	return tap, false, nil
}

// returnTap gives a TAP back: a pool TAP rejoins the idle list while the
// pool is short, anything else is deleted.
func (d *Daemon) returnTap(ctx context.Context, tap string) {
	if tap == "" {
		return
	}
	if n, ok := d.cachedNetwork(); ok && n.isPoolTap(tap) {
		d.pool.mu.Lock()
		if len(d.pool.idle) < d.cfg.Network.TapPoolSize {
			d.pool.idle = append(d.pool.idle, tap)
			d.pool.mu.Unlock()
			return
		}
		d.pool.mu.Unlock()
	}
	hc, err := d.helperClient(ctx)
	if err != nil {
		d.log.WarnContext(ctx, "deleting TAP: no helper", "tap", tap, "error", err.Error())
		return
	}
	if _, err := hc.DeleteTap(ctx, tap); err != nil {
		d.log.WarnContext(ctx, "deleting TAP", "tap", tap, "error", err.Error())
	}
}

// refillPool tops the idle list up to the pool size in the background, one
// helper call per TAP, under an op id of its own.
func (d *Daemon) refillPool(ctx context.Context, n netID) {
	size := d.cfg.Network.TapPoolSize
	d.pool.mu.Lock()
	if d.pool.refilling || len(d.pool.idle) >= size {
		d.pool.mu.Unlock()
		return
	}
	d.pool.refilling = true
	d.pool.mu.Unlock()
	go func() {
		ctx := op.With(context.WithoutCancel(ctx), op.New())
		defer func() {
			d.pool.mu.Lock()
			d.pool.refilling = false
			d.pool.mu.Unlock()
		}()
		start := time.Now()
		made := 0
		for {
			d.pool.mu.Lock()
			short := len(d.pool.idle) < size
			d.pool.mu.Unlock()
			if !short {
				break
			}
			name := d.freePoolName(n)
			hc, err := d.helperClient(ctx)
			if err != nil {
				return
			}
			if _, err := hc.CreateTap(ctx, helperapi.TapCreateParams{Name: name, Bridge: n.Bridge}); err != nil {
				d.log.WarnContext(ctx, "tap pool refill", "tap", name, "error", err.Error())
				return
			}
			d.pool.mu.Lock()
			d.pool.idle = append(d.pool.idle, name)
			d.pool.mu.Unlock()
			made++
		}
		if made > 0 {
			d.log.InfoContext(ctx, "tap pool refilled", "created", made, "size", size, "duration_ms", time.Since(start).Milliseconds())
		}
	}()
}

// freePoolName is the lowest <prefix>pool-N neither idle nor held by a VM
// nor present on the host.
func (d *Daemon) freePoolName(n netID) string {
	used := map[string]bool{}
	links, _ := netlink.LinkList()
	for _, l := range links {
		used[l.Attrs().Name] = true
	}
	d.pool.mu.Lock()
	for _, t := range d.pool.idle {
		used[t] = true
	}
	d.pool.mu.Unlock()
	for i := 0; ; i++ {
		if name := n.poolPrefix() + strconv.Itoa(i); !used[name] {
			return name
		}
	}
}

// adoptPool takes the pool TAPs on the host that no running VM holds as
// idle, once per daemon: after a restart the pool is still there.
func (d *Daemon) adoptPool(ctx context.Context, n netID) {
	d.pool.mu.Lock()
	done := d.pool.adopted
	d.pool.adopted = true
	d.pool.mu.Unlock()
	if done {
		return
	}
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return
	}
	held := map[string]bool{}
	for _, vm := range vms {
		if vm.Runtime.State.Live() || vm.Runtime.State == model.StateCreating {
			held[d.getHandles(vm).TapDevice] = true
		}
	}
	links, _ := netlink.LinkList()
	var idle []string
	for _, l := range links {
		if name := l.Attrs().Name; n.isPoolTap(name) && !held[name] {
			idle = append(idle, name)
		}
	}
	index := func(name string) int {
		i, _ := strconv.Atoi(strings.TrimPrefix(name, n.poolPrefix()))
		return i
	}
	sort.Slice(idle, func(i, j int) bool { return index(idle[i]) > index(idle[j]) })
	d.pool.mu.Lock()
	d.pool.idle = append(d.pool.idle, idle...)
	d.pool.mu.Unlock()
	if len(idle) > 0 {
		d.log.InfoContext(ctx, "tap pool adopted", "idle", len(idle))
	}
}
