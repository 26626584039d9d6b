package helper

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
)

// Hostile arguments sent straight over the real socket (the typed client
// would refuse them before sending) are refused with bad_request, and the
// host is left as it was: no link, no loop device, no command run.
func TestInjectionRefusedOverSocket(t *testing.T) {
	hs := startHelper(t)
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret.img")
	if err := os.WriteFile(secret, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	// Ways out of the state root that pass the pure path checks.
	if err := os.Symlink(secret, filepath.Join(hs.stateDir, "link.img")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(hs.stateDir, "linkdir")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(hs.stateDir, "passwd")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(hs.stateDir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(hs.stateDir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}

	names := []string{
		"", "/", "..", "../x", "a/b", "tap-a/../b", "tap- a", "tap-a\n", "tap-a\nb", "tap-a\x00", "tap-a\t", "tap-a\x1b[2J",
		"tap-" + strings.Repeat("a", 12), "tap-" + strings.Repeat("a", 300), "eth0", "lo", "docker0", "br0", "vethabc",
		"banger0;reboot", "$(reboot)", "`reboot`", "tap-a'b", "TAP-A",
	}
	type call struct {
		method string
		params any
	}
	var calls []call
	for _, n := range names {
		calls = append(calls,
			call{helperapi.MethodBridgeEnsure, helperapi.BridgeEnsureParams{Name: n, CIDR: "10.77.0.1/24"}},
			call{helperapi.MethodBridgeDelete, helperapi.BridgeDeleteParams{Name: n}},
			call{helperapi.MethodTapCreate, helperapi.TapCreateParams{Name: n, Bridge: "banger0", UID: 0, GID: 0}},
			call{helperapi.MethodTapCreate, helperapi.TapCreateParams{Name: "tap-ok", Bridge: n, UID: 0, GID: 0}},
			call{helperapi.MethodTapDelete, helperapi.TapDeleteParams{Name: n}},
			call{helperapi.MethodTapOpen, helperapi.TapOpenParams{Name: n}},
			call{helperapi.MethodNATEnsure, helperapi.NATEnsureParams{Subnet: "10.77.0.0/24", Bridge: n}},
			call{helperapi.MethodNATDelete, helperapi.NATDeleteParams{Bridge: n}},
			call{helperapi.MethodDMSnapshotCreate, helperapi.DMSnapshotCreateParams{Name: n, BaseDevice: "/dev/loop0", COWDevice: "/dev/loop1"}},
			call{helperapi.MethodDMSnapshotRemove, helperapi.DMSnapshotRemoveParams{Name: n}},
		)
	}
	for _, dev := range []string{"", "/dev/sda", "/dev/loop0/../sda", "/dev/loop-control", "/dev/loop0\n", "/dev/mapper/root",
		"/dev/mapper/banger-x/../../sda", "/dev/mapper/control", "/dev/null", "/etc/shadow", "loop0", "/dev/dm-0 ", "/dev/loop 0"} {
		calls = append(calls,
			call{helperapi.MethodChownDevice, helperapi.ChownDeviceParams{Device: dev, UID: 0}},
			call{helperapi.MethodDMSnapshotCreate, helperapi.DMSnapshotCreateParams{Name: "banger-x", BaseDevice: dev, COWDevice: "/dev/loop1"}},
			call{helperapi.MethodDMSnapshotCreate, helperapi.DMSnapshotCreateParams{Name: "banger-x", BaseDevice: "/dev/loop1", COWDevice: dev}},
		)
		if !strings.HasPrefix(dev, "/dev/mapper/") {
			calls = append(calls, call{helperapi.MethodLoopDetach, helperapi.LoopDetachParams{Device: dev}})
		}
	}
	for _, p := range []string{
		"", "relative.img", "./x.img", "/", "/etc/passwd", secret, // outside the root
		hs.stateDir + "/../outside.img", hs.stateDir + "/./x.img", hs.stateDir + "//x.img", hs.stateDir + "/x.img/", // not clean
		hs.stateDir + "/x\n.img", hs.stateDir + "/x\x00.img", hs.stateDir + "/" + strings.Repeat("a", 5000),
		filepath.Join(hs.stateDir, "link.img"),              // symlink pointing out
		filepath.Join(hs.stateDir, "linkdir", "secret.img"), // through a symlinked directory
		filepath.Join(hs.stateDir, "passwd"),                // symlink to a system file
		filepath.Join(hs.stateDir, "adir"),                  // not a regular file
		filepath.Join(hs.stateDir, "fifo"),                  // not a regular file
		hs.stateDir,                                         // the root itself
	} {
		calls = append(calls,
			call{helperapi.MethodLoopAttach, helperapi.LoopAttachParams{Path: p}},
			call{helperapi.MethodLoopAttach, helperapi.LoopAttachParams{Path: p, ReadOnly: true}},
		)
	}
	for _, c := range []string{"10.77.0.1", "10.77.0.0/24", "0.0.0.0/0", "10.77.0.1/24\n", "10.77.0.1/24 dev eth0", "fd00::1/64"} {
		calls = append(calls, call{helperapi.MethodBridgeEnsure, helperapi.BridgeEnsureParams{Name: "banger0", CIDR: c}})
	}
	for _, s := range []string{"10.77.0.1/24", "0.0.0.0/0", "10.77.0.0/24; flush ruleset", "10.77.0.0/24\n"} {
		calls = append(calls, call{helperapi.MethodNATEnsure, helperapi.NATEnsureParams{Subnet: s, Bridge: "banger0"}})
	}
	for _, e := range []string{"eth0 ", "eth0\n", "eth0/..", "..", "banger0", strings.Repeat("e", 16), "eth0\"; flush ruleset"} {
		calls = append(calls, call{helperapi.MethodNATEnsure, helperapi.NATEnsureParams{Subnet: "10.77.0.0/24", Bridge: "banger0", Egress: e}})
	}
	// Malformed params: unknown fields, wrong types, negative ids.
	calls = append(calls,
		call{helperapi.MethodTapCreate, map[string]any{"name": "tap-a", "bridge": "banger0", "uid": -1, "gid": 0}},
		call{helperapi.MethodTapCreate, map[string]any{"name": "tap-a", "bridge": "banger0", "uid": "0", "gid": 0}},
		call{helperapi.MethodLoopAttach, map[string]any{"path": hs.stateDir + "/x.img", "offset": 4096}},
		call{helperapi.MethodDMSnapshotCreate, map[string]any{"name": "banger-x", "base_device": "/dev/loop0", "cow_device": "/dev/loop1", "table": "0 1 linear /dev/sda 0"}},
		call{helperapi.MethodVersion, map[string]any{"x": 1}},
		call{helperapi.MethodBridgeEnsure, []string{"banger0"}},
	)

	before := snapshotHost(t)
	ctx := context.Background()
	for _, c := range calls {
		err := hs.raw(ctx, c.method, c.params)
		what := c.method + " " + strings.ReplaceAll(strings.TrimSpace(strings.ReplaceAll(toJSON(c.params), "\n", `\n`)), "\x00", `\0`)
		if len(what) > 200 {
			what = what[:200] + "..."
		}
		wantCode(t, what, err, rpc.CodeBadRequest)
	}
	snapshotHost(t).diff(t, before)
	if len(hs.fake.Calls) > 0 {
		t.Errorf("commands ran: %q", hs.fake.Calls)
	}
	t.Logf("%d hostile calls refused", len(calls))
}

// Arguments that are well-formed but point at something not banger's are
// refused without anything being run or changed.
func TestForeignObjectsRefused(t *testing.T) {
	hs := startHelper(t)
	ctx := context.Background()
	before := snapshotHost(t)
	// A dm snapshot over loop devices that are not backed by state-root
	// files: loop numbers no host has attached.
	err := hs.raw(ctx, helperapi.MethodDMSnapshotCreate, helperapi.DMSnapshotCreateParams{Name: "banger-x", BaseDevice: "/dev/loop999990", COWDevice: "/dev/loop999991"})
	wantCode(t, "dm over unattached loops", err, rpc.CodeNotFound)
	err = hs.raw(ctx, helperapi.MethodChownDevice, helperapi.ChownDeviceParams{Device: "/dev/loop999990", UID: 0})
	wantCode(t, "chown of unattached loop", err, rpc.CodeNotFound)
	err = hs.raw(ctx, helperapi.MethodChownDevice, helperapi.ChownDeviceParams{Device: "/dev/mapper/banger-nosuch", UID: 0})
	wantCode(t, "chown of missing dm", err, rpc.CodeNotFound)
	// Handing a device or a TAP to a uid the helper does not admit.
	err = hs.raw(ctx, helperapi.MethodChownDevice, helperapi.ChownDeviceParams{Device: "/dev/loop0", UID: 4242})
	wantCode(t, "chown to a foreign uid", err, rpc.CodeForbidden)
	err = hs.raw(ctx, helperapi.MethodTapCreate, helperapi.TapCreateParams{Name: "tap-x", Bridge: "banger0", UID: 4242})
	wantCode(t, "tap for a foreign uid", err, rpc.CodeForbidden)
	err = hs.raw(ctx, helperapi.MethodDMSnapshotCreate, helperapi.DMSnapshotCreateParams{Name: "banger-x", BaseDevice: "/dev/loop0", COWDevice: "/dev/loop1", UID: 4242})
	wantCode(t, "dm for a foreign uid", err, rpc.CodeForbidden)
	// A missing file under the root.
	err = hs.raw(ctx, helperapi.MethodLoopAttach, helperapi.LoopAttachParams{Path: filepath.Join(hs.stateDir, "nope.img")})
	wantCode(t, "missing file", err, rpc.CodeNotFound)
	// Deleting what is not there is fine (idempotent) and touches nothing.
	if r, err := hs.client.RemoveDMSnapshot(ctx, "banger-nosuch"); err != nil || r.Deleted {
		t.Errorf("remove of a missing snapshot: %+v, %v", r, err)
	}
	if r, err := hs.client.DetachLoop(ctx, "/dev/loop999990"); err != nil || r.Deleted {
		t.Errorf("detach of a missing loop: %+v, %v", r, err)
	}
	snapshotHost(t).diff(t, before)
	if len(hs.fake.Calls) > 0 {
		t.Errorf("commands ran: %q", hs.fake.Calls)
	}
}

// A file under the root that belongs to someone else than the (non-root)
// caller is refused: neither a hard link nor a symlinked state root can
// hand over another user's file.
func TestStateFileOwnerChecked(t *testing.T) {
	hs := startHelper(t)
	p := filepath.Join(hs.stateDir, "a.img")
	if err := os.WriteFile(p, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	owner := uint32(os.Getuid())
	caller := rpc.PeerCred{UID: owner + 1, GID: owner + 1, PID: 1}
	if _, _, err := hs.h.openStateFile(caller, p, true); rpc.CodeOf(err) != rpc.CodeForbidden {
		t.Errorf("foreign file: %v", err)
	}
	f, _, err := hs.h.openStateFile(rpc.PeerCred{UID: owner, GID: owner}, p, true)
	if err != nil {
		t.Fatalf("own file: %v", err)
	}
	f.Close()
	if err := hs.h.checkGID(caller, 12345); rpc.CodeOf(err) != rpc.CodeForbidden {
		t.Errorf("foreign gid: %v", err)
	}
	if err := hs.h.checkGID(caller, caller.GID); err != nil {
		t.Errorf("own gid: %v", err)
	}
}

func TestUnderRoots(t *testing.T) {
	roots := []string{"/var/lib/banger", "/home/me/.local/state/banger"}
	for p, want := range map[string]bool{
		"/var/lib/banger/vms/a/cow.img":           true,
		"/home/me/.local/state/banger/images/x":   true,
		"/var/lib/banger":                         false,
		"/var/lib/banger-other/x":                 false,
		"/var/lib/bangerx":                        false,
		"/var/lib/x":                              false,
		"/etc/passwd":                             false,
		"/home/me/.local/state/banger/../x":       false,
		"/home/me/.local/state/bangerevil/a.img":  false,
		"/home/me/.local/state/banger/vms/../../": false,
	} {
		if got := underRoots(p, roots); got != want {
			t.Errorf("underRoots(%q) = %v", p, got)
		}
	}
}
