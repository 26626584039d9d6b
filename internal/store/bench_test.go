package store

import (
	"context"
	"fmt"
	"testing"
)

func benchStore(b *testing.B, n int) *Store {
	b.Helper()
	s := openTest(b)
	for i := range n {
		vm := fullVM(i)
		if err := s.CreateVM(context.Background(), &vm); err != nil {
			b.Fatal(err)
		}
	}
	return s
}

func BenchmarkListVMs200(b *testing.B) {
	ctx := context.Background()
	s := benchStore(b, 200)
	for b.Loop() {
		vms, err := s.ListVMs(ctx)
		if err != nil || len(vms) != 200 {
			b.Fatal(len(vms), err)
		}
	}
}

func BenchmarkGetVMByName(b *testing.B) {
	ctx := context.Background()
	s := benchStore(b, 200)
	i := 0
	for b.Loop() {
		if _, err := s.GetVMByName(ctx, fmt.Sprintf("vm-%d", i%200)); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkCreateVM(b *testing.B) {
	ctx := context.Background()
	s := openTest(b)
	i := 0
	for b.Loop() {
		vm := fullVM(i)
		if err := s.CreateVM(ctx, &vm); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
