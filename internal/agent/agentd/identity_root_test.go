package agentd

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/testutil"
)

// arpFrame is an ARP frame as a packet socket on the peer saw it.
type arpFrame struct {
	at             time.Time
	dst, src       net.HardwareAddr
	op             uint16
	senderHW       net.HardwareAddr
	senderIP       netip.Addr
	targetHW       net.HardwareAddr
	targetIP       netip.Addr
	payload        []byte
	ethertypeIsARP bool
}

func (f arpFrame) String() string {
	return fmt.Sprintf("%s > %s op %d who-has %s tell %s (%s)", f.src, f.dst, f.op, f.targetIP, f.senderIP, f.senderHW)
}

// garp reports whether f is the gratuitous ARP of ip from hw.
func (f arpFrame) garp(hw net.HardwareAddr, ip netip.Addr) bool {
	return f.ethertypeIsARP && bytes.Equal(f.dst, net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) && bytes.Equal(f.src, hw) &&
		f.op == 1 && bytes.Equal(f.senderHW, hw) && f.senderIP == ip && f.targetIP == ip && bytes.Equal(f.targetHW, make([]byte, 6))
}

// arpCapture receives every ARP frame arriving on a link (an AF_PACKET
// socket bound to it), from its start until the test ends.
type arpCapture struct {
	frames chan arpFrame
	fd     int
}

func captureARP(t *testing.T, ifindex int) *arpCapture {
	t.Helper()
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		t.Fatalf("packet socket: %v", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: ifindex}); err != nil {
		unix.Close(fd)
		t.Fatalf("binding the packet socket to link %d: %v", ifindex, err)
	}
	// A receive timeout lets the reader see the socket closed.
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 50000}); err != nil {
		t.Fatal(err)
	}
	c := &arpCapture{frames: make(chan arpFrame, 256), fd: fd}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil || n < 14+28 {
				continue
			}
			b := buf[:n]
			p := bytes.Clone(b[14 : 14+28])
			sip, _ := netip.AddrFromSlice(p[14:18])
			tip, _ := netip.AddrFromSlice(p[24:28])
			c.frames <- arpFrame{at: time.Now(), dst: bytes.Clone(b[0:6]), src: bytes.Clone(b[6:12]), ethertypeIsARP: b[12] == 0x08 && b[13] == 0x06,
				op: uint16(p[6])<<8 | uint16(p[7]), senderHW: p[8:14], senderIP: sip, targetHW: p[18:24], targetIP: tip, payload: p}
		}
	}()
	t.Cleanup(func() { close(stop); <-done; unix.Close(fd) })
	return c
}

// waitGARP waits for the gratuitous ARP of ip from hw and returns every
// ARP frame seen until it came and for settle after.
func (c *arpCapture) waitGARP(t *testing.T, hw net.HardwareAddr, ip netip.Addr, settle time.Duration) []arpFrame {
	t.Helper()
	var seen []arpFrame
	deadline := time.After(10 * time.Second)
	for {
		select {
		case f := <-c.frames:
			seen = append(seen, f)
			if f.garp(hw, ip) {
				return append(seen, c.drain(settle)...)
			}
		case <-deadline:
			t.Fatalf("no gratuitous ARP of %s from %s on the peer in 10 s; saw %v", ip, hw, seen)
		}
	}
}

// drain returns the frames seen within d.
func (c *arpCapture) drain(d time.Duration) []arpFrame {
	var seen []arpFrame
	end := time.After(d)
	for {
		select {
		case f := <-c.frames:
			seen = append(seen, f)
		case <-end:
			return seen
		}
	}
}

