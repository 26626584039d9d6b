package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/version"
)

// fakeImageHelper serves helper.version and the image steps; the step named
// failAt fails after writing to the build log, the way a real step does.
func fakeImageHelper(t *testing.T, failAt string, calls *[]string) func(*rpc.Server) {
	return func(s *rpc.Server) {
		rpc.Register(s, helperapi.MethodVersion, func(ctx context.Context, _ helperapi.VersionParams) (helperapi.VersionResult, error) {
			return helperapi.VersionResult{Version: version.String()}, nil
		})
		step := func(name string, logPath string) error {
			f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND, 0)
			if err == nil {
				f.WriteString("==> " + name + "\nE: something broke\n")
				f.Close()
			}
			if name == failAt {
				return rpc.Errorf(rpc.ErrUnavailable, "%s failed (exit status 1); see %s", name, logPath)
			}
			return nil
		}
		rpc.Register(s, helperapi.MethodImageBootstrap, func(ctx context.Context, p helperapi.ImageBootstrapParams) (helperapi.ImageStepResult, error) {
			*calls = append(*calls, "bootstrap:"+op.From(ctx))
			return helperapi.ImageStepResult{}, step("bootstrap", p.LogPath)
		})
		rpc.Register(s, helperapi.MethodImageConfigure, func(ctx context.Context, p helperapi.ImageConfigureParams) (helperapi.ImageConfigureResult, error) {
			*calls = append(*calls, "configure:"+op.From(ctx))
			return helperapi.ImageConfigureResult{KernelVersion: "6.1.0-test"}, step("configure", p.LogPath)
		})
		rpc.Register(s, helperapi.MethodImagePack, func(ctx context.Context, p helperapi.ImagePackParams) (helperapi.ImagePackResult, error) {
			*calls = append(*calls, "pack:"+op.From(ctx))
			for _, f := range []string{"rootfs.ext4", "work-seed.ext4", "vmlinuz", "initrd.img"} {
				os.WriteFile(filepath.Join(p.OutDir, f), []byte("x"), 0o600)
			}
			return helperapi.ImagePackResult{Rootfs: filepath.Join(p.OutDir, "rootfs.ext4")}, step("pack", p.LogPath)
		})
		rpc.Register(s, helperapi.MethodImageDiscard, func(ctx context.Context, p helperapi.ImageDiscardParams) (helperapi.DeleteResult, error) {
			*calls = append(*calls, "discard:"+op.From(ctx))
			return helperapi.DeleteResult{Deleted: true}, nil
		})
	}
}

// TestImageBuildFailureCleansUpAndNamesLogAndOpID: a failing step fails the
// operation with an error that names the build log and carries the op id;
// no image is registered, only build.log is left, and the helper's scratch
// tree is discarded. Every helper call carried the build's op id.
func TestImageBuildFailureCleansUpAndNamesLogAndOpID(t *testing.T) {
	for _, failAt := range []string{"bootstrap", "configure", "pack"} {
		t.Run(failAt, func(t *testing.T) {
			var calls []string
			d, _ := newTestDaemon(t, fakeImageHelper(t, failAt, &calls))
			ctx := op.With(context.Background(), "op-b0117d")
			o, err := d.startImageBuild(ctx, api.ImageBuildParams{Name: "img"})
			if err != nil {
				t.Fatal(err)
			}
			final, _ := d.ops.status(ctx, api.OperationStatusParams{OpID: o.st.ID})
			for final.State == api.OpRunning {
				final, _ = d.ops.status(ctx, api.OperationStatusParams{OpID: o.st.ID, WaitMS: 1000})
			}
			if final.State != api.OpFailed || final.Error == nil {
				t.Fatalf("operation: %+v", final)
			}
			logPath := filepath.Join(d.layout.ImageDir("img"), "build.log")
			if final.Error.OpID != "op-b0117d" || !strings.Contains(final.Error.Message, logPath) || !strings.Contains(final.Error.Hint, logPath) {
				t.Fatalf("error lacks op id or build log: %+v", final.Error)
			}
			if _, err := d.store.GetImage(ctx, "img"); !errors.Is(err, rpc.ErrNotFound) {
				t.Fatalf("image registered after a failed build: %v", err)
			}
			entries, _ := os.ReadDir(d.layout.ImageDir("img"))
			if len(entries) != 1 || entries[0].Name() != "build.log" {
				t.Fatalf("left in the image dir: %v", entries)
			}
			var discarded bool
			for _, c := range calls {
				if strings.HasPrefix(c, "discard:") {
					discarded = true
				}
				if _, id, _ := strings.Cut(c, ":"); id != "op-b0117d" {
					t.Fatalf("helper call %q without the build's op id", c)
				}
			}
			if !discarded {
				t.Fatalf("scratch tree not discarded: %v", calls)
			}
			// A second build of the same name may start now.
			if _, err := d.startImageBuild(op.With(context.Background(), "op-000002"), api.ImageBuildParams{Name: "img"}); err != nil {
				t.Fatalf("rebuild after failure: %v", err)
			}
		})
	}
}

// TestImageBuildConflict: a second build of a name being built is refused.
func TestImageBuildConflict(t *testing.T) {
	var calls []string
	d, _ := newTestDaemon(t, fakeImageHelper(t, "", &calls))
	d.imagesMu.Lock()
	d.imageBuilds["busy"] = "op-aaaaaa"
	d.imagesMu.Unlock()
	_, err := d.startImageBuild(op.With(context.Background(), "op-bbbbbb"), api.ImageBuildParams{Name: "busy"})
	if !errors.Is(err, rpc.ErrConflict) || !strings.Contains(err.Error(), "op-aaaaaa") {
		t.Fatalf("second build: %v", err)
	}
}

// TestCreateBuildsMissingDefaultImageAsItsOwnStages: a create without the
// default image builds it as stages of the create's own operation (one op
// id, one operation the CLI follows to the end), and without BuildImage it
// is not_found with the build command as hint.
func TestCreateBuildsMissingDefaultImageAsItsOwnStages(t *testing.T) {
	var calls []string
	d, _ := newTestDaemon(t, fakeImageHelper(t, "", &calls))
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
	if stages["image bootstrap"] != api.StageDone || stages["image pack"] != api.StageDone {
		t.Fatalf("image build stages not part of the create: %+v", final.Stages)
	}
	// The fake helper's files are not a real kernel, so the build stops at
	// the kernel stage; the create fails with the build's error and op id.
	if final.State != api.OpFailed || final.Error.OpID != "op-c4ea7e" || !strings.Contains(final.Error.Message, `building image "default"`) {
		t.Fatalf("final: %+v %+v", final, final.Error)
	}
	for _, c := range calls {
		if _, id, _ := strings.Cut(c, ":"); id != "op-c4ea7e" {
			t.Fatalf("helper call %q under another op id", c)
		}
	}
}
