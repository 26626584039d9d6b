package helper

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/testutil"
)

// Root tier: real netlink, nftables and loop devices. Everything that makes
// a link, an address or a rule runs in a network namespace of its own.

func TestBridgeAndTapNetNS(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	hs := startHelper(t)
	ctx := context.Background()

	// bridge.ensure: create, then again (nothing to do), then a new subnet.
	br, err := hs.client.EnsureBridge(ctx, helperapi.BridgeEnsureParams{Name: "banger0", CIDR: "10.77.0.1/24"})
	if err != nil || !br.Created {
		t.Fatalf("ensure bridge: %+v, %v", br, err)
	}
	if again, err := hs.client.EnsureBridge(ctx, helperapi.BridgeEnsureParams{Name: "banger0", CIDR: "10.77.0.1/24"}); err != nil || again.Created || again.Index != br.Index {
		t.Errorf("ensure bridge again: %+v, %v", again, err)
	}
	checkBridge(t, "banger0", "10.77.0.1/24")
	if _, err := hs.client.EnsureBridge(ctx, helperapi.BridgeEnsureParams{Name: "banger0", CIDR: "10.78.0.1/24"}); err != nil {
		t.Fatal(err)
	}
	checkBridge(t, "banger0", "10.78.0.1/24")

	// tap.create: created, owned, attached, up; then again.
	tp := helperapi.TapCreateParams{Name: "tap-pool-0", Bridge: "banger0", UID: 65534, GID: 65534}
	tap, err := hs.client.CreateTap(ctx, tp)
	if err != nil || !tap.Created {
		t.Fatalf("create tap: %+v, %v", tap, err)
	}
	if again, err := hs.client.CreateTap(ctx, tp); err != nil || again.Created || again.Index != tap.Index {
		t.Errorf("create tap again: %+v, %v", again, err)
	}
	l, err := netlink.LinkByName("tap-pool-0")
	if err != nil {
		t.Fatal(err)
	}
	tt, ok := l.(*netlink.Tuntap)
	switch {
	case !ok:
		t.Errorf("tap-pool-0 is a %s", l.Type())
	case tt.Mode != netlink.TUNTAP_MODE_TAP, tt.Owner != 65534, tt.Group != 65534, tt.NonPersist:
		t.Errorf("tap attrs: mode %v owner %d group %d nonpersist %v", tt.Mode, tt.Owner, tt.Group, tt.NonPersist)
	case tt.Flags&netlink.TUNTAP_VNET_HDR == 0, tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0:
		t.Errorf("tap flags %v", tt.Flags)
	}
	if l.Attrs().MasterIndex != br.Index {
		t.Errorf("tap master index %d, bridge index %d", l.Attrs().MasterIndex, br.Index)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("tap not up")
	}
	for file, want := range map[string]string{"owner": "65534", "group": "65534"} {
		raw, err := os.ReadFile(filepath.Join("/sys/class/net/tap-pool-0", file))
		if err != nil || strings.TrimSpace(string(raw)) != want {
			t.Errorf("/sys/class/net/tap-pool-0/%s = %q, %v; want %s", file, raw, err, want)
		}
	}
	// A tap detached from its bridge is re-attached by the next create.
	if err := netlink.LinkSetNoMaster(l); err != nil {
		t.Fatal(err)
	}
	if _, err := hs.client.CreateTap(ctx, tp); err != nil {
		t.Fatal(err)
	}
	if l, _ = netlink.LinkByName("tap-pool-0"); l.Attrs().MasterIndex != br.Index {
		t.Errorf("tap not re-attached")
	}

	// Conflicts: another owner, a non-tap or non-bridge of the name, no bridge.
	_, err = hs.client.CreateTap(ctx, helperapi.TapCreateParams{Name: "tap-pool-0", Bridge: "banger0", UID: 0, GID: 0})
	wantCode(t, "tap with another owner", err, rpc.CodeConflict)
	// A veth pair gives a link named like a tap and one named like a bridge.
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tap-dummy"}, PeerName: "banger9"}); err != nil {
		t.Fatal(err)
	}
	_, err = hs.client.CreateTap(ctx, helperapi.TapCreateParams{Name: "tap-dummy", Bridge: "banger0", UID: 0, GID: 0})
	wantCode(t, "tap over a veth", err, rpc.CodeConflict)
	_, err = hs.client.DeleteTap(ctx, "tap-dummy")
	wantCode(t, "tap.delete of a veth", err, rpc.CodeConflict)
	_, err = hs.client.EnsureBridge(ctx, helperapi.BridgeEnsureParams{Name: "banger9", CIDR: "10.79.0.1/24"})
	wantCode(t, "bridge over a veth", err, rpc.CodeConflict)
	_, err = hs.client.CreateTap(ctx, helperapi.TapCreateParams{Name: "tap-x", Bridge: "banger5", UID: 0, GID: 0})
	wantCode(t, "tap on a missing bridge", err, rpc.CodeNotFound)

	// Deletes, twice each.
	for _, del := range []func() (helperapi.DeleteResult, error){
		func() (helperapi.DeleteResult, error) { return hs.client.DeleteTap(ctx, "tap-pool-0") },
		func() (helperapi.DeleteResult, error) { return hs.client.DeleteBridge(ctx, "banger0") },
	} {
		if r, err := del(); err != nil || !r.Deleted {
			t.Errorf("delete: %+v, %v", r, err)
		}
		if r, err := del(); err != nil || r.Deleted {
			t.Errorf("delete again: %+v, %v", r, err)
		}
	}
	for _, n := range []string{"tap-pool-0", "banger0"} {
		if _, err := netlink.LinkByName(n); err == nil {
			t.Errorf("%s still exists", n)
		}
	}
}