func mustLink(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func ipnet(s string) *net.IPNet {
	p := netip.MustParsePrefix(s)
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// linkState is what identity changes on the guest's link, as the kernel
// has it.
type linkState struct {
	mac    string
	up     bool
	addrs  []string // IPv4, as prefixes
	routes []string // IPv4 of every table but local: "dst via gw src"
	neighs []string // IPv4 and IPv6
}

func stateOf(t *testing.T, name string) linkState {
	t.Helper()
	l := mustLink(t, name)
	st := linkState{mac: l.Attrs().HardwareAddr.String(), up: l.Attrs().Flags&net.FlagUp != 0}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		st.addrs = append(st.addrs, a.IPNet.String())
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{LinkIndex: l.Attrs().Index, Table: unix.RT_TABLE_UNSPEC},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Table == unix.RT_TABLE_LOCAL {
			continue
		}
		dst := "default"
		if r.Dst != nil && !isDefault(r) {
			dst = r.Dst.String()
		}
		s := dst
		if r.Gw != nil {
			s += " via " + r.Gw.String()
		}
		if r.Src != nil {
			s += " src " + r.Src.String()
		}
		st.routes = append(st.routes, s)
	}
	slices.Sort(st.routes)
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		neighs, err := netlink.NeighList(l.Attrs().Index, family)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range neighs {
			// The kernel's own entries for multicast groups (IPv6's MLD
			// reports, made as the link comes up) are no snapshot's.
			if n.IP.IsMulticast() {
				continue
			}
			st.neighs = append(st.neighs, n.IP.String())
		}
	}
	return st
}

// eui64LinkLocal is the fe80:: address the kernel makes from hw.
func eui64LinkLocal(hw net.HardwareAddr) netip.Addr {
	a := [16]byte{0xfe, 0x80}
	copy(a[8:], []byte{hw[0] ^ 2, hw[1], hw[2], 0xff, 0xfe, hw[3], hw[4], hw[5]})
	return netip.AddrFrom16(a)
}

// waitLinkLocal waits for link name to have the link-local address of hw
// (the kernel adds it once the link is operational) and checks it has no
// other.
func waitLinkLocal(t *testing.T, name string, hw net.HardwareAddr) {
	t.Helper()
	if _, err := os.Stat("/proc/sys/net/ipv6/conf/" + name); err != nil {
		t.Logf("no IPv6 on %s: link-local address not checked", name)
		return
	}
	want := eui64LinkLocal(hw)
	var got []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		addrs, err := netlink.AddrList(mustLink(t, name), netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		got = got[:0]
		found := false
		for _, a := range addrs {
			got = append(got, a.IP.String())
			found = found || a.IP.Equal(want.AsSlice())
		}
		if found && len(got) == 1 {
			return
		}
	}
	t.Errorf("%s's IPv6 addresses %v, want only %s (made from the new MAC)", name, got, want)
}

