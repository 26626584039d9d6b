package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/vmm"
)

// started is a harness whose VM has been started.
func started(t *testing.T) *harness {
	t.Helper()
	h := newHarness(t)
	if _, err := h.drv.Start(context.Background(), h.spec); err != nil {
		t.Fatal(err)
	}
	return h
}

func lastCalls(h *harness, n int) []string {
	c := h.api.Calls()
	if len(c) < n {
		return c
	}
	return c[len(c)-n:]
}

func TestPauseResume(t *testing.T) {
	h := started(t)
	ctx := context.Background()
	c := NewClient(h.spec.APISocket)
	defer c.Close()
	if err := h.drv.Pause(ctx, h.spec); err != nil {
		t.Fatal(err)
	}
	if b := h.api.Body("PATCH /vm"); !reflect.DeepEqual(b, map[string]any{"state": "Paused"}) {
		t.Fatalf("pause sent %v", b)
	}
	if info, err := c.Describe(ctx); err != nil || info.State != StatePaused {
		t.Fatalf("after Pause: %+v, %v", info, err)
	}
	if err := h.drv.Pause(ctx, h.spec); err != nil {
		t.Fatalf("pausing a paused VM: %v", err)
	}
	if err := h.drv.Resume(ctx, h.spec); err != nil {
		t.Fatal(err)
	}
	if b := h.api.Body("PATCH /vm"); !reflect.DeepEqual(b, map[string]any{"state": "Resumed"}) {
		t.Fatalf("resume sent %v", b)
	}
	if info, err := c.Describe(ctx); err != nil || info.State != StateRunning {
		t.Fatalf("after Resume: %+v, %v", info, err)
	}
}

func TestPauseNotRunning(t *testing.T) {
	h := newHarness(t)
	if err := h.drv.Pause(context.Background(), h.spec); !errors.Is(err, vmm.ErrNotRunning) || !strings.Contains(err.Error(), "PATCH /vm") {
		t.Fatalf("err = %v, want ErrNotRunning naming PATCH /vm", err)
	}
}

// snapFiles are absolute paths of a snapshot's two files in a directory
// of its own, as the daemon keeps them.
func snapFiles(t *testing.T) vmm.SnapshotFiles {
	dir := t.TempDir()
	return vmm.SnapshotFiles{State: filepath.Join(dir, "state"), Memory: filepath.Join(dir, "memory")}
}

func TestSnapshotOfPausedVM(t *testing.T) {
	h := started(t)
	ctx := context.Background()
	dst := snapFiles(t)
	if err := h.drv.Pause(ctx, h.spec); err != nil {
		t.Fatal(err)
	}
	if err := h.drv.Snapshot(ctx, h.spec, dst); err != nil {
		t.Fatal(err)
	}
	if got, want := lastCalls(h, 2), []string{"GET /", "PUT /snapshot/create"}; !slices.Equal(got, want) {
		t.Fatalf("calls %q, want %q", got, want)
	}
	want := map[string]any{"snapshot_type": "Full", "snapshot_path": dst.State, "mem_file_path": dst.Memory}
	if b := h.api.Body("PUT /snapshot/create"); !reflect.DeepEqual(b, want) {
		t.Fatalf("body %v, want %v", b, want)
	}
	for _, p := range []string{dst.State, dst.Memory} {
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", p, err)
		}
	}
	if info, _ := NewClient(h.spec.APISocket).Describe(ctx); info.State != StatePaused {
		t.Errorf("the guest is %q after the snapshot, want it still paused", info.State)
	}
}

