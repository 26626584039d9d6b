package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/rpc"
)

// openTest opens a store in a fresh directory (two levels deep, so Open
// must create its parent) and closes it at the end of the test.
func openTest(t testing.TB) *Store {
	t.Helper()
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "state", "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// someTime is a time with nanoseconds, in a zone other than UTC.
var someTime = time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.FixedZone("X", 5*3600+1800))

func fullImage(name string) model.Image {
	return model.Image{
		Name:          name,
		Dir:           "/state/images/" + name,
		Source:        "built",
		Suite:         "bookworm",
		KernelVersion: "6.1.0-30-cloud-amd64",
		RootfsPath:    "/state/images/" + name + "/rootfs.ext4",
		RootfsSize:    2 << 30,
		RootfsSHA256:  "aa11",
		WorkSeedPath:  "/state/images/" + name + "/work-seed.ext4",
		WorkSeedSize:  64 << 20,
		WorkSeedSHA:   "bb22",
		KernelPath:    "/state/images/" + name + "/vmlinuz",
		VmlinuxPath:   "/state/images/" + name + "/vmlinux",
		InitrdPath:    "/state/images/" + name + "/initrd.img",
		BuildLogPath:  "/state/images/" + name + "/build.log",
		GuestContract: 2,
		CreatedAt:     someTime,
	}
}

// fullVM is VM number i, every field set and distinct from other i.
func fullVM(i int) model.VM {
	id := fmt.Sprintf("%08x%024x", 0xabc00000+i, i)
	dir := "/state/vms/" + id
	return model.VM{
		ID:    id,
		Name:  fmt.Sprintf("vm-%d", i),
		Image: "default",
		VMM:   "qemu",
		Spec: model.VMSpec{VCPUs: 2, MemoryMiB: 1024, DiskSizeBytes: 8 << 30,
			Mounts:  []model.Mount{{HostDir: "/home/u/src", GuestPath: "/root/src", ReadOnly: true}},
			Publish: []model.Publish{{HostAddr: "127.0.0.1", HostPort: 8080, GuestPort: 80, Proto: "tcp"}}},
		Runtime: model.VMRuntime{
			State:          model.StateRunning,
			GuestIP:        fmt.Sprintf("10.0.%d.%d", i/250, i%250+2),
			MAC:            fmt.Sprintf("02:00:00:00:%02x:%02x", i/256, i%256),
			DNSName:        fmt.Sprintf("vm-%d.vm", i),
			VSockCID:       uint32(3 + i),
			VMDir:          dir,
			APISockPath:    dir + "/api.sock",
			VSockPath:      dir + "/vsock.sock",
			LogPath:        dir + "/vmm.log",
			ConsolePath:    dir + "/console.log",
			MetricsPath:    dir + "/metrics",
			SystemOverlay:  "dm-snapshot",
			OverlayPath:    dir + "/cow.img",
			WorkDiskPath:   dir + "/work.ext4",
			WorkDiskFormat: "qcow2", Bases: []string{"b1", "b2"}, Origin: "snap-1",
			LastError: "none yet",
			LastBoot:  []model.BootStage{{Name: "boot", DurationMS: 1234, Detail: "sshd listening"}},
		},
		CreatedAt: someTime.Add(time.Duration(i) * time.Second),
		UpdatedAt: someTime.Add(time.Duration(i)*time.Second + time.Nanosecond),
	}
}

// assertAllSet fails if any field of v (recursively) is its zero value, so
// a field added to the model must be added to the fixtures, and then the
// round-trip tests fail until the store stores it.
func assertAllSet(t *testing.T, v any) {
	t.Helper()
	var walk func(rv reflect.Value, path string)
	walk = func(rv reflect.Value, path string) {
		if rv.Kind() == reflect.Struct && rv.Type() != reflect.TypeOf(time.Time{}) {
			for i := 0; i < rv.NumField(); i++ {
				walk(rv.Field(i), path+"."+rv.Type().Field(i).Name)
			}
			return
		}
		if rv.IsZero() {
			t.Errorf("fixture leaves %s zero", path)
		}
	}
	walk(reflect.ValueOf(v), reflect.TypeOf(v).Name())
}