// The network steps for real, in a network namespace of the test's own: a
// veth pair whose one end is the guest's link, with the snapshot's MAC,
// address, routes and neighbours, and whose other end is the host's side,
// where a packet socket captures the gratuitous ARP. The RNG step runs for
// real too (it only adds entropy); the clock and the host name are the
// recording fakes (the host's must not change).
func TestIdentityNetworkRoot(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	guest := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "guest0", HardwareAddr: net.HardwareAddr{2, 0, 0xa, 1, 0, 9}}, PeerName: "peer0"}
	if err := netlink.LinkAdd(guest); err != nil {
		t.Fatalf("adding the veth pair: %v", err)
	}
	peer := mustLink(t, "peer0")
	for _, l := range []netlink.Link{mustLink(t, "guest0"), peer} {
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	gl := mustLink(t, "guest0")
	// The snapshot's network: its address, default route and another
	// route, neighbours of both families.
	if err := netlink.AddrAdd(gl, &netlink.Addr{IPNet: ipnet("10.1.0.9/16")}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*netlink.Route{
		{LinkIndex: gl.Attrs().Index, Dst: ipnet("0.0.0.0/0"), Gw: net.IPv4(10, 1, 0, 1).To4()},
		{LinkIndex: gl.Attrs().Index, Dst: ipnet("192.168.50.0/24"), Gw: net.IPv4(10, 1, 0, 1).To4()},
	} {
		if err := netlink.RouteAdd(r); err != nil {
			t.Fatalf("route %s: %v", r, err)
		}
	}
	addNeighbours := func() {
		t.Helper()
		for _, ip := range []string{"10.1.0.77", "fe80::77"} {
			n := &netlink.Neigh{LinkIndex: gl.Attrs().Index, IP: net.ParseIP(ip), HardwareAddr: net.HardwareAddr{2, 0xaa, 0, 0, 0, 0x77},
				State: netlink.NUD_PERMANENT}
			if err := netlink.NeighSet(n); err != nil {
				t.Fatalf("neighbour %s: %v", ip, err)
			}
		}
	}
	addNeighbours()
	before := stateOf(t, "guest0")
	t.Logf("the snapshot's link: %+v", before)
	if len(before.neighs) != 2 || len(before.routes) != 3 {
		t.Fatalf("the setup did not take: %+v", before)
	}
	capture := captureARP(t, peer.Attrs().Index)

	srv, fakes, log := identityServer(t, guestRoot(t))
	srv.AddEntropy = nil // the real RNDADDENTROPY and RNDRESEEDCRNG
	s := startSession(t, srv)
	entropy := make([]byte, 64)
	rand.Read(entropy)
	newMAC := net.HardwareAddr{2, 0, 0xa, 1, 0, 5}
	newIP := netip.MustParseAddr("10.1.0.5")
	when := time.Now()
	req := agent.IdentityRequest{Hostname: "clone-5", MAC: newMAC, Address: netip.PrefixFrom(newIP, 16), Gateway: netip.MustParseAddr("10.1.0.1"),
		Entropy: entropy, Time: when}
	res, err := agent.Identity(testCtx(t), stream(t, s), req)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{agent.StepClock, agent.StepEntropy, agent.StepHostname, agent.StepMAC, agent.StepAddress}
	// The link came up again in the MAC step: whether the kernel has
	// marked it running (linkwatch's work) by the address step's
	// announcement is a race, so the ARP may go out from the deferred
	// announcement; it goes out either way.
	if strings.Join(res.Steps(), ",") != strings.Join(want, ",") || res.Interface != "guest0" {
		t.Errorf("result %+v, want steps %v on guest0", res, want)
	}
	t.Logf("announcement deferred: %v", res.AnnounceDeferred)
	for _, st := range res.Applied {
		t.Logf("step %s: %d µs", st.Step, st.DurationUS)
	}
	t.Logf("identity in the agent: %d µs", res.DurationUS)
	fakes.mu.Lock()
	if len(fakes.clock) != 1 || !fakes.clock[0].Equal(when) || len(fakes.hostname) != 1 || fakes.hostname[0] != "clone-5" {
		t.Errorf("clock %v, hostname %v", fakes.clock, fakes.hostname)
	}
	fakes.mu.Unlock()

	frames := capture.waitGARP(t, newMAC, newIP, 200*time.Millisecond)
	for _, f := range frames {
		t.Logf("peer saw: %s", f)
		if f.senderIP == netip.MustParseAddr("10.1.0.9") || bytes.Equal(f.senderHW, before.macHW(t)) {
			t.Errorf("an ARP frame for the snapshot's identity went out: %s", f)
		}
	}
	wantState := linkState{mac: newMAC.String(), up: true, addrs: []string{"10.1.0.5/16"},
		routes: []string{"10.1.0.0/16 src 10.1.0.5", "default via 10.1.0.1"}}
	if got := stateOf(t, "guest0"); fmt.Sprint(got) != fmt.Sprint(wantState) {
		t.Errorf("after identity:\n got %+v\nwant %+v", got, wantState)
	}
	waitLinkLocal(t, "guest0", newMAC)
	waitLog(t, log, `"applied":"clock,entropy,hostname,mac,address","interface":"guest0","op":"identity"`, 1)

	// Again: idempotent (the same state, one address, announced again).
	if res, err = agent.Identity(testCtx(t), stream(t, s), req); err != nil {
		t.Fatal(err)
	}
	capture.waitGARP(t, newMAC, newIP, 0)
	if got := stateOf(t, "guest0"); fmt.Sprint(got) != fmt.Sprint(wantState) {
		t.Errorf("after identity again:\n got %+v\nwant %+v", got, wantState)
	}

	// The address alone: no MAC change, so no down and up of the link to
	// flush the neighbours: the address step does.
	addNeighbours()
	res, err = agent.Identity(testCtx(t), stream(t, s), agent.IdentityRequest{Address: netip.MustParsePrefix("10.1.0.6/16")})
	if err != nil || strings.Join(res.Steps(), ",") != agent.StepAddress {
		t.Fatalf("%+v %v", res, err)
	}
	capture.waitGARP(t, newMAC, netip.MustParseAddr("10.1.0.6"), 0)
	wantState = linkState{mac: newMAC.String(), up: true, addrs: []string{"10.1.0.6/16"}, routes: []string{"10.1.0.0/16 src 10.1.0.6"}}
	if got := stateOf(t, "guest0"); fmt.Sprint(got) != fmt.Sprint(wantState) {
		t.Errorf("after an address-only identity:\n got %+v\nwant %+v", got, wantState)
	}
}

func (s linkState) macHW(t *testing.T) net.HardwareAddr {
	hw, err := net.ParseMAC(s.mac)
	if err != nil {
		t.Fatal(err)
	}
	return hw
}

// A restored VM's link has no carrier during identity (bangerd brings the
// VMM's link up after it): the gratuitous ARP would be dropped, so the
// agent answers at once and sends it when the carrier comes. A newer
// identity supersedes a waiting one.
func TestIdentityAnnounceDeferredRoot(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "guest0", HardwareAddr: net.HardwareAddr{2, 0, 0xa, 1, 0, 9}},
		PeerName: "peer0"}); err != nil {
		t.Fatalf("adding the veth pair: %v", err)
	}
	peer := mustLink(t, "peer0")
	gl := mustLink(t, "guest0")
	// The guest's end up, the host's down: the guest's has no carrier.
	if err := netlink.LinkSetUp(gl); err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(gl, &netlink.Addr{IPNet: ipnet("10.1.0.9/16")}); err != nil {
		t.Fatal(err)
	}
	// The default route tells identity which link is the guest's.
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: gl.Attrs().Index, Dst: ipnet("0.0.0.0/0"), Gw: net.IPv4(10, 1, 0, 1).To4()}); err != nil {
		t.Fatal(err)
	}
	capture := captureARP(t, peer.Attrs().Index)
	srv, _, log := identityServer(t, guestRoot(t))
	s := startSession(t, srv)

	mac6 := net.HardwareAddr{2, 0, 0xa, 1, 0, 6}
	res, err := agent.Identity(testCtx(t), stream(t, s), agent.IdentityRequest{MAC: mac6, Address: netip.MustParsePrefix("10.1.0.6/16"),
		Gateway: netip.MustParseAddr("10.1.0.1")})
	if err != nil || !res.AnnounceDeferred || res.Interface != "guest0" {
		t.Fatalf("%+v %v, want the announcement deferred", res, err)
	}
	waitLog(t, log, `"announce":"deferred until the link has a carrier"`, 1)
	// A newer identity while the link is still down supersedes it.
	res, err = agent.Identity(testCtx(t), stream(t, s), agent.IdentityRequest{Address: netip.MustParsePrefix("10.1.0.7/16")})
	if err != nil || !res.AnnounceDeferred {
		t.Fatalf("%+v %v, want the announcement deferred", res, err)
	}
	waitLog(t, log, `"msg":"agent identity announcement superseded"`, 1)

	// The host brings its side up: the guest's link has a carrier.
	upAt := time.Now()
	if err := netlink.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
	frames := capture.waitGARP(t, mac6, netip.MustParseAddr("10.1.0.7"), 300*time.Millisecond)
	garps := 0
	for _, f := range frames {
		t.Logf("peer saw, %v after the host's side came up: %s", f.at.Sub(upAt), f)
		if f.senderIP != netip.MustParseAddr("10.1.0.7") {
			t.Errorf("an ARP frame for another address: %s", f)
		}
		if f.garp(mac6, netip.MustParseAddr("10.1.0.7")) {
			garps++
		}
	}
	if garps != 1 {
		t.Errorf("%d gratuitous ARPs, want 1", garps)
	}
	waitLog(t, log, `"msg":"agent identity announced","interface":"guest0"`, 1)
}

