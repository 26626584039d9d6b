package store

import (
	"context"
	"strconv"
	"sync"
	"testing"

	"github.com/banger-dev/banger/internal/model"
)

// run calls fn(i) for i in [0, n) concurrently and reports every error.
func run(t *testing.T, n int, fn func(i int) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() { errs <- fn(i) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestConcurrentCreatesOneStore(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	run(t, 20, func(i int) error {
		vm := fullVM(i)
		return s.CreateVM(ctx, &vm)
	})
	if vms, err := s.ListVMs(ctx); err != nil || len(vms) != 20 {
		t.Fatalf("ListVMs: %d vms, %v", len(vms), err)
	}
}

// Two Stores on one file behave like two processes: their writes wait for
// each other (busy_timeout), and read-modify-write updates lose nothing.
func TestConcurrentWritersTwoStores(t *testing.T) {
	ctx := context.Background()
	s1 := openTest(t)
	s2, err := Open(ctx, s1.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	stores := []*Store{s1, s2}

	run(t, 40, func(i int) error {
		vm := fullVM(i)
		if err := stores[i%2].CreateVM(ctx, &vm); err != nil {
			return err
		}
		_, err := stores[(i+1)%2].UpdateVMRuntime(ctx, vm.ID, func(r *model.VMRuntime) error {
			r.State = model.StateStopped
			return nil
		})
		return err
	})
	for _, s := range stores {
		if vms, err := s.ListVMs(ctx); err != nil || len(vms) != 40 {
			t.Fatalf("ListVMs: %d vms, %v", len(vms), err)
		}
	}

	// 40 increments of one counter (kept in LastError) from both stores.
	target := fullVM(0).ID
	run(t, 40, func(i int) error {
		_, err := stores[i%2].UpdateVMRuntime(ctx, target, func(r *model.VMRuntime) error {
			n, _ := strconv.Atoi(r.LastError)
			r.LastError = strconv.Itoa(n + 1)
			return nil
		})
		return err
	})
	if vm, err := s1.GetVM(ctx, target); err != nil || vm.Runtime.LastError != "40" {
		t.Errorf("counter = %q, %v; want 40 (lost updates)", vm.Runtime.LastError, err)
	}
}
