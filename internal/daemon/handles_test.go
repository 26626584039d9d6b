package daemon

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/version"
)

func testVM(t *testing.T, d *Daemon, name string) model.VM {
	t.Helper()
	dir := d.layout.VMDir(name + "-id")
	os.MkdirAll(dir, 0o700)
	return model.VM{ID: name + "-id", Name: name, Runtime: model.VMRuntime{VMDir: dir, APISockPath: filepath.Join(dir, "qmp.sock")}}
}

// fakeVMM starts a process whose command line names sock, as a VMM's does.
func fakeVMM(t *testing.T, sock string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sh", "-c", "sleep 60; true", sock)
	// A group of its own: the cleanup kills sh and its sleep.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	return cmd
}

func TestHandlesScratchFileRoundTrip(t *testing.T) {
	d, _ := newTestDaemon(t, nil)
	vm := testVM(t, d, "a")
	h := &model.VMHandles{PID: 42, TapDevice: "tap-a", FS: []int{7, 8}}
	d.setHandles(vm, h)
	if got := readHandlesFile(vm.Runtime.VMDir); !reflect.DeepEqual(*got, *h) {
		t.Fatalf("file: %+v", got)
	}
	// A fresh daemon (empty cache) reads the file.
	d2, _ := newTestDaemon(t, nil)
	d2.layout = d.layout
	if got := d2.getHandles(vm); !reflect.DeepEqual(*got, *h) {
		t.Fatalf("cache miss did not read the file: %+v", got)
	}
	d.dropHandles(vm)
	if _, err := os.Stat(filepath.Join(vm.Runtime.VMDir, handlesFile)); !os.IsNotExist(err) {
		t.Fatal("scratch file left after drop")
	}
}

func TestHandlesMissingAndCorruptFile(t *testing.T) {
	d, _ := newTestDaemon(t, nil)
	vm := testVM(t, d, "b")
	if got := d.getHandles(vm); !reflect.DeepEqual(*got, model.VMHandles{}) {
		t.Fatalf("missing file: %+v", got)
	}
	os.WriteFile(filepath.Join(vm.Runtime.VMDir, handlesFile), []byte("{not json"), 0o600)
	if got := readHandlesFile(vm.Runtime.VMDir); !reflect.DeepEqual(*got, model.VMHandles{}) {
		t.Fatalf("corrupt file: %+v", got)
	}
}

func TestHandlesCacheConcurrent(t *testing.T) {
	d, _ := newTestDaemon(t, nil)
	vms := make([]model.VM, 8)
	for i := range vms {
		vms[i] = testVM(t, d, string(rune('c'+i)))
	}
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Half the VMs are only written and read, the others also
			// dropped: readers of the first half always see a full entry.
			vm := vms[i%4]
			d.setHandles(vm, &model.VMHandles{PID: i, TapDevice: "tap-x"})
			if h := d.getHandles(vm); h.TapDevice != "tap-x" {
				t.Errorf("read %+v", h)
			}
			other := vms[4+i%4]
			d.setHandles(other, &model.VMHandles{PID: i, TapDevice: "tap-y"})
			d.dropHandles(other)
		}()
	}
	wg.Wait()
}

// TestRediscoverPrefersLiveProcess: the live VMM found by its API socket
// wins over a stale pid in the scratch file; with no live VMM the file's
// handles come back whole, so cleanup can tear down what they name.
func TestRediscoverPrefersLiveProcess(t *testing.T) {
	d, _ := newTestDaemon(t, nil)
	vm := testVM(t, d, "r")
	stale := &model.VMHandles{PID: 999999, TapDevice: "tap-r"}
	d.setHandles(vm, stale)

	got := d.rediscover(vm)
	if !reflect.DeepEqual(*got, *stale) {
		t.Fatalf("dead VMM: want the file's handles %+v, got %+v", stale, got)
	}
	live := fakeVMM(t, vm.Runtime.APISockPath)
	got = d.rediscover(vm)
	if got.PID != live.Process.Pid || got.TapDevice != "tap-r" {
		t.Fatalf("live VMM: %+v (pid %d)", got, live.Process.Pid)
	}
	d.setHandlesMem(vm, got)
	if !d.vmAlive(vm) {
		t.Fatal("vmAlive false for the live VMM")
	}
}