// RNDADDENTROPY and RNDRESEEDCRNG for real, on the host's /dev/urandom:
// they only add entropy to the pool and reseed.
func TestAddEntropyRoot(t *testing.T) {
	testutil.RequireRoot(t)
	b := make([]byte, 64)
	rand.Read(b)
	start := time.Now()
	if err := addEntropy(b); err != nil {
		t.Fatal(err)
	}
	t.Logf("RNDADDENTROPY of 64 bytes and RNDRESEEDCRNG: %v", time.Since(start))
	for _, n := range []int{agent.MinEntropy, agent.MaxEntropy} {
		if err := addEntropy(make([]byte, n)); err != nil {
			t.Errorf("%d bytes: %v", n, err)
		}
	}
}

// The real sethostname(2), in a UTS namespace of one thread's own (the
// host's name must not change).
func TestSethostnameRoot(t *testing.T) {
	testutil.RequireRoot(t)
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread, in its own UTS namespace, ends with
		// this goroutine.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWUTS); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		if err := sethostname("clone-9"); err != nil {
			errc <- err
			return
		}
		var u unix.Utsname
		if err := unix.Uname(&u); err != nil {
			errc <- err
			return
		}
		if got := unix.ByteSliceToString(u.Nodename[:]); got != "clone-9" {
			errc <- fmt.Errorf("uname says %q after sethostname(clone-9)", got)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if now, _ := os.Hostname(); now != host {
		t.Fatalf("the host's name changed from %q to %q", host, now)
	}
}

