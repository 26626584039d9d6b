package helper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/runner"
	"github.com/banger-dev/banger/internal/testutil"
)

func TestDMArgvBuilders(t *testing.T) {
	table := snapshotTable(2048, "/dev/loop0", "/dev/loop1", 8)
	if table != "0 2048 snapshot /dev/loop0 /dev/loop1 P 8" {
		t.Errorf("table = %q", table)
	}
	want := []string{"dmsetup", "create", "banger-a", "--table", "0 2048 snapshot /dev/loop0 /dev/loop1 P 8"}
	if got := dmsetupCreate("banger-a", table); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("create argv = %q", got)
	}
	if got := dmsetupRemove("banger-a"); strings.Join(got, "|") != "dmsetup|remove|--retry|banger-a" {
		t.Errorf("remove argv = %q", got)
	}
	if got := dmsetupTable("banger-a"); strings.Join(got, "|") != "dmsetup|table|banger-a" {
		t.Errorf("table argv = %q", got)
	}
}

// hookRunner is a Fake that also changes the fake sysfs the way the real
// command would change the real one.
type hookRunner struct {
	*runner.Fake
	after func(argv []string)
}

func (r hookRunner) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := r.Fake.Run(ctx, name, args...)
	if err == nil && r.after != nil {
		r.after(append([]string{name}, args...))
	}
	return out, err
}

// fakeSys is a /sys and /dev for the dm code: loop0 (base) and loop1 (cow)
// attached to files under the state root.
type fakeSys struct {
	sys, dev string
}

