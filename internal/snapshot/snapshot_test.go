package snapshot

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/model"
)

func machine() Machine {
	return Machine{VMM: "qemu", VMMVersion: "QEMU emulator version 7.2.19", Accel: "tcg", CPU: "max", VCPUs: 2,
		MemoryMiB: 1024, DiskSizeBytes: 1 << 30, Image: "default", ImageBuild: "abc", GuestContract: 3, Devices: "d1"}
}

func TestCompare(t *testing.T) {
	m := machine()
	if err := m.Compare(machine(), true); err != nil {
		t.Fatalf("identical: %v", err)
	}
	other := machine()
	other.MemoryMiB, other.VMMVersion, other.DiskSizeBytes = 512, "QEMU emulator version 8.2.0", 2<<30
	err := m.Compare(other, false)
	var mm *Mismatch
	if !errors.As(err, &mm) || len(mm.Diffs) != 2 {
		t.Fatalf("two differences (size not compared): %v", err)
	}
	for _, want := range []string{`memory (MiB): the snapshot's 1024, here 512`, `vmm version: the snapshot's "QEMU emulator version 7.2.19", here "QEMU emulator version 8.2.0"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
	if err := m.Compare(other, true); !errors.As(err, &mm) || len(mm.Diffs) != 3 {
		t.Fatalf("with the size: %v", err)
	}
}

func TestPendingCommit(t *testing.T) {
	root := t.TempDir()
	p, err := Begin(root, "s1")
	if err != nil {
		t.Fatal(err)
	}
	if !IsTemp(filepath.Base(p.Dir)) {
		t.Fatalf("temp dir %s", p.Dir)
	}
	os.WriteFile(p.Path(FileState), []byte("state"), 0o600)
	// Before Commit nothing is at the final place.
	if _, err := os.Stat(filepath.Join(root, "s1")); !os.IsNotExist(err) {
		t.Fatal("final dir exists before commit")
	}
	dir, err := p.Commit(Manifest{ID: "s1", Name: "n", Machine: machine(), State: FileState})
	if err != nil {
		t.Fatal(err)
	}
	m, err := Read(dir)
	if err != nil || m.ID != "s1" || m.Version != ManifestVersion || m.Machine != machine() {
		t.Fatalf("read back: %+v %v", m, err)
	}
	if _, err := os.Stat(p.Dir); !os.IsNotExist(err) {
		t.Fatal("temp dir left")
	}
	if Size(dir) == 0 {
		t.Fatal("no size")
	}
	// A second Begin of the same id while one is pending is refused.
	p2, _ := Begin(root, "s2")
	if _, err := Begin(root, "s2"); err == nil {
		t.Fatal("two pending snapshots of one id")
	}
	p2.Abort()
	if ents, _ := os.ReadDir(root); len(ents) != 1 {
		t.Fatalf("after abort: %v", ents)
	}
	// A manifest of another format is refused.
	os.WriteFile(filepath.Join(dir, FileManifest), []byte(`{"version":9}`), 0o600)
	if _, err := Read(dir); err == nil || !strings.Contains(err.Error(), "format 9") {
		t.Fatalf("format 9: %v", err)
	}
}

func TestUnreferenced(t *testing.T) {
	bases := []model.Base{
		{ID: "a"}, {ID: "b", Backing: "a"}, {ID: "c", Backing: "b"}, // a <- b <- c
		{ID: "x"}, {ID: "y", Backing: "x"}, // x <- y
		{ID: "lone"},
	}
	ids := func(bs []model.Base) []string {
		var out []string
		for _, b := range bs {
			out = append(out, b.ID)
		}
		return out
	}
	// c is referenced: a, b, c live; y dead before x.
	if got := ids(Unreferenced(bases, []string{"c", "missing"})); !reflect.DeepEqual(got, []string{"y", "x", "lone"}) {
		t.Fatalf("roots c: %v", got)
	}
	if got := ids(Unreferenced(bases, []string{"b", "y", "lone"})); !reflect.DeepEqual(got, []string{"c"}) {
		t.Fatalf("roots b, y, lone: %v", got)
	}
	if got := Unreferenced(bases, []string{"c", "y", "lone"}); len(got) != 0 {
		t.Fatalf("all live: %v", got)
	}
	if got := ids(Unreferenced(bases, nil)); !reflect.DeepEqual(got, []string{"c", "b", "y", "a", "x", "lone"}) {
		t.Fatalf("none live, overlays before their bases: %v", got)
	}
}