// The real clock_settime is refused without CAP_SYS_TIME, as forbidden (a
// thread that dropped root, when the test runs as root). The time given is
// the clock's own, in case. Nothing here sets the host's clock: identity's
// clock step is the Server's SetClock, a recording fake in these tests.
func TestSetClockNeedsCapability(t *testing.T) {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with it
		if os.Geteuid() == 0 {
			if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 65534, 65534, 65534); e != 0 {
				errc <- e
				return
			}
		}
		errc <- setClock(time.Now())
	}()
	if err := <-errc; !errors.Is(err, rpc.ErrForbidden) || !strings.Contains(err.Error(), "clock_settime") {
		t.Errorf("unprivileged clock_settime: %v, want forbidden", err)
	}
}

// A file that is a mount point (systemd's transient /etc/machine-id, a
// bind mount of /run/machine-id until it is committed) cannot be renamed
// over: identity rewrites it in place. Runs in the private mount namespace
// InNetNS gives the test.
func TestIdentityMountedMachineIDRoot(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	root := guestRoot(t)
	transient := filepath.Join(t.TempDir(), "machine-id")
	if err := os.WriteFile(transient, []byte("00112233445566778899aabbccddee00\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(root, etcMachineID)
	if err := unix.Mount(transient, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind-mounting over %s: %v", target, err)
	}
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	if err := renameInto(target, []byte("x\n"), 0o444); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("renaming over a mount point: %v, want EBUSY (else this test proves nothing)", err)
	}

	srv, _, _ := identityServer(t, root)
	s := startSession(t, srv)
	const id = "abcdefabcdefabcdefabcdefabcdef02"
	res, err := agent.Identity(testCtx(t), stream(t, s), agent.IdentityRequest{MachineID: id})
	if err != nil || strings.Join(res.Steps(), ",") != agent.StepMachineID {
		t.Fatalf("%+v %v", res, err)
	}
	if got := readFile(t, target); got != id+"\n" {
		t.Errorf("%s reads %q", target, got)
	}
	if got := readFile(t, transient); got != id+"\n" {
		t.Errorf("the mount's source %s reads %q (what systemd commits)", transient, got)
	}
	var st1, st2 unix.Stat_t
	unix.Stat(target, &st1)
	unix.Stat(transient, &st2)
	if st1.Ino != st2.Ino || st1.Dev != st2.Dev {
		t.Error("the mount point was replaced")
	}
	checkMode(t, target, 0o444)
	noTemps(t, filepath.Join(root, "etc"))
}
