package store

import (
	"context"
	"errors"
	"testing"

	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/rpc"
)

func TestSnapshotsAndBases(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	sn := model.Snapshot{ID: "s1", Name: "before", Kind: model.SnapshotVM, VMID: "v1", VMName: "web", Image: "default",
		Dir: "/state/snapshots/s1", SizeBytes: 123, Manifest: `{"vmm":"qemu"}`}
	if err := s.CreateSnapshot(ctx, &sn); err != nil {
		t.Fatal(err)
	}
	if sn.CreatedAt.IsZero() {
		t.Fatal("no created_at")
	}
	dup := sn
	dup.ID = "s2"
	if err := s.CreateSnapshot(ctx, &dup); !errors.Is(err, rpc.ErrConflict) {
		t.Fatalf("a taken name: %v", err)
	}
	for _, ref := range []string{"before", "s1"} {
		got, err := s.GetSnapshot(ctx, ref)
		if err != nil || got != sn {
			t.Fatalf("get %s: %+v %v, want %+v", ref, got, err, sn)
		}
	}
	if _, err := s.GetSnapshot(ctx, "nope"); !errors.Is(err, rpc.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
	b := model.Base{ID: "b1", Path: "/state/bases/b1.qcow2", Format: "qcow2", Backing: "b0"}
	if err := s.CreateBase(ctx, &b); err != nil {
		t.Fatal(err)
	}
	if bs, err := s.ListBases(ctx); err != nil || len(bs) != 1 || bs[0] != b {
		t.Fatalf("bases: %+v %v", bs, err)
	}
	if list, err := s.ListSnapshots(ctx); err != nil || len(list) != 1 {
		t.Fatalf("list: %+v %v", list, err)
	}
	if err := s.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteSnapshot(ctx, "s1"); !errors.Is(err, rpc.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
	if err := s.DeleteBase(ctx, "b1"); err != nil {
		t.Fatal(err)
	}
}