// A running VM is refused before anything is asked of Firecracker, and so
// are files Firecracker cannot take.
func TestSnapshotRefusals(t *testing.T) {
	h := started(t)
	ctx := context.Background()
	n := len(h.api.Calls())
	err := h.drv.Snapshot(ctx, h.spec, snapFiles(t))
	if err == nil || !strings.Contains(err.Error(), "pause it first") {
		t.Fatalf("snapshot of a running VM: %v", err)
	}
	if got := h.api.Calls()[n:]; !slices.Equal(got, []string{"GET /"}) {
		t.Fatalf("calls %q: the running VM was asked for a snapshot", got)
	}
	for name, f := range map[string]vmm.SnapshotFiles{
		"no memory": {State: "/tmp/s"},
		"relative":  {State: "state", Memory: "/tmp/m"},
		"one file":  {State: "/tmp/x", Memory: "/tmp/./x"},
	} {
		if err := h.drv.Snapshot(ctx, h.spec, f); err == nil {
			t.Errorf("%s: accepted %+v", name, f)
		}
	}
	if got := h.api.Calls()[n:]; len(got) != 1 {
		t.Fatalf("refused files reached Firecracker: %q", got)
	}
}

// clone is a second VM, in its own directory with its own TAP, vsock and
// disks, for a restore of a's snapshot. Its disk files are named otherwise
// than a's, as the daemon names a clone's overlays.
func clone(t *testing.T) *harness {
	h := newHarness(t)
	h.spec.ID, h.spec.Name = "4567cdef", "clone"
	h.spec.TapName, h.spec.MAC = "tap-4567", "02:00:00:00:00:02"
	h.spec.VSockCID = 4
	for i, d := range h.spec.Disks {
		p := filepath.Join(h.dir, d.ID+"-9f8e7d6c.raw")
		if err := os.Rename(d.Path, p); err != nil {
			t.Fatal(err)
		}
		h.spec.Disks[i].Path = p
	}
	h.api = newFakeAPI(h.spec.ID, h.dir)
	h.api.strict = true
	return h
}

var restoreCalls = []string{
	"GET /", "GET /version",
	"PUT /logger", "PUT /metrics", "PUT /serial", "PUT /snapshot/load",
	"GET /", "GET /machine-config", "PATCH /vm", "GET /",
}

// A snapshot of one VM restored as another: the load comes before any boot
// resource, with the clone's TAP as eth0's override, the memory file as a
// File backend and resume_vm false; the guest is checked, then resumed.
// The snapshot recorded the drives and the vsock socket relative to the
// first VM's directory, so the clone's Firecracker, running in its own,
// opens its own disks and binds its own socket.
func TestRestoreAsAnotherVM(t *testing.T) {
	a := started(t)
	ctx := context.Background()
	snap := snapFiles(t)
	if err := a.drv.Pause(ctx, a.spec); err != nil {
		t.Fatal(err)
	}
	if err := a.drv.Snapshot(ctx, a.spec, snap); err != nil {
		t.Fatal(err)
	}

	b := clone(t)
	pid, err := b.drv.Restore(ctx, b.spec, snap)
	if err != nil {
		t.Fatal(err)
	}
	if pid != b.proc.pid || b.proc.exited() {
		t.Fatalf("pid %d, want the running %d", pid, b.proc.pid)
	}
	if got := b.api.Calls(); !slices.Equal(got, restoreCalls) {
		t.Fatalf("calls\n got %q\nwant %q", got, restoreCalls)
	}
	want := map[string]any{
		"snapshot_path":     snap.State,
		"mem_backend":       map[string]any{"backend_type": "File", "backend_path": snap.Memory},
		"network_overrides": []any{map[string]any{"iface_id": "eth0", "host_dev_name": "tap-4567"}},
		"vsock_override":    map[string]any{"uds_path": "vsock.sock"},
	}
	if got := b.api.Body("PUT /snapshot/load"); !reflect.DeepEqual(got, want) {
		t.Fatalf("load body\n got %v\nwant %v", got, want)
	}
	if got := b.api.Body("PUT /serial"); got["serial_out_path"] != b.spec.ConsolePath {
		t.Errorf("serial %v", got)
	}
	if got := b.api.Body("PATCH /vm"); got["state"] != "Resumed" {
		t.Errorf("resume %v", got)
	}
	l := b.api.Loaded()
	wantDrives := map[string]string{}
	for _, d := range b.spec.Disks {
		wantDrives[d.ID] = d.Path
	}
	for id, p := range l.Drives { // what Firecracker opens, links followed
		if r, err := filepath.EvalSymlinks(p); err == nil {
			l.Drives[id] = r
		}
	}
	if !reflect.DeepEqual(l.Drives, wantDrives) {
		t.Errorf("the restored guest opened\n %v\nwant the clone's\n %v", l.Drives, wantDrives)
	}
	if l.Nets[NetIfaceID] != "tap-4567" || l.Vsock == nil || l.Vsock.UDSPath != b.spec.VSockPath {
		t.Errorf("restored network %v, vsock %+v", l.Nets, l.Vsock)
	}
	if info, _ := NewClient(b.spec.APISocket).Describe(ctx); info.State != StateRunning {
		t.Errorf("restored guest is %q", info.State)
	}
}

