package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/imagebuild"
	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/rpc"
)

// fakeBuilder stands in for imagebuild in the daemon's unit tests: it
// reports its stages as the real hook does, writes to the build log and
// the output files, and fails at failAt ("bootstrap", "configure", "pack")
// the way the real one does (an error naming the log). release, when set,
// holds every build until it is closed.
type fakeBuilder struct {
	failAt  string
	release chan struct{}

	mu     sync.Mutex
	specs  []imagebuild.Spec
	active int
	most   int
}

func (f *fakeBuilder) install(t *testing.T) {
	old := imageBuilder
	t.Cleanup(func() { imageBuilder = old })
	imageBuilder.preflight = func(s imagebuild.Spec, k imagebuild.Keyrings) (string, error) {
		if err := s.Validate(); err != nil {
			return "", err
		}
		if s.Suite == "nokeyring" {
			return "", fmt.Errorf("suite %q has no pinned archive keyring: %w", s.Suite, rpc.ErrBadRequest)
		}
		return imagebuild.DebianKeyring, nil
	}
	imageBuilder.build = f.build
	imageBuilder.agent = func() (string, error) { return "/fake/banger-agent", nil }
}

func (f *fakeBuilder) build(ctx context.Context, s imagebuild.Spec, o imagebuild.Options) (imagebuild.Result, error) {
	f.mu.Lock()
	f.specs = append(f.specs, s)
	f.active++
	f.most = max(f.most, f.active)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.active--
		f.mu.Unlock()
	}()
	if f.release != nil {
		select {
		case <-f.release:
		case <-ctx.Done():
			return imagebuild.Result{}, ctx.Err()
		}
	}
	for _, stage := range []string{"bootstrap", "configure", "pack"} {
		fmt.Fprintf(o.Log, "==> %s\nE: something broke\n", stage)
		if stage == f.failAt {
			return imagebuild.Result{}, rpc.WithHint(fmt.Errorf("%s failed (exit status 1) (full output in %s)", stage, o.LogPath), "do the "+stage+" thing")
		}
		switch stage {
		case "bootstrap":
			o.OnStage(imagebuild.Event{Stage: "configure"})
		case "configure":
			o.OnStage(imagebuild.Event{Stage: "pack", KernelVersion: "6.1.0-test", Initrd: imagebuild.InitrdMini})
		}
	}
	for _, n := range []string{imagebuild.OutRootfs, imagebuild.OutWorkSeed, imagebuild.OutKernel, imagebuild.OutInitrd, imagebuild.OutKernelConfig} {
		os.WriteFile(filepath.Join(o.OutDir, n), []byte("x"), 0o644)
	}
	return imagebuild.Result{
		KernelVersion: "6.1.0-test", Initrd: imagebuild.InitrdMini,
		Rootfs: filepath.Join(o.OutDir, imagebuild.OutRootfs), RootfsSize: 1,
		WorkSeed: filepath.Join(o.OutDir, imagebuild.OutWorkSeed), WorkSeedSize: 1,
		Kernel: filepath.Join(o.OutDir, imagebuild.OutKernel), InitrdPath: filepath.Join(o.OutDir, imagebuild.OutInitrd),
		KernelConfig: filepath.Join(o.OutDir, imagebuild.OutKernelConfig),
	}, nil
}

// waitActive waits until n fake builds are running at once.
func (f *fakeBuilder) waitActive(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		f.mu.Lock()
		active := f.active
		f.mu.Unlock()
		if active >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d fake builds running after 30 s, want %d", active, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitOp(t *testing.T, d *Daemon, ctx context.Context, id string) api.Operation {
	t.Helper()
	final, _ := d.ops.status(ctx, api.OperationStatusParams{OpID: id})
	for final.State == api.OpRunning {
		final, _ = d.ops.status(ctx, api.OperationStatusParams{OpID: id, WaitMS: 1000})
	}
	return final
}

