package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/rpc"
)

// openRaw opens path with the store's settings but no migrations.
func openRaw(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", dsn(path))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// schemaSQL is the database's schema as SQLite records it, by object name.
func schemaSQL(t *testing.T, db *sql.DB) map[string]string {
	t.Helper()
	got, err := queryList[string](context.Background(), db,
		"SELECT name || ': ' || sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY name")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, s := range got {
		name, sql, _ := strings.Cut(s, ": ")
		m[name] = sql
	}
	return m
}

// seed is rows a database at schema version `version` could hold, written
// with that version's columns, and what they must read as after upgrading.
// Add one whenever a migration changes what existing rows look like.
type seed struct {
	version int
	sql     string
	check   func(t *testing.T, s *Store)
}

var seeds = []seed{
	{
		version: 1,
		sql: `INSERT INTO images (name, dir, source, rootfs_path, rootfs_size, kernel_path, created_at)
			VALUES ('old', '/old', 'built', '/old/rootfs.ext4', 42, '/old/vmlinuz', '2024-01-02T03:04:05.000000001Z')`,
		check: func(t *testing.T, s *Store) {
			img, err := s.GetImage(context.Background(), "old")
			if err != nil {
				t.Fatal(err)
			}
			want := time.Date(2024, 1, 2, 3, 4, 5, 1, time.UTC)
			if img.Dir != "/old" || img.RootfsSize != 42 || img.KernelPath != "/old/vmlinuz" || !img.CreatedAt.Equal(want) || img.GuestContract != 1 {
				t.Errorf("v1 image after upgrade: %+v", img)
			}
		},
	},
	{
		version: 2,
		sql: `INSERT INTO vms (id, name, image, vcpus, memory_mib, disk_size_bytes, state, guest_ip, vsock_cid, created_at, updated_at)
			VALUES ('0123456789abcdef', 'oldvm', 'old', 1, 512, 1073741824, 'stopped', '10.0.0.2', 3,
				'2024-01-02T03:04:05.000000000Z', '2024-01-02T03:04:06.000000000Z')`,
		check: func(t *testing.T, s *Store) {
			ctx := context.Background()
			vm, err := s.GetVMByName(ctx, "oldvm")
			if err != nil {
				t.Fatal(err)
			}
			if vm.ID != "0123456789abcdef" || vm.Spec.MemoryMiB != 512 || vm.Runtime.GuestIP != "10.0.0.2" || vm.Runtime.VSockCID != 3 {
				t.Errorf("v2 vm after upgrade: %+v", vm)
			}
			// The upgraded database enforces what v3 added.
			dup := fullVM(5)
			dup.Runtime.GuestIP = "10.0.0.2"
			assertErr(t, s.CreateVM(ctx, &dup), rpc.ErrConflict, "guest ip 10.0.0.2 already assigned")
			if users, _ := s.VMsUsingImage(ctx, "old"); !reflect.DeepEqual(users, []string{"oldvm"}) {
				t.Errorf("VMsUsingImage(old) = %v", users)
			}
		},
	},
}

func TestUpgradeFromEveryOlderVersion(t *testing.T) {
	ctx := context.Background()
	fresh := openTest(t)
	want := schemaSQL(t, fresh.db)

	for k := 0; k < len(migrations); k++ {
		t.Run(fmt.Sprintf("from_v%d", k), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.db")
			db := openRaw(t, path)
			if err := migrateTo(ctx, db, k); err != nil {
				t.Fatal(err)
			}
			if v, _ := schemaVersion(ctx, db); v != k {
				t.Fatalf("built version %d, want %d", v, k)
			}
			var applied []seed
			for _, sd := range seeds {
				if sd.version <= k {
					if _, err := db.ExecContext(ctx, sd.sql); err != nil {
						t.Fatalf("seed for v%d: %v", sd.version, err)
					}
					applied = append(applied, sd)
				}
			}
			db.Close()

			s, err := Open(ctx, path)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if v, _ := schemaVersion(ctx, s.db); v != len(migrations) {
				t.Fatalf("upgraded to version %d, want %d", v, len(migrations))
			}
			if got := schemaSQL(t, s.db); !reflect.DeepEqual(got, want) {
				t.Errorf("upgraded schema differs from a fresh one:\n got %v\nwant %v", got, want)
			}
			for _, sd := range applied {
				sd.check(t, s)
			}
		})
	}
}

func TestRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	path := s.Path()
	s.Close()
	db := openRaw(t, path)
	if _, err := db.Exec(fmt.Sprintf("PRAGMA user_version = %d", len(migrations)+1)); err != nil {
		t.Fatal(err)
	}
	db.Close()

	_, err := Open(ctx, path)
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("got %v, want ErrSchemaTooNew", err)
	}
	for _, v := range []int{len(migrations) + 1, len(migrations)} {
		if !strings.Contains(err.Error(), fmt.Sprint(v)) {
			t.Errorf("error %q does not name version %d", err, v)
		}
	}
}

// A failing migration leaves neither its DDL nor its version bump behind.
func TestFailedMigrationRollsBack(t *testing.T) {
	ctx := context.Background()
	path := openTest(t).Path()

	saved := migrations
	migrations = append(migrations[:len(migrations):len(migrations)],
		migration{name: "broken", sql: "CREATE TABLE half (x); CREATE TABLE broken ("})
	defer func() { migrations = saved }()

	if _, err := Open(ctx, path); err == nil || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("got %v, want the broken migration's error", err)
	}
	db := openRaw(t, path)
	if v, _ := schemaVersion(ctx, db); v != len(saved) {
		t.Errorf("version %d after failed migration, want %d", v, len(saved))
	}
	if _, ok := schemaSQL(t, db)["half"]; ok {
		t.Error("failed migration left table half behind")
	}
}

// Several openers of a new database at once apply each step once, and
// none fails: the one losing the race to switch the file to WAL waits like
// any other lock waiter. Rounds of fresh files, since the race is narrow.
func TestConcurrentMigration(t *testing.T) {
	ctx := context.Background()
	for round := 0; round < 10; round++ {
		path := filepath.Join(t.TempDir(), "state.db")
		errs := make(chan error, 8)
		for i := 0; i < cap(errs); i++ {
			go func() {
				s, err := Open(ctx, path)
				if err == nil {
					err = s.Close()
				}
				errs <- err
			}()
		}
		for i := 0; i < cap(errs); i++ {
			if err := <-errs; err != nil {
				t.Errorf("round %d: %v", round, err)
			}
		}
	}
}