func writeFile(t *testing.T, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func newFakeSys(t *testing.T, state string) fakeSys {
	t.Helper()
	fs := fakeSys{sys: filepath.Join(t.TempDir(), "sys"), dev: filepath.Join(t.TempDir(), "dev")}
	for i, f := range []string{"rootfs.ext4", "cow.img"} {
		p := filepath.Join(state, f)
		writeFile(t, p, "")
		loop := "loop" + string(rune('0'+i))
		writeFile(t, filepath.Join(fs.sys, "block", loop, "loop", "backing_file"), p+"\n")
		writeFile(t, filepath.Join(fs.sys, "block", loop, "size"), "2048\n")
		writeFile(t, filepath.Join(fs.sys, "block", loop, "dev"), "7:"+string(rune('0'+i))+"\n")
	}
	if err := os.MkdirAll(filepath.Join(fs.dev, "mapper"), 0o755); err != nil {
		t.Fatal(err)
	}
	return fs
}

// makeDMNode puts dm-0 in the fake /dev: a real block device node when
// root, else a plain file (which the helper must refuse to chown).
func (fs fakeSys) makeDMNode(t *testing.T) {
	p := filepath.Join(fs.dev, "dm-0")
	if os.Geteuid() == 0 {
		if err := unix.Mknod(p, unix.S_IFBLK|0o600, int(unix.Mkdev(253, 0))); err != nil {
			t.Fatal(err)
		}
		return
	}
	writeFile(t, p, "")
}

// dm.snapshot.create and remove through runner.Fake: the exact argv, the
// measure step (an existing device with the same table is kept, one with
// another table is a conflict) and the chown of the node.
func TestDMSnapshotFake(t *testing.T) {
	fake := &runner.Fake{}
	var fs fakeSys
	hr := hookRunner{Fake: fake, after: func(argv []string) {
		switch argv[1] {
		case "create":
			writeFile(t, filepath.Join(fs.sys, "block", "dm-0", "dm", "name"), argv[2]+"\n")
			writeFile(t, filepath.Join(fs.sys, "block", "dm-0", "dev"), "253:0\n")
			for _, s := range []string{"loop0", "loop1"} {
				writeFile(t, filepath.Join(fs.sys, "block", "dm-0", "slaves", s), "")
			}
		case "remove":
			os.RemoveAll(filepath.Join(fs.sys, "block", "dm-0"))
		}
	}}
	var hs *harness
	hs = startHelper(t, func(c *Config) {
		c.Runner = hr
		fs = newFakeSys(t, c.StateDirs[0])
		c.SysRoot, c.DevRoot = fs.sys, fs.dev
	})
	fs.makeDMNode(t)
	ctx := context.Background()
	p := helperapi.DMSnapshotCreateParams{Name: "banger-t1", BaseDevice: "/dev/loop0", COWDevice: "/dev/loop1", UID: 65534}

	fake.Expect("dmsetup", "create", "banger-t1", "--table", "0 2048 snapshot /dev/loop0 /dev/loop1 P 8")
	fake.Expect("dmsetup", "table", "banger-t1").Returns("0 2048 snapshot 7:0 7:1 P 8\n")
	res, err := hs.client.CreateDMSnapshot(ctx, p)
	if os.Geteuid() != 0 {
		// A non-root caller's loop devices are checked with LOOP_GET_STATUS64
		// on the real node, which a fake /dev cannot answer: refused, and
		// nothing run.
		if err == nil || len(fake.Calls) != 0 {
			t.Fatalf("non-root caller over fake loops: %v, commands %q", err, fake.Calls)
		}
		t.Skip("the rest needs root (the caller must be root to skip the loop ioctls; a real device node in the fake /dev)")
	}
	if err != nil {
		t.Fatal(err)
	}
	want := helperapi.DMSnapshotResult{Name: "banger-t1", Device: "/dev/mapper/banger-t1", Node: "/dev/dm-0", Sectors: 2048, Created: true}
	if res != want {
		t.Errorf("result %+v, want %+v", res, want)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(fs.dev, "dm-0"), &st); err != nil || st.Uid != 65534 {
		t.Errorf("dm-0 owner %d, %v; want 65534", st.Uid, err)
	}

	// Again: measured as present with the same table; nothing created.
	fake.Expect("dmsetup", "table", "banger-t1").Returns("0 2048 snapshot 7:0 7:1 P 8\n")
	if res, err = hs.client.CreateDMSnapshot(ctx, p); err != nil || res.Created {
		t.Errorf("second create: %+v, %v", res, err)
	}
	// Present with another table: conflict, nothing changed.
	fake.Expect("dmsetup", "table", "banger-t1").Returns("0 2048 snapshot 7:0 7:1 P 16\n")
	_, err = hs.client.CreateDMSnapshot(ctx, p)
	wantCode(t, "create over a different table", err, rpc.CodeConflict)

	// chown.device by mapper name and by node.
	if r, err := hs.client.ChownDevice(ctx, "/dev/mapper/banger-t1", 0); err != nil || r.Node != "/dev/dm-0" {
		t.Errorf("chown by name: %+v, %v", r, err)
	}
	if r, err := hs.client.ChownDevice(ctx, "/dev/dm-0", 65534); err != nil || r.Node != "/dev/dm-0" {
		t.Errorf("chown by node: %+v, %v", r, err)
	}

	// Remove, then remove again (nothing to do, no command).
	fake.Expect("dmsetup", "remove", "--retry", "banger-t1")
	if r, err := hs.client.RemoveDMSnapshot(ctx, "banger-t1"); err != nil || !r.Deleted {
		t.Errorf("remove: %+v, %v", r, err)
	}
	if r, err := hs.client.RemoveDMSnapshot(ctx, "banger-t1"); err != nil || r.Deleted {
		t.Errorf("second remove: %+v, %v", r, err)
	}
	want2 := [][]string{
		{"dmsetup", "create", "banger-t1", "--table", "0 2048 snapshot /dev/loop0 /dev/loop1 P 8"},
		{"dmsetup", "table", "banger-t1"},
		{"dmsetup", "table", "banger-t1"},
		{"dmsetup", "table", "banger-t1"},
		{"dmsetup", "remove", "--retry", "banger-t1"},
	}
	if unmet := fake.Unmet(); len(unmet) > 0 {
		t.Errorf("expected commands not run: %q", unmet)
	}
	if toJSON(fake.Calls) != toJSON(want2) {
		t.Errorf("commands\n got %q\nwant %q", fake.Calls, want2)
	}
}

// A dm device that is not banger's (its name) is never chowned, and a
// non-root caller may only touch devices built on its own files.
func TestDMForeignRefused(t *testing.T) {
	var fs fakeSys
	hs := startHelper(t, func(c *Config) {
		fs = newFakeSys(t, c.StateDirs[0])
		c.SysRoot, c.DevRoot = fs.sys, fs.dev
	})
	writeFile(t, filepath.Join(fs.sys, "block", "dm-3", "dm", "name"), "vg0-root\n")
	writeFile(t, filepath.Join(fs.sys, "block", "dm-3", "dev"), "253:3\n")
	_, err := hs.client.ChownDevice(context.Background(), "/dev/dm-3", 0)
	wantCode(t, "chown of a foreign dm device", err, rpc.CodeForbidden)

	// Built on a loop device whose file is outside the roots.
	writeFile(t, filepath.Join(fs.sys, "block", "dm-4", "dm", "name"), "banger-x\n")
	writeFile(t, filepath.Join(fs.sys, "block", "dm-4", "slaves", "loop5"), "")
	writeFile(t, filepath.Join(fs.sys, "block", "loop5", "loop", "backing_file"), "/srv/other.img\n")
	caller := rpc.PeerCred{UID: 1000, GID: 1000}
	if err := hs.h.checkDMOwned(caller, "banger-x", "dm-4"); rpc.CodeOf(err) != rpc.CodeForbidden {
		t.Errorf("dm on a foreign loop: %v", err)
	}
	// Built on something else than loops.
	writeFile(t, filepath.Join(fs.sys, "block", "dm-5", "slaves", "sda"), "")
	if err := hs.h.checkDMOwned(caller, "banger-y", "dm-5"); rpc.CodeOf(err) != rpc.CodeForbidden {
		t.Errorf("dm on sda: %v", err)
	}
	// A loop of the root's files but another owner's: refused for a
	// non-root caller (the fake files belong to the test's uid).
	other := rpc.PeerCred{UID: uint32(os.Getuid()) + 1}
	if _, err := hs.h.checkLoopOwned(other, "device", "loop0", false); rpc.CodeOf(err) != rpc.CodeForbidden {
		t.Errorf("loop of another owner: %v", err)
	}
	if len(hs.fake.Calls) > 0 {
		t.Errorf("commands ran: %q", hs.fake.Calls)
	}
}

// The real thing, where the kernel has device-mapper.
func TestDMSnapshotReal(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := os.Stat("/dev/mapper/control"); err != nil {
		t.Skip("this kernel has no device-mapper: /dev/mapper/control is absent (dm_mod not loaded or not built)")
	}
	if misc, err := os.ReadFile("/proc/misc"); err != nil || !strings.Contains(string(misc), "device-mapper") {
		t.Skip("this kernel has no device-mapper: no device-mapper in /proc/misc")
	}
	testutil.RequireTool(t, "dmsetup")
	hs := startHelper(t, func(c *Config) { c.Runner = &runner.Exec{} })
	ctx := context.Background()
	base := filepath.Join(hs.stateDir, "base.img")
	cow := filepath.Join(hs.stateDir, "cow.img")
	for _, f := range []string{base, cow} {
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(f, 8<<20); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { testutil.NoLoopsUnder(t, hs.stateDir) })
	bl, err := hs.client.AttachLoop(ctx, base, true)
	if err != nil {
		t.Fatal(err)
	}
	defer hs.client.DetachLoop(ctx, bl.Device)
	cl, err := hs.client.AttachLoop(ctx, cow, false)
	if err != nil {
		t.Fatal(err)
	}
	defer hs.client.DetachLoop(ctx, cl.Device)
	name := helperapi.SnapshotName(fmt.Sprintf("test-%d", os.Getpid()))
	p := helperapi.DMSnapshotCreateParams{Name: name, BaseDevice: bl.Device, COWDevice: cl.Device, UID: 65534}
	res, err := hs.client.CreateDMSnapshot(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	defer hs.client.RemoveDMSnapshot(ctx, name)
	var st unix.Stat_t
	if err := unix.Stat(res.Node, &st); err != nil || st.Uid != 65534 {
		t.Errorf("%s owner %d, %v", res.Node, st.Uid, err)
	}
	if r, err := hs.client.CreateDMSnapshot(ctx, p); err != nil || r.Created {
		t.Errorf("second create: %+v, %v", r, err)
	}
	// The base loop is held by the snapshot: detaching it is a conflict.
	if _, err := hs.client.DetachLoop(ctx, bl.Device); !errors.Is(err, rpc.ErrConflict) {
		t.Errorf("detach of a held loop: %v", err)
	}
	if r, err := hs.client.RemoveDMSnapshot(ctx, name); err != nil || !r.Deleted {
		t.Errorf("remove: %+v, %v", r, err)
	}
}