// assertVM compares time fields with time.Equal and the rest with
// reflect.DeepEqual.
func assertVM(t *testing.T, got, want model.VM) {
	t.Helper()
	if !got.CreatedAt.Equal(want.CreatedAt) || !got.UpdatedAt.Equal(want.UpdatedAt) {
		t.Errorf("times: got created %v updated %v, want %v %v", got.CreatedAt, got.UpdatedAt, want.CreatedAt, want.UpdatedAt)
	}
	got.CreatedAt, got.UpdatedAt, want.CreatedAt, want.UpdatedAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("vm:\n got %+v\nwant %+v", got, want)
	}
}

func assertImage(t *testing.T, got, want model.Image) {
	t.Helper()
	if !got.CreatedAt.Equal(want.CreatedAt) {
		t.Errorf("created: got %v, want %v", got.CreatedAt, want.CreatedAt)
	}
	got.CreatedAt, want.CreatedAt = time.Time{}, time.Time{}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("image:\n got %+v\nwant %+v", got, want)
	}
}

func assertErr(t *testing.T, err, sentinel error, msg string) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("got error %v, want %v", err, sentinel)
	}
	if !strings.Contains(err.Error(), msg) {
		t.Errorf("error %q does not say %q", err, msg)
	}
}

func TestOpenFreshAndIdempotent(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state", "state.db")
	for i := 0; i < 2; i++ {
		s, err := Open(ctx, path)
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		if v, err := s.SchemaVersion(ctx); err != nil || v != len(migrations) {
			t.Fatalf("open %d: version %d, %v; want %d", i, v, err, len(migrations))
		}
		for _, table := range []string{"images", "vms"} {
			var n int
			if err := s.db.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
				t.Errorf("open %d: table %s: %v", i, table, err)
			}
		}
		for _, index := range []string{"vms_guest_ip", "vms_vsock_cid", "vms_image"} {
			var n int
			s.db.QueryRowContext(ctx, "SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND name = ?", index).Scan(&n)
			if n != 1 {
				t.Errorf("open %d: index %s missing", i, index)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("db file: %v, %v; want mode 0600", fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("db dir: %v, %v; want mode 0700", fi.Mode(), err)
	}
}

// Every pooled connection, not only the first, must carry the pragmas.
func TestPragmasOnEveryConnection(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	var conns []interface{ Close() error }
	for i := 0; i < 3; i++ { // hold three connections at once
		c, err := s.db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		for pragma, want := range map[string]string{
			"journal_mode": "wal", "synchronous": "1", "foreign_keys": "1", "busy_timeout": "5000",
		} {
			var got string
			if err := c.QueryRowContext(ctx, "PRAGMA "+pragma).Scan(&got); err != nil || got != want {
				t.Errorf("conn %d: %s = %q, %v; want %q", i, pragma, got, err, want)
			}
		}
	}
	for _, c := range conns {
		c.Close()
	}
}

func TestImageCRUD(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	img := fullImage("default")
	assertAllSet(t, img)

	if err := s.CreateImage(ctx, &img); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetImage(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	assertImage(t, got, img)

	dup := fullImage("default")
	assertErr(t, s.CreateImage(ctx, &dup), rpc.ErrConflict, `image "default" already exists`)

	_, err = s.GetImage(ctx, "nope")
	assertErr(t, err, rpc.ErrNotFound, `image "nope": not found`)

	// A zero CreatedAt is stamped, in the caller's value too.
	other := model.Image{Name: "alpha", Dir: "/d", Source: "imported", RootfsPath: "/r", KernelPath: "/k"}
	if err := s.CreateImage(ctx, &other); err != nil {
		t.Fatal(err)
	}
	if other.CreatedAt.IsZero() {
		t.Error("CreatedAt not stamped")
	}
	list, err := s.ListImages(ctx)
	if err != nil || len(list) != 2 || list[0].Name != "alpha" || list[1].Name != "default" {
		t.Fatalf("list: %v, %v", list, err)
	}
	assertImage(t, list[0], other)

	upd := fullImage("default")
	upd.Dir, upd.RootfsSize, upd.WorkSeedPath, upd.CreatedAt = "/elsewhere", 7, "", someTime.Add(time.Hour)
	if err := s.UpdateImage(ctx, &upd); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetImage(ctx, "default")
	assertImage(t, got, upd)
	missing := fullImage("missing")
	assertErr(t, s.UpdateImage(ctx, &missing), rpc.ErrNotFound, `image "missing": not found`)

	// In use: refused, naming the users.
	vm := fullVM(1)
	vm.Image = "default"
	if err := s.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	assertErr(t, s.DeleteImage(ctx, "default"), rpc.ErrConflict, `image "default" is used by vm vm-1`)
	if err := s.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteImage(ctx, "default"); err != nil {
		t.Fatal(err)
	}
	assertErr(t, s.DeleteImage(ctx, "default"), rpc.ErrNotFound, `image "default": not found`)
	if _, err := s.GetImage(ctx, "default"); !errors.Is(err, rpc.ErrNotFound) {
		t.Errorf("deleted image still there: %v", err)
	}
	assertErr(t, s.CreateImage(ctx, &model.Image{}), rpc.ErrBadRequest, "without a name")
}

func TestVMCRUD(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	vm := fullVM(1)
	assertAllSet(t, vm)
	if err := s.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	for name, get := range map[string]func() (model.VM, error){
		"GetVM":          func() (model.VM, error) { return s.GetVM(ctx, vm.ID) },
		"GetVMByName":    func() (model.VM, error) { return s.GetVMByName(ctx, vm.Name) },
		"LookupVM id":    func() (model.VM, error) { return s.LookupVM(ctx, vm.ID) },
		"LookupVM name":  func() (model.VM, error) { return s.LookupVM(ctx, vm.Name) },
		"LookupVM short": func() (model.VM, error) { return s.LookupVM(ctx, vm.ID[:4]) },
	} {
		got, err := get()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		assertVM(t, got, vm)
	}

	_, err := s.GetVM(ctx, "nope")
	assertErr(t, err, rpc.ErrNotFound, `vm "nope": not found`)
	_, err = s.GetVMByName(ctx, "foo")
	assertErr(t, err, rpc.ErrNotFound, `vm "foo": not found`)
	_, err = s.LookupVM(ctx, "abc") // a prefix, but too short
	assertErr(t, err, rpc.ErrNotFound, `vm "abc": not found`)

	// Conflicts name the field. (When several clash, the message names the
	// one SQLite checked first.)
	for _, tc := range []struct {
		id, name, ip string
		cid          uint32
		msg          string
	}{
		{vm.ID, "x", "", 0, fmt.Sprintf("vm id %q already exists", vm.ID)},
		{"other", "vm-1", "", 0, `vm name "vm-1" already exists`},
		{"other", "x", "10.0.0.3", 0, "guest ip 10.0.0.3 already assigned"},
		{"other", "x", "", 4, "vsock cid 4 already assigned"},
	} {
		dup := fullVM(1)
		dup.ID, dup.Name, dup.Runtime.GuestIP, dup.Runtime.VSockCID = tc.id, tc.name, tc.ip, tc.cid
		assertErr(t, s.CreateVM(ctx, &dup), rpc.ErrConflict, tc.msg)
	}
	// Empty guest IPs and zero CIDs are not unique.
	for i := 2; i < 4; i++ {
		v := fullVM(i)
		v.Runtime.GuestIP, v.Runtime.VSockCID = "", 0
		if err := s.CreateVM(ctx, &v); err != nil {
			t.Fatalf("vm without ip and cid: %v", err)
		}
	}
	ips, err := s.UsedGuestIPs(ctx)
	if err != nil || !reflect.DeepEqual(ips, []string{"10.0.0.3"}) {
		t.Errorf("UsedGuestIPs = %v, %v", ips, err)
	}
	cids, err := s.UsedVSockCIDs(ctx)
	if err != nil || !reflect.DeepEqual(cids, []uint32{4}) {
		t.Errorf("UsedVSockCIDs = %v, %v", cids, err)
	}
	users, err := s.VMsUsingImage(ctx, "default")
	if err != nil || !reflect.DeepEqual(users, []string{"vm-1", "vm-2", "vm-3"}) {
		t.Errorf("VMsUsingImage = %v, %v", users, err)
	}
	if users, _ := s.VMsUsingImage(ctx, "other"); len(users) != 0 {
		t.Errorf("VMsUsingImage(other) = %v", users)
	}
	// vm-2 and vm-3 share the id prefix "abc0000".
	_, err = s.LookupVM(ctx, "abc0000")
	assertErr(t, err, rpc.ErrBadRequest, "ambiguous")

	// UpdateVM rewrites everything but id and created_at, bumps UpdatedAt.
	upd := fullVM(7)
	upd.ID, upd.CreatedAt = vm.ID, someTime.Add(-time.Hour)
	upd.Runtime.State = model.StateStopped
	before := time.Now()
	if err := s.UpdateVM(ctx, &upd); err != nil {
		t.Fatal(err)
	}
	if upd.UpdatedAt.Before(before) {
		t.Errorf("UpdatedAt not bumped: %v", upd.UpdatedAt)
	}
	got, _ := s.GetVM(ctx, vm.ID)
	want := upd
	want.CreatedAt = vm.CreatedAt
	assertVM(t, got, want)

	clash := upd
	clash.Runtime.GuestIP = "" // vm-2 has none; take vm-2's name
	clash.Name = "vm-2"
	assertErr(t, s.UpdateVM(ctx, &clash), rpc.ErrConflict, `vm name "vm-2" already exists`)
	ghost := fullVM(9)
	assertErr(t, s.UpdateVM(ctx, &ghost), rpc.ErrNotFound, fmt.Sprintf("vm %q: not found", ghost.ID))
	bad := upd
	bad.Runtime.State = "dancing"
	assertErr(t, s.UpdateVM(ctx, &bad), rpc.ErrBadRequest, "invalid state")

	// ListVMs: by created_at, then name.
	list, err := s.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range list {
		names = append(names, v.Name)
	}
	if !reflect.DeepEqual(names, []string{"vm-7", "vm-2", "vm-3"}) {
		t.Errorf("ListVMs order: %v", names)
	}

	if err := s.DeleteVM(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	assertErr(t, s.DeleteVM(ctx, vm.ID), rpc.ErrNotFound, "not found")
	if _, err := s.GetVM(ctx, vm.ID); !errors.Is(err, rpc.ErrNotFound) {
		t.Errorf("deleted vm still there: %v", err)
	}
}

func TestListVMsTiesByName(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	for _, i := range []int{3, 1, 2} {
		v := fullVM(i)
		v.CreatedAt = someTime
		if err := s.CreateVM(ctx, &v); err != nil {
			t.Fatal(err)
		}
	}
	// A sub-second-earlier VM sorts first: fixed-width time text.
	early := fullVM(9)
	early.CreatedAt = someTime.Add(-time.Nanosecond)
	if err := s.CreateVM(ctx, &early); err != nil {
		t.Fatal(err)
	}
	list, _ := s.ListVMs(ctx)
	var names []string
	for _, v := range list {
		names = append(names, v.Name)
	}
	if want := []string{"vm-9", "vm-1", "vm-2", "vm-3"}; !reflect.DeepEqual(names, want) {
		t.Errorf("ListVMs = %v, want %v", names, want)
	}
}

func TestUpdateVMRuntime(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	vm := fullVM(1)
	if err := s.CreateVM(ctx, &vm); err != nil {
		t.Fatal(err)
	}
	other := fullVM(2)
	if err := s.CreateVM(ctx, &other); err != nil {
		t.Fatal(err)
	}

	got, err := s.UpdateVMRuntime(ctx, vm.ID, func(r *model.VMRuntime) error {
		r.State, r.LastError = model.StateFailed, "boom"
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.Runtime.State != model.StateFailed || !got.UpdatedAt.After(vm.UpdatedAt) {
		t.Errorf("returned %+v", got)
	}
	stored, _ := s.GetVM(ctx, vm.ID)
	assertVM(t, stored, got)

	// fn's error aborts and comes back as is.
	errStop := errors.New("stop")
	_, err = s.UpdateVMRuntime(ctx, vm.ID, func(r *model.VMRuntime) error {
		r.LastError = "changed"
		return errStop
	})
	if err != errStop {
		t.Errorf("got %v, want fn's error", err)
	}
	if v, _ := s.GetVM(ctx, vm.ID); v.Runtime.LastError != "boom" {
		t.Errorf("aborted update written: %q", v.Runtime.LastError)
	}

	_, err = s.UpdateVMRuntime(ctx, "nope", func(*model.VMRuntime) error { return nil })
	assertErr(t, err, rpc.ErrNotFound, `vm "nope": not found`)
	_, err = s.UpdateVMRuntime(ctx, vm.ID, func(r *model.VMRuntime) error {
		r.GuestIP = other.Runtime.GuestIP
		return nil
	})
	assertErr(t, err, rpc.ErrConflict, "guest ip "+other.Runtime.GuestIP+" already assigned")
}

func TestRefusesInvalidPath(t *testing.T) {
	if _, err := Open(context.Background(), filepath.Join(t.TempDir(), "a?b.db")); err == nil {
		t.Error("opened a path with '?'")
	}
}