func checkBridge(t *testing.T, name, cidr string) {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if l.Type() != "bridge" || l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("%s: type %s flags %v", name, l.Type(), l.Attrs().Flags)
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 1 || addrs[0].IPNet.String() != cidr {
		t.Errorf("%s addresses %v, want only %s", name, addrs, cidr)
	}
}

func TestNATNetNS(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	hs := startHelper(t)
	ctx := context.Background()
	if _, err := hs.client.EnsureBridge(ctx, helperapi.BridgeEnsureParams{Name: "banger0", CIDR: "10.77.0.1/24"}); err != nil {
		t.Fatal(err)
	}
	p := helperapi.NATEnsureParams{Subnet: "10.77.0.0/24", Bridge: "banger0"}
	r, err := hs.client.EnsureNAT(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if r.Table != "ip banger0" || !r.Created || !r.IPForwardEnabled {
		t.Errorf("first ensure: %+v (a fresh namespace starts with forwarding off)", r)
	}
	if r, err = hs.client.EnsureNAT(ctx, p); err != nil || r.Created || r.IPForwardEnabled {
		t.Errorf("second ensure: %+v, %v", r, err)
	}
	p.Egress = "eth0"
	if _, err = hs.client.EnsureNAT(ctx, p); err != nil {
		t.Fatal(err)
	}
	if raw, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(string(raw)) != "1" {
		t.Errorf("ip_forward = %q", raw)
	}

	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	if len(tables) != 1 || tables[0].Name != "banger0" {
		t.Fatalf("tables %v", tables)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	hooks := map[string]string{}
	for _, ch := range chains {
		hooks[ch.Name] = string(ch.Type)
		if ch.Hooknum == nil {
			t.Errorf("chain %s is not a base chain", ch.Name)
		}
	}
	if hooks["postrouting"] != "nat" || hooks["forward"] != "filter" || len(hooks) != 2 {
		t.Errorf("chains %v", hooks)
	}
	post, err := c.GetRules(tables[0], &nftables.Chain{Name: "postrouting", Table: tables[0]})
	if err != nil || len(post) != 1 {
		t.Fatalf("postrouting rules %v, %v", post, err)
	}
	var masq, oif bool
	for _, e := range post[0].Exprs {
		switch e := e.(type) {
		case *expr.Masq:
			masq = true
		case *expr.Cmp:
			if strings.TrimRight(string(e.Data), "\x00") == "eth0" {
				oif = true
			}
		}
	}
	if !masq || !oif {
		t.Errorf("postrouting rule lacks masquerade (%v) or the egress match (%v): %#v", masq, oif, post[0].Exprs)
	}
	if nft, err := exec.LookPath("nft"); err == nil {
		out, err := exec.Command(nft, "list", "table", "ip", "banger0").CombinedOutput()
		t.Logf("nft list table ip banger0:\n%s", out)
		for _, want := range []string{
			"ip saddr 10.77.0.0/24 ip daddr != 10.77.0.0/24 oifname \"eth0\" masquerade",
			"iifname \"banger0\" accept",
			"oifname \"banger0\" ct state established,related accept",
		} {
			if err != nil || !strings.Contains(string(out), want) {
				t.Errorf("nft does not show %q (%v)", want, err)
			}
		}
	}

	for i, want := range []bool{true, false} {
		if r, err := hs.client.DeleteNAT(ctx, "banger0"); err != nil || r.Deleted != want {
			t.Errorf("delete %d: %+v, %v", i, r, err)
		}
	}
	if tables, _ := c.ListTablesOfFamily(nftables.TableFamilyIPv4); len(tables) != 0 {
		t.Errorf("tables left: %v", tables)
	}
}

// envTapChild tells the test binary, re-run as uid 65534 inside the
// namespace, to open the tap through the helper on this socket.
const envTapChild = "BANGER_TEST_TAP_SOCKET"

// tapChild is the unprivileged VMM's side: it cannot open /dev/net/tun
// itself (0600 root here), but gets the tap from the helper.
func tapChild(sock string) {
	if _, err := os.OpenFile("/dev/net/tun", os.O_RDWR, 0); err != nil {
		fmt.Printf("CHILD direct open: %v\n", err)
	} else {
		fmt.Printf("CHILD direct open: ok\n")
	}
	f, _, err := helperapi.NewClient(sock).OpenTap(context.Background(), "tap-pool-1")
	if err != nil {
		fmt.Printf("CHILD tap.open: %v\n", err)
		return
	}
	defer f.Close()
	ifr, _ := unix.NewIfreq("")
	err = unix.IoctlIfreq(int(f.Fd()), unix.TUNGETIFF, ifr)
	fmt.Printf("CHILD uid=%d fd on %s (%v)\n", os.Getuid(), ifr.Name(), err)
}

func TestTapOpenNetNS(t *testing.T) {
	if sock := os.Getenv(envTapChild); sock != "" {
		tapChild(sock)
		return
	}
	if !testutil.InNetNS(t) {
		return
	}
	dir, err := os.MkdirTemp("/tmp", "banger-tapopen-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "helper.sock")
	hs := startHelperAt(t, sock, 0o666)
	ctx := context.Background()
	if _, err := hs.client.EnsureBridge(ctx, helperapi.BridgeEnsureParams{Name: "banger0", CIDR: "10.77.0.1/24"}); err != nil {
		t.Fatal(err)
	}
	if _, err := hs.client.CreateTap(ctx, helperapi.TapCreateParams{Name: "tap-pool-1", Bridge: "banger0", UID: 65534, GID: 65534}); err != nil {
		t.Fatal(err)
	}
	f, r, err := hs.client.OpenTap(ctx, "tap-pool-1")
	if err != nil {
		t.Fatal(err)
	}
	ifr, _ := unix.NewIfreq("")
	if err := unix.IoctlIfreq(int(f.Fd()), unix.TUNGETIFF, ifr); err != nil {
		t.Fatal(err)
	}
	if ifr.Name() != "tap-pool-1" || ifr.Uint16()&unix.IFF_TAP == 0 || ifr.Uint16()&unix.IFF_VNET_HDR == 0 || !r.VnetHdr {
		t.Errorf("passed fd is on %q flags %#x (%+v)", ifr.Name(), ifr.Uint16(), r)
	}
	// While it is open, the tap is busy.
	_, _, err = hs.client.OpenTap(ctx, "tap-pool-1")
	wantCode(t, "second open", err, rpc.CodeConflict)
	f.Close()

	// An unprivileged process (the VMM's user, owner of the tap) gets it.
	out := runAsNobody(t, dir, envTapChild+"="+sock)
	if !strings.Contains(out, "CHILD uid=65534 fd on tap-pool-1 (<nil>)") {
		t.Errorf("the unprivileged child did not get the tap")
	}
	if !strings.Contains(out, "CHILD direct open: ok") {
		t.Logf("(as on the development machines, /dev/net/tun is closed to 65534 here)")
	}
	// A tap that is not the caller's is refused to a non-root caller.
	if _, err := hs.client.CreateTap(ctx, helperapi.TapCreateParams{Name: "tap-root", Bridge: "banger0", UID: 0, GID: 0}); err != nil {
		t.Fatal(err)
	}
	if _, err := hs.h.callersTap(rpc.PeerCred{UID: 65534}, "tap-root"); rpc.CodeOf(err) != rpc.CodeForbidden {
		t.Errorf("foreign tap: %v", err)
	}
	if _, err := hs.h.tapDelete(ctx, rpc.PeerCred{UID: 65534}, helperapi.TapDeleteParams{Name: "tap-root"}); rpc.CodeOf(err) != rpc.CodeForbidden {
		t.Errorf("delete of a foreign tap: %v", err)
	}

	// It never creates a tap.
	_, _, err = hs.client.OpenTap(ctx, "tap-nosuch")
	wantCode(t, "open of a missing tap", err, rpc.CodeNotFound)
	if _, err := netlink.LinkByName("tap-nosuch"); err == nil {
		t.Errorf("tap.open created a tap")
	}
	if _, err := hs.client.DeleteTap(ctx, "tap-pool-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := hs.client.DeleteBridge(ctx, "banger0"); err != nil {
		t.Fatal(err)
	}
}

// Loop devices are global (no namespace): the test cleans up after itself
// and checks that nothing under its state root stays attached.
func TestLoopAttachDetach(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("no /dev/loop-control: this kernel has no loop driver")
	}
	hs := startHelper(t)
	t.Cleanup(func() { testutil.NoLoopsUnder(t, hs.stateDir) })
	ctx := context.Background()
	img := filepath.Join(hs.stateDir, "vms", "a", "cow.img")
	base := filepath.Join(hs.stateDir, "images", "default", "rootfs.ext4")
	for _, f := range []string{img, base} {
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(f, 16<<20); err != nil { // sparse
			t.Fatal(err)
		}
	}
	// A symlink that stays inside the root is fine.
	link := filepath.Join(hs.stateDir, "vms", "a", "base.link")
	if err := os.Symlink("../../images/default/rootfs.ext4", link); err != nil {
		t.Fatal(err)
	}

	rw, err := hs.client.AttachLoop(ctx, img, false)
	if err != nil {
		t.Fatal(err)
	}
	defer hs.client.DetachLoop(ctx, rw.Device)
	if rw.Existing || !strings.HasPrefix(rw.Device, "/dev/loop") {
		t.Errorf("attach: %+v", rw)
	}
	name := strings.TrimPrefix(rw.Device, "/dev/")
	checkSys := func(name, file, want string) {
		t.Helper()
		raw, err := os.ReadFile(filepath.Join("/sys/block", name, file))
		if err != nil || strings.TrimSpace(string(raw)) != want {
			t.Errorf("/sys/block/%s/%s = %q, %v; want %q", name, file, raw, err, want)
		}
	}
	checkSys(name, "loop/backing_file", img)
	checkSys(name, "ro", "0")
	if again, err := hs.client.AttachLoop(ctx, img, false); err != nil || again.Device != rw.Device || !again.Existing {
		t.Errorf("attach again: %+v, %v", again, err)
	}
	_, err = hs.client.AttachLoop(ctx, img, true)
	wantCode(t, "attach read-only what is attached read-write", err, rpc.CodeConflict)

	ro, err := hs.client.AttachLoop(ctx, link, true)
	if err != nil {
		t.Fatal(err)
	}
	defer hs.client.DetachLoop(ctx, ro.Device)
	checkSys(strings.TrimPrefix(ro.Device, "/dev/"), "loop/backing_file", base)
	checkSys(strings.TrimPrefix(ro.Device, "/dev/"), "ro", "1")
	if again, err := hs.client.AttachLoop(ctx, base, true); err != nil || again.Device != ro.Device {
		t.Errorf("attach by the real path: %+v, %v", again, err)
	}

	// The checks a non-root caller goes through, on real loop devices: its
	// own file passes (device and inode verified through the loop ioctl), a
	// file of another owner does not.
	if err := os.Chown(img, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	nobody := rpc.PeerCred{UID: 65534, GID: 65534}
	if _, err := hs.h.checkLoopOwned(nobody, "device", name, false); err != nil {
		t.Errorf("own loop for uid 65534: %v", err)
	}
	if _, err := hs.h.checkLoopOwned(nobody, "device", strings.TrimPrefix(ro.Device, "/dev/"), false); rpc.CodeOf(err) != rpc.CodeForbidden {
		t.Errorf("root's loop for uid 65534: %v", err)
	}

	// chown.device gives the node away; detach gives it back to root.
	if _, err := hs.client.ChownDevice(ctx, rw.Device, 65534); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(rw.Device, &st); err != nil || st.Uid != 65534 {
		t.Errorf("%s owner %d, %v", rw.Device, st.Uid, err)
	}

	for _, dev := range []string{rw.Device, ro.Device} {
		if r, err := hs.client.DetachLoop(ctx, dev); err != nil || !r.Deleted {
			t.Errorf("detach %s: %+v, %v", dev, r, err)
		}
		if r, err := hs.client.DetachLoop(ctx, dev); err != nil || r.Deleted {
			t.Errorf("detach %s again: %+v, %v", dev, r, err)
		}
		if _, err := os.Stat(filepath.Join("/sys/block", strings.TrimPrefix(dev, "/dev/"), "loop", "backing_file")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still attached", dev)
		}
	}
	if err := unix.Stat(rw.Device, &st); err == nil && st.Uid != 0 {
		t.Errorf("%s still owned by %d after detach", rw.Device, st.Uid)
	}

	// A loop device backed by a file outside the roots is not the helper's
	// to detach or chown.
	outside := filepath.Join(t.TempDir(), "other.img")
	if err := os.WriteFile(outside, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", outside).Output()
	if err != nil {
		t.Skipf("losetup to make a foreign loop device: %v", err)
	}
	foreign := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "-d", foreign).Run()
	_, err = hs.client.DetachLoop(ctx, foreign)
	wantCode(t, "detach a foreign loop", err, rpc.CodeForbidden)
	_, err = hs.client.ChownDevice(ctx, foreign, 65534)
	wantCode(t, "chown a foreign loop", err, rpc.CodeForbidden)
}
