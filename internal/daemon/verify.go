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
)

// verify lists what banger holds on the host that no VM accounts for:
// TAPs other than the pool's, loop devices backed by banger's files, dm
// devices with banger's prefix, VMM processes without a live VM, VM
// directories without a row, and addresses on the bridge other than the
// gateway. It looks in bangerd's own network namespace.
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
	held := map[string]bool{} // TAPs, loops, dm names of live VMs
	for _, vm := range vms {
		byID[vm.ID] = vm
		if d.vmAlive(vm) {
			h := d.getHandles(vm)
			for _, x := range []string{h.TapDevice, h.BaseLoop, h.COWLoop, h.DMName} {
				if x != "" {
					held[x] = true
				}
			}
		}
	}
	rep.VMs = len(vms)

	links, _ := netlink.LinkList()
	for _, l := range links {
		name := l.Attrs().Name
		switch {
		case strings.HasPrefix(name, helperapi.PoolTapPrefix):
			rep.PoolTaps++
		case strings.HasPrefix(name, helperapi.TapPrefix) && !held[name]:
			leak("tap", name, "no running VM holds it")
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
	dms, _ := filepath.Glob("/sys/block/dm-*/dm/name")
	for _, f := range dms {
		b, _ := os.ReadFile(f)
		name := strings.TrimSpace(string(b))
		if strings.HasPrefix(name, helperapi.DMPrefix) && !held[name] {
			leak("dm", name, "no running VM holds it")
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
		if !ok || !d.vmAlive(vm) || d.getHandles(vm).PID != pid {
			leak("process", strconv.Itoa(pid), fmt.Sprintf("a VMM of VM directory %s with no live VM", id))
		}
	}

	dirs, _ := os.ReadDir(d.layout.VMsDir())
	for _, e := range dirs {
		if _, ok := byID[e.Name()]; !ok {
			leak("vm-dir", filepath.Join(d.layout.VMsDir(), e.Name()), "no VM row")
		}
	}

	if br, err := netlink.LinkByName(d.cfg.Network.Bridge); err == nil {
		gw := d.cfg.Subnet().Addr().Next()
		addrs, _ := netlink.AddrList(br, netlink.FAMILY_V4)
		for _, a := range addrs {
			ip, _ := netip.AddrFromSlice(a.IP.To4())
			if ip != gw {
				leak("address", a.IPNet.String(), "on "+d.cfg.Network.Bridge+", not its gateway")
			}
		}
	}
	rep.OK = len(rep.Leaks) == 0
	return rep, nil
}
