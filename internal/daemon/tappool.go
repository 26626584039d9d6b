package daemon

import (
	"context"
	"fmt"
	"os"
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

// tapPool keeps network.tap_pool_size idle TAPs (tap-pool-N), attached to
// the bridge and owned by the daemon's user, so a create takes one instead
// of waiting for the helper to make one. Taken TAPs come back on stop and
// delete; the pool refills in the background. Pool TAPs outlive bangerd and
// are adopted again at start.
type tapPool struct {
	mu        sync.Mutex
	idle      []string
	refilling bool
}

func isPoolTap(name string) bool { return strings.HasPrefix(name, helperapi.PoolTapPrefix) }

// takeTap returns a TAP for vm: an idle pool TAP when there is one, else a
// new per-VM TAP through the helper.
func (d *Daemon) takeTap(ctx context.Context, vm model.VM, bridge string) (string, bool, error) {
	d.pool.mu.Lock()
	if n := len(d.pool.idle); n > 0 {
		tap := d.pool.idle[n-1]
		d.pool.idle = d.pool.idle[:n-1]
		d.pool.mu.Unlock()
		d.refillPool(ctx, bridge)
		return tap, true, nil
	}
	d.pool.mu.Unlock()
	d.refillPool(ctx, bridge)
	hc, err := d.helperClient(ctx)
	if err != nil {
		return "", false, err
	}
	tap := helperapi.VMTapName(vm.ID)
	if _, err := hc.CreateTap(ctx, helperapi.TapCreateParams{Name: tap, Bridge: bridge, UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}); err != nil {
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
	if isPoolTap(tap) {
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
func (d *Daemon) refillPool(ctx context.Context, bridge string) {
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
			name := d.freePoolName()
			hc, err := d.helperClient(ctx)
			if err != nil {
				return
			}
			if _, err := hc.CreateTap(ctx, helperapi.TapCreateParams{Name: name, Bridge: bridge, UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}); err != nil {
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

// freePoolName is the lowest tap-pool-N neither idle nor held by a VM nor
// present on the host.
func (d *Daemon) freePoolName() string {
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
		if n := helperapi.PoolTapName(i); !used[n] {
			return n
		}
	}
}

// adoptPool takes the pool TAPs on the host that no running VM holds as
// idle: after a daemon restart the pool is still there.
func (d *Daemon) adoptPool(ctx context.Context) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return
	}
	held := map[string]bool{}
	for _, vm := range vms {
		if vm.Runtime.State == model.StateRunning || vm.Runtime.State == model.StateCreating {
			held[d.getHandles(vm).TapDevice] = true
		}
	}
	links, _ := netlink.LinkList()
	var idle []string
	for _, l := range links {
		if n := l.Attrs().Name; isPoolTap(n) && !held[n] {
			idle = append(idle, n)
		}
	}
	sort.Slice(idle, func(i, j int) bool { return poolIndex(idle[i]) > poolIndex(idle[j]) })
	d.pool.mu.Lock()
	d.pool.idle = idle
	d.pool.mu.Unlock()
	if len(idle) > 0 {
		d.log.InfoContext(ctx, "tap pool adopted", "idle", len(idle))
	}
}

func poolIndex(name string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(name, helperapi.PoolTapPrefix))
	return n
}