// TestReconcileDemotesDeadAndKeepsLive: at start, a running VM whose VMM
// lives is kept; one whose VMM is gone is stopped with a reason; an
// interrupted create fails.
func TestReconcileDemotesDeadAndKeepsLive(t *testing.T) {
	d, _ := newTestDaemon(t, nil)
	ctx := context.Background()
	mk := func(name string, state model.VMState, ip string) model.VM {
		vm := testVM(t, d, name)
		vm.Image, vm.Spec = "img", model.VMSpec{VCPUs: 1, MemoryMiB: 128, DiskSizeBytes: 1 << 30}
		vm.Runtime.State, vm.Runtime.GuestIP = state, ip
		if err := d.store.CreateVM(ctx, &vm); err != nil {
			t.Fatal(err)
		}
		return vm
	}
	live := mk("live", model.StateRunning, "10.0.0.2")
	dead := mk("dead", model.StateRunning, "10.0.0.3")
	half := mk("half", model.StateCreating, "10.0.0.4")
	p := fakeVMM(t, live.Runtime.APISockPath)
	d.setHandles(live, &model.VMHandles{PID: 1}) // stale pid; the process is found by socket
	d.setHandles(dead, &model.VMHandles{PID: 999999})
	d.handles = map[string]*model.VMHandles{} // a new daemon: only the files remain

	d.reconcileVMs(ctx)
	for name, want := range map[string]model.VMState{"live": model.StateRunning, "dead": model.StateStopped, "half": model.StateFailed} {
		vm, err := d.store.GetVMByName(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if vm.Runtime.State != want {
			t.Errorf("%s: state %s, want %s", name, vm.Runtime.State, want)
		}
		if want != model.StateRunning && vm.Runtime.LastError == "" {
			t.Errorf("%s: no reason recorded", name)
		}
	}
	if h := d.getHandles(live); h.PID != p.Process.Pid {
		t.Fatalf("live VM's handles not re-adopted: %+v", h)
	}
	_ = half
}

// TestReconcileTearsDownDeadVMKernelState: a VM recorded running whose VMM
// is gone has the TAP its scratch file names torn down through the helper.
func TestReconcileTearsDownDeadVMKernelState(t *testing.T) {
	var calls []string
	d, _ := newTestDaemon(t, func(s *rpc.Server) {
		rpc.Register(s, helperapi.MethodVersion, func(ctx context.Context, _ helperapi.VersionParams) (helperapi.VersionResult, error) {
			return helperapi.VersionResult{Version: version.String()}, nil
		})
		rpc.Register(s, helperapi.MethodTapDelete, func(ctx context.Context, p helperapi.TapDeleteParams) (helperapi.DeleteResult, error) {
			calls = append(calls, "tap.delete "+p.Name)
			return helperapi.DeleteResult{Deleted: true}, nil
		})
	})
	ctx := context.Background()
	vm := testVM(t, d, "dmvm")
	vm.Image, vm.Spec = "img", model.VMSpec{VCPUs: 1, MemoryMiB: 128, DiskSizeBytes: 1 << 30}
	vm.Runtime.State, vm.Runtime.GuestIP = model.StateRunning, "10.0.0.9"
	if err := d.store.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	d.setHandles(vm, &model.VMHandles{PID: 999999, TapDevice: "tap-dmvm"})
	d.handles = map[string]*model.VMHandles{} // a restarted daemon: only the file

	d.reconcileVMs(ctx)
	want := []string{"tap.delete tap-dmvm"}
	if strings.Join(calls, "|") != strings.Join(want, "|") {
		t.Fatalf("teardown calls:\n got %v\nwant %v", calls, want)
	}
	got, _ := d.store.GetVM(ctx, vm.ID)
	if got.Runtime.State != model.StateStopped {
		t.Fatalf("state %s", got.Runtime.State)
	}
	if _, err := os.Stat(filepath.Join(vm.Runtime.VMDir, handlesFile)); !os.IsNotExist(err) {
		t.Fatal("scratch file left after teardown")
	}
}