// Firecracker 1.14 and 1.15 have no vsock_override: the body leaves it
// out, and the relative path the snapshot recorded gives the clone its own
// socket all the same.
func TestRestoreBefore116(t *testing.T) {
	a := started(t)
	ctx := context.Background()
	snap := snapFiles(t)
	_ = a.drv.Pause(ctx, a.spec)
	if err := a.drv.Snapshot(ctx, a.spec, snap); err != nil {
		t.Fatal(err)
	}
	b := clone(t)
	b.api.version = "1.14.0"
	if _, err := b.drv.Restore(ctx, b.spec, snap); err != nil {
		t.Fatal(err)
	}
	if got := b.api.Body("PUT /snapshot/load"); got["vsock_override"] != nil {
		t.Fatalf("vsock_override sent to 1.14: %v", got)
	}
	if l := b.api.Loaded(); l.Vsock == nil || l.Vsock.UDSPath != b.spec.VSockPath {
		t.Fatalf("vsock %+v, want the clone's %s", l.Vsock, b.spec.VSockPath)
	}
}

// A snapshot of another machine size is refused while it is paused: it
// never runs, and its Firecracker is killed.
func TestRestoreWrongMachineNeverRuns(t *testing.T) {
	a := started(t)
	ctx := context.Background()
	snap := snapFiles(t)
	_ = a.drv.Pause(ctx, a.spec)
	if err := a.drv.Snapshot(ctx, a.spec, snap); err != nil {
		t.Fatal(err)
	}
	b := clone(t)
	b.spec.MemoryMiB = 1024
	_, err := b.drv.Restore(ctx, b.spec, snap)
	if err == nil || !strings.Contains(err.Error(), "2 vCPUs and 512 MiB, the VM 2 and 1024") {
		t.Fatalf("err = %v", err)
	}
	if slices.Contains(b.api.Calls(), "PATCH /vm") {
		t.Fatalf("the wrong guest was resumed: %q", b.api.Calls())
	}
	b.assertKilled()
}

func TestRestoreLoadFails(t *testing.T) {
	a := started(t)
	ctx := context.Background()
	snap := snapFiles(t)
	_ = a.drv.Pause(ctx, a.spec)
	if err := a.drv.Snapshot(ctx, a.spec, snap); err != nil {
		t.Fatal(err)
	}
	b := clone(t)
	// The snapshot has a config drive; the clone has none.
	os.Remove(b.spec.Disks[2].Path)
	b.spec.Disks = b.spec.Disks[:2]
	_, err := b.drv.Restore(ctx, b.spec, snap)
	if err == nil || !strings.Contains(err.Error(), "snapshot load") || !strings.Contains(err.Error(), DriveLink("config")) {
		t.Fatalf("err = %v", err)
	}
	b.assertKilled()
}