// TestImageBuildFailureCleansUpAndNamesLogAndOpID: a failing stage fails
// the operation with an error that names the build log and carries the op
// id; the stages before it are done, it is failed; no image is registered
// and only build.log is left. No helper is involved (none is served).
func TestImageBuildFailureCleansUpAndNamesLogAndOpID(t *testing.T) {
	for _, failAt := range []string{"bootstrap", "configure", "pack"} {
		t.Run(failAt, func(t *testing.T) {
			f := &fakeBuilder{failAt: failAt}
			f.install(t)
			d, _ := newTestDaemon(t, nil)
			ctx := op.With(context.Background(), "op-b0117d")
			o, err := d.startImageBuild(ctx, api.ImageBuildParams{Name: "img"})
			if err != nil {
				t.Fatal(err)
			}
			final := waitOp(t, d, ctx, o.st.ID)
			if final.State != api.OpFailed || final.Error == nil {
				t.Fatalf("operation: %+v", final)
			}
			logPath := filepath.Join(d.layout.ImageDir("img"), "build.log")
			if final.Error.OpID != "op-b0117d" || !strings.Contains(final.Error.Message, logPath) || !strings.Contains(final.Error.Hint, logPath) {
				t.Fatalf("error lacks op id or build log: %+v", final.Error)
			}
			// The build's own hint comes first.
			if !strings.HasPrefix(final.Error.Hint, "do the "+failAt+" thing; build log: ") {
				t.Errorf("hint %q", final.Error.Hint)
			}
			states := map[string]string{}
			for _, s := range final.Stages {
				states[s.Name] = s.State
			}
			order := []string{"bootstrap", "configure", "pack"}
			for _, s := range order {
				want := api.StageDone
				if s == failAt {
					want = api.StageFailed
				}
				if i, j := indexOf(order, s), indexOf(order, failAt); i > j {
					want = api.StagePending
				}
				if states[s] != want {
					t.Errorf("stage %s is %s, want %s (%+v)", s, states[s], want, final.Stages)
				}
			}
			if _, err := d.store.GetImage(ctx, "img"); !errors.Is(err, rpc.ErrNotFound) {
				t.Fatalf("image registered after a failed build: %v", err)
			}
			entries, _ := os.ReadDir(d.layout.ImageDir("img"))
			if len(entries) != 1 || entries[0].Name() != "build.log" {
				t.Fatalf("left in the image dir: %v", entries)
			}
			// A second build of the same name may start now.
			ctx2 := op.With(context.Background(), "op-000002")
			o2, err := d.startImageBuild(ctx2, api.ImageBuildParams{Name: "img"})
			if err != nil {
				t.Fatalf("rebuild after failure: %v", err)
			}
			waitOp(t, d, ctx2, o2.st.ID)
		})
	}
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// TestImageBuildSpec: the daemon hands imagebuild the config's suite,
// mirror and extra packages plus the request's, and the variant and size.
func TestImageBuildSpec(t *testing.T) {
	f := &fakeBuilder{failAt: "bootstrap"}
	f.install(t)
	d, _ := newTestDaemon(t, nil)
	d.cfg.Image.ExtraPackages = []string{"vim"}
	ctx := op.With(context.Background(), "op-5bec00")
	o, err := d.startImageBuild(ctx, api.ImageBuildParams{Name: "img", ExtraPackages: []string{"curl"}, Variant: "stock"})
	if err != nil {
		t.Fatal(err)
	}
	waitOp(t, d, ctx, o.st.ID)
	want := imagebuild.Spec{Suite: "bookworm", Mirror: "http://mirror.invalid/debian", Packages: []string{"vim", "curl"}, Variant: "stock", RootfsSize: 2 << 30}
	if len(f.specs) != 1 || fmt.Sprint(f.specs[0]) != fmt.Sprint(want) {
		t.Errorf("specs %+v, want %+v", f.specs, want)
	}
}

// TestImageBuildRefusedBeforeStart: what Preflight refuses (a hostile
// mirror, a package that is an option, a suite without a keyring) is a
// bad_request of the begin call itself: no operation, no build, no image
// directory.
func TestImageBuildRefusedBeforeStart(t *testing.T) {
	f := &fakeBuilder{}
	f.install(t)
	d, _ := newTestDaemon(t, nil)
	for i, p := range []api.ImageBuildParams{
		{Name: "a", Mirror: "deb [trusted=yes] http://evil/ bookworm main"},
		{Name: "b", Mirror: "http://evil/debian", ExtraPackages: []string{"--allow-unauthenticated"}},
		{Name: "c", Mirror: "http://evil/debian", Suite: "nokeyring"},
	} {
		_, err := d.startImageBuild(op.With(context.Background(), fmt.Sprintf("op-00000%d", i)), p)
		if !errors.Is(err, rpc.ErrBadRequest) {
			t.Errorf("%+v: %v", p, err)
		}
		if _, err := os.Stat(d.layout.ImageDir(p.Name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: image dir made: %v", p.Name, err)
		}
	}
	if len(f.specs) != 0 {
		t.Errorf("builds ran: %+v", f.specs)
	}
}

// TestImageBuildConflict: a second build of a name being built is refused,
// and so is a third build while two run, with the count and op ids.
func TestImageBuildConflict(t *testing.T) {
	f := &fakeBuilder{release: make(chan struct{})}
	f.install(t)
	d, _ := newTestDaemon(t, nil)
	d.imagesMu.Lock()
	d.imageBuilds["busy"] = "op-aaaaaa"
	d.imagesMu.Unlock()
	_, err := d.startImageBuild(op.With(context.Background(), "op-bbbbbb"), api.ImageBuildParams{Name: "busy"})
	if !errors.Is(err, rpc.ErrConflict) || !strings.Contains(err.Error(), "op-aaaaaa") {
		t.Fatalf("second build of a name: %v", err)
	}
	d.imagesMu.Lock()
	delete(d.imageBuilds, "busy")
	d.imagesMu.Unlock()

	ctx1, ctx2 := op.With(context.Background(), "op-111111"), op.With(context.Background(), "op-222222")
	o1, err := d.startImageBuild(ctx1, api.ImageBuildParams{Name: "one"})
	if err != nil {
		t.Fatal(err)
	}
	o2, err := d.startImageBuild(ctx2, api.ImageBuildParams{Name: "two"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.startImageBuild(op.With(context.Background(), "op-333333"), api.ImageBuildParams{Name: "three"})
	if !errors.Is(err, rpc.ErrConflict) || !strings.Contains(err.Error(), "2 image builds are running") ||
		!strings.Contains(err.Error(), "op-111111") || !strings.Contains(err.Error(), "op-222222") || rpc.HintOf(err) == "" {
		t.Fatalf("third build: %v (hint %q)", err, rpc.HintOf(err))
	}
	// Both builds must be running before they are released, or one could
	// finish before the other starts and f.most would be 1.
	f.waitActive(t, 2)
	close(f.release)
	waitOp(t, d, ctx1, o1.st.ID)
	waitOp(t, d, ctx2, o2.st.ID)
	if f.most != 2 {
		t.Errorf("%d builds ran at once, want 2", f.most)
	}
	// Both done: a third may start.
	ctx4 := op.With(context.Background(), "op-444444")
	o4, err := d.startImageBuild(ctx4, api.ImageBuildParams{Name: "three"})
	if err != nil {
		t.Fatalf("build after the others ended: %v", err)
	}
	waitOp(t, d, ctx4, o4.st.ID)
}

// TestCreateBuildsMissingDefaultImageAsItsOwnStages: a create without the
// default image builds it as stages of the create's own operation (one op
// id, one operation the CLI follows to the end), and without BuildImage it
// is not_found with the build command as hint.
func TestCreateBuildsMissingDefaultImageAsItsOwnStages(t *testing.T) {
	f := &fakeBuilder{}
	f.install(t)
	d, _ := newTestDaemon(t, nil)
	ctx := op.With(context.Background(), "op-c4ea7e")

	_, err := d.vmCreateBegin(op.With(context.Background(), "op-000001"), api.VMCreateParams{Name: "v0"})
	if !errors.Is(err, rpc.ErrNotFound) || !strings.Contains(rpc.HintOf(err), "banger image build --name default") {
		t.Fatalf("without BuildImage: %v (hint %q)", err, rpc.HintOf(err))
	}

	o, err := d.vmCreateBegin(ctx, api.VMCreateParams{Name: "v1", BuildImage: true})
	if err != nil {
		t.Fatal(err)
	}
	final := o
	for final.State == api.OpRunning {
		final, _ = d.ops.status(ctx, api.OperationStatusParams{OpID: o.ID, WaitMS: 1000})
	}
	if final.Kind != "vm.create" || final.ID != "op-c4ea7e" {
		t.Fatalf("the status of the create's op id is another operation: %+v", final)
	}
	stages := map[string]string{}
	for _, s := range final.Stages {
		stages[s.Name] = s.State
	}
	if stages["image bootstrap"] != api.StageDone || stages["image configure"] != api.StageDone || stages["image pack"] != api.StageDone {
		t.Fatalf("image build stages not part of the create: %+v", final.Stages)
	}
	// The fake's files are not a real kernel, so the build stops at the
	// kernel stage; the create fails with the build's error and op id.
	if final.State != api.OpFailed || final.Error.OpID != "op-c4ea7e" || !strings.Contains(final.Error.Message, `building image "default"`) {
		t.Fatalf("final: %+v %+v", final, final.Error)
	}
}

// TestBuildTrackerOrder: the tracker hands each stage its event even when
// the build ended before the stage asked (both ready at once), and a build
// that ends early is the error of the stage waiting.
func TestBuildTrackerOrder(t *testing.T) {
	tr := newBuildTracker()
	tr.event(imagebuild.Event{Stage: "configure"})
	tr.event(imagebuild.Event{Stage: "pack", KernelVersion: "6.1"})
	tr.finish(imagebuild.Result{KernelVersion: "6.1"}, nil)
	if _, err := tr.until("configure"); err != nil {
		t.Fatal(err)
	}
	if e, err := tr.until("pack"); err != nil || e.KernelVersion != "6.1" {
		t.Fatal(e, err)
	}
	if r, err := tr.wait(); err != nil || r.KernelVersion != "6.1" {
		t.Fatal(r, err)
	}

	tr = newBuildTracker()
	boom := errors.New("boom")
	tr.finish(imagebuild.Result{}, boom)
	if _, err := tr.until("configure"); !errors.Is(err, boom) {
		t.Fatalf("early end: %v", err)
	}
	tr = newBuildTracker()
	tr.event(imagebuild.Event{Stage: "pack"})
	if _, err := tr.until("configure"); err == nil {
		t.Fatal("a stage out of order was accepted")
	}
	tr = newBuildTracker()
	tr.finish(imagebuild.Result{}, nil)
	if _, err := tr.until("configure"); err == nil {
		t.Fatal("a build that ended without its stages was accepted")
	}
}
