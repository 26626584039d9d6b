package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/mount"
)

// verify lists what banger holds on the host that no VM accounts for:
// TAPs of this daemon's other than the pool's, loop devices backed by
// banger's files (left by releases that made them), VMM processes without a
// live VM, VM directories without a row, addresses on the bridge other
// than the gateway, and a bridge or TAP that takes IPv6 router
// advertisements or has IPv6 on (helperapi.IPv6Off). It looks in bangerd's
// own network namespace; without the daemon's network (a user's daemon
// whose helper does not answer) it leaves the bridge and TAPs out.
func (d *Daemon) verify(ctx context.Context, _ noParams) (api.VerifyReport, error) {
	var rep api.VerifyReport
	leak := func(kind, what, detail string) {
		rep.Leaks = append(rep.Leaks, api.Leak{Kind: kind, What: what, Detail: detail})
	}
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return rep, err
	}
	byID := map[string]model.VM{}
	held := map[string]bool{} // TAPs of live VMs
	for _, vm := range vms {
		byID[vm.ID] = vm
		if d.vmAlive(vm) {
			held[d.getHandles(vm).TapDevice] = true
		}
	}
	rep.VMs = len(vms)

	n, netErr := d.network(ctx)
	if netErr == nil {
		links, _ := netlink.LinkList()
		for _, l := range links {
			name := l.Attrs().Name
			ours := strings.HasPrefix(name, n.TapPrefix) || name == n.Bridge
			if ours {
				if bad := ipv6On(name); bad != "" {
					leak("ipv6", name, bad)
				}
			}
			switch {
			case n.isPoolTap(name):
				rep.PoolTaps++
			case strings.HasPrefix(name, n.TapPrefix) && !held[name]:
				leak("tap", name, "no running VM holds it")
			}
		}
	}

	stateDir, _ := filepath.EvalSymlinks(d.layout.StateDir)
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range loops {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		backing := strings.TrimSpace(string(b))
		dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(f)))
		if stateDir != "" && strings.HasPrefix(backing, stateDir+"/") && !held[dev] {
			leak("loop", dev, "backed by "+backing)
		}
	}

	vmsDir := d.layout.VMsDir() + "/"
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), vmsDir) || !processAlive(pid) {
			continue
		}
		i := strings.Index(string(b), vmsDir)
		id, _, _ := strings.Cut(string(b)[i+len(vmsDir):], "/")
		vm, ok := byID[id]
		if ok && d.vmAlive(vm) && d.ownsProcess(vm, pid) {
			continue
		}
		what := "a VMM"
		if strings.Contains(string(b), "virtiofsd") {
			what = "a virtiofsd"
		}
		leak("process", strconv.Itoa(pid), fmt.Sprintf("%s of VM directory %s with no live VM", what, id))
	}

	dirs, _ := os.ReadDir(d.layout.VMsDir())
	for _, e := range dirs {
		if _, ok := byID[e.Name()]; !ok {
			leak("vm-dir", filepath.Join(d.layout.VMsDir(), e.Name()), "no VM row")
		}
	}

	// Snapshot directories (their RAM and state files) and frozen disks
	// without a row, and rows whose files are gone.
	rep.Leaks = append(rep.Leaks, d.snapshotLeftovers(ctx)...)
	if bases, err := d.store.ListBases(ctx); err == nil {
		for _, b := range bases {
			if !fileExists(b.Path) {
				leak("base-missing", b.ID, "a frozen disk's row whose file "+b.Path+" is gone")
			}
		}
	}
	for _, vm := range vms {
		if _, ok := readIntent(vm); ok && !d.snapshotRunning(vm.ID) {
			leak("snapshot-intent", filepath.Join(vm.Runtime.VMDir, vmFileIntent), "a snapshot of "+vm.Name+" cut short and not reconciled")
		}
	}

	if br, err := netlink.LinkByName(n.Bridge); netErr == nil && err == nil {
		addrs, _ := netlink.AddrList(br, netlink.FAMILY_V4)
		for _, a := range addrs {
			ip, _ := netip.AddrFromSlice(a.IP.To4())
			if ip != n.Gateway() {
				leak("address", a.IPNet.String(), "on "+n.Bridge+", not its gateway")
			}
		}
	}
	rep.OK = len(rep.Leaks) == 0
	return rep, nil
}

// ipv6On says how a link departs from helperapi.IPv6Off ("" when it does
// not, or the host has no IPv6).
func ipv6On(link string) string {
	var bad []string
	for _, kv := range helperapi.IPv6Off {
		raw, err := os.ReadFile(filepath.Join("/proc/sys/net/ipv6/conf", link, kv.Key))
		if err != nil {
			continue
		}
		if v := strings.TrimSpace(string(raw)); v != kv.Value {
			bad = append(bad, kv.Key+"="+v)
		}
	}
	if len(bad) == 0 {
		return ""
	}
	return "IPv6 is not off: " + strings.Join(bad, ", ") + " (a guest's router advertisement could route the host)"
}

// ownsProcess reports whether pid is live vm's: its VMM, one of its
// virtiofsds, or a virtiofsd's sandboxed child.
func (d *Daemon) ownsProcess(vm model.VM, pid int) bool {
	h := d.getHandles(vm)
	if h.PID == pid {
		return true
	}
	parent := mount.ParentPID(pid)
	for _, fs := range h.FS {
		if fs > 0 && (fs == pid || fs == parent) {
			return true
		}
	}
	return false
}