func TestRestoreRefusesBeforeLaunch(t *testing.T) {
	for name, mut := range map[string]func(h *harness, f *vmm.SnapshotFiles){
		"missing state":  func(h *harness, f *vmm.SnapshotFiles) { os.Remove(f.State) },
		"missing memory": func(h *harness, f *vmm.SnapshotFiles) { os.Remove(f.Memory) },
		"no memory":      func(h *harness, f *vmm.SnapshotFiles) { f.Memory = "" },
		"missing disk":   func(h *harness, f *vmm.SnapshotFiles) { os.Remove(h.spec.Disks[1].Path) },
		"tap file":       func(h *harness, f *vmm.SnapshotFiles) { h.spec.TapFile = os.Stdin },
		"long tap":       func(h *harness, f *vmm.SnapshotFiles) { h.spec.TapName = "tap-0123456789ab" },
		"relative":       func(h *harness, f *vmm.SnapshotFiles) { f.State = "state" },
	} {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			h := newHarness(t)
			f := snapFiles(t)
			for _, p := range []string{f.State, f.Memory} {
				os.WriteFile(p, []byte("x"), 0o600)
			}
			mut(h, &f)
			if _, err := h.drv.Restore(context.Background(), h.spec, f); err == nil {
				t.Fatal("Restore accepted it")
			} else {
				t.Log(err)
			}
			if h.launches != 0 {
				t.Fatal("Restore launched firecracker")
			}
		})
	}
}

// Firecracker has no link control: SetLink does nothing, asks nothing,
// and says so by returning nil, as vmm.Snapshotter specifies.
func TestSetLinkIsNoOp(t *testing.T) {
	h := newHarness(t) // nothing serves the API socket
	for _, up := range []bool{false, true} {
		if err := h.drv.SetLink(context.Background(), h.spec, up); err != nil {
			t.Fatalf("SetLink(%v) = %v", up, err)
		}
	}
}

// Every body Start, Restore, Pause, Resume and Snapshot send, for each
// release banger drives, passes the spec's schema: the fake (strict)
// fails the test otherwise. This drives them all once more against the
// spec directly, so the check does not depend on the fake's routing.
func TestEveryBodyPassesTheSpec(t *testing.T) {
	h := newHarness(t)
	boot, err := Requests(h.spec, "Info")
	if err != nil {
		t.Fatal(err)
	}
	defs := map[string]string{}
	for p, e := range specEndpoints {
		defs[strings.TrimPrefix(p, "PUT ")] = e.def
	}
	check := func(path string, body any) {
		t.Helper()
		def, ok := defs[path]
		if !ok && strings.Count(path, "/") == 2 {
			def, ok = defs[path[:strings.LastIndex(path, "/")+1]]
		}
		if !ok {
			t.Fatalf("no spec endpoint for %s", path)
		}
		b, _ := json.Marshal(body)
		if err := checkBody(def, b); err != nil {
			t.Errorf("%s %s: %v", path, b, err)
		}
		for _, v := range []Version{MinVersion, VsockOverrideVersion} {
			if err := (bodyCheck{fcMode: true, version: v}).check(def, b); err != nil && !(v == MinVersion && strings.Contains(string(b), "vsock_override")) {
				t.Errorf("firecracker %s would refuse %s %s: %v", v, path, b, err)
			}
		}
	}
	for _, r := range boot {
		check(r.Path, r.Body)
	}
	for _, v := range []Version{MinVersion, {Major: 1, Minor: 15}, VsockOverrideVersion} {
		reqs, err := RestoreRequests(h.spec, snapFiles(t), "Info", v)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range reqs {
			check(r.Path, r.Body)
			if lp, ok := r.Body.(SnapshotLoadParams); ok && (lp.VsockOverride != nil) != !v.Less(VsockOverrideVersion) {
				t.Errorf("firecracker %s: vsock_override %+v", v, lp.VsockOverride)
			}
		}
	}
	check("PATCH /vm", VM{State: VMPaused})
	check("PATCH /vm", VM{State: VMResumed})
	check("/snapshot/create", SnapshotCreateParams{SnapshotType: SnapshotFull, SnapshotPath: "/s", MemFilePath: "/m"})
}
