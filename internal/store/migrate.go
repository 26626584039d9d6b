package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// ErrSchemaTooNew: the database was written by a newer banger whose schema
// this build does not know. Upgrade banger (never downgrade a state.db).
var ErrSchemaTooNew = errors.New("database schema is newer than this build")

// migration takes the schema from its index in migrations to index+1.
type migration struct {
	name string
	sql  string // one or more statements
}

// migrations is the schema's history. NEVER edit an entry that has shipped:
// databases in the field are at every older version. Append a new entry.
// SQLite's ALTER TABLE is limited; a change it cannot express needs the
// "create new table, copy, drop, rename" procedure in one migration.
var migrations = []migration{
	{
		name: "create images",
		sql: `
CREATE TABLE images (
	name             TEXT PRIMARY KEY NOT NULL,
	dir              TEXT NOT NULL,
	source           TEXT NOT NULL,
	suite            TEXT NOT NULL DEFAULT '',
	kernel_version   TEXT NOT NULL DEFAULT '',
	rootfs_path      TEXT NOT NULL,
	rootfs_size      INTEGER NOT NULL DEFAULT 0,
	rootfs_sha256    TEXT NOT NULL DEFAULT '',
	work_seed_path   TEXT NOT NULL DEFAULT '',
	work_seed_size   INTEGER NOT NULL DEFAULT 0,
	work_seed_sha256 TEXT NOT NULL DEFAULT '',
	kernel_path      TEXT NOT NULL,
	vmlinux_path     TEXT NOT NULL DEFAULT '',
	initrd_path      TEXT NOT NULL DEFAULT '',
	build_log_path   TEXT NOT NULL DEFAULT '',
	created_at       TEXT NOT NULL
) STRICT;`,
	},
	{
		name: "create vms",
		sql: `
CREATE TABLE vms (
	id              TEXT PRIMARY KEY NOT NULL,
	name            TEXT NOT NULL UNIQUE,
	image           TEXT NOT NULL, -- images.name, deliberately not a foreign key
	vmm             TEXT NOT NULL DEFAULT '',
	vcpus           INTEGER NOT NULL,
	memory_mib      INTEGER NOT NULL,
	disk_size_bytes INTEGER NOT NULL,
	state           TEXT NOT NULL,
	guest_ip        TEXT NOT NULL DEFAULT '',
	mac             TEXT NOT NULL DEFAULT '',
	dns_name        TEXT NOT NULL DEFAULT '',
	vsock_cid       INTEGER NOT NULL DEFAULT 0,
	vm_dir          TEXT NOT NULL DEFAULT '',
	api_sock_path   TEXT NOT NULL DEFAULT '',
	vsock_path      TEXT NOT NULL DEFAULT '',
	log_path        TEXT NOT NULL DEFAULT '',
	console_path    TEXT NOT NULL DEFAULT '',
	metrics_path    TEXT NOT NULL DEFAULT '',
	system_overlay  TEXT NOT NULL DEFAULT '',
	overlay_path    TEXT NOT NULL DEFAULT '',
	work_disk_path  TEXT NOT NULL DEFAULT '',
	last_error      TEXT NOT NULL DEFAULT '',
	created_at      TEXT NOT NULL,
	updated_at      TEXT NOT NULL
) STRICT;`,
	},
	{
		name: "unique guest ip and vsock cid, index vms by image",
		sql: `
CREATE UNIQUE INDEX vms_guest_ip ON vms (guest_ip) WHERE guest_ip != '';
CREATE UNIQUE INDEX vms_vsock_cid ON vms (vsock_cid) WHERE vsock_cid != 0;
CREATE INDEX vms_image ON vms (image);`,
	},
	{
		name: "vms: stages of the last boot",
		sql:  `ALTER TABLE vms ADD COLUMN last_boot TEXT NOT NULL DEFAULT '[]';`,
	},
	{
		// Images registered before have banger-inits that read the host
		// key from the work disk: guest.ContractWorkDisk.
		name: "images: guest contract",
		sql:  `ALTER TABLE images ADD COLUMN guest_contract INTEGER NOT NULL DEFAULT 1;`,
	},
	{
		name: "snapshots, frozen disk bases, vms on them",
		sql: `
ALTER TABLE vms ADD COLUMN work_disk_format TEXT NOT NULL DEFAULT '';
ALTER TABLE vms ADD COLUMN bases TEXT NOT NULL DEFAULT '[]';
ALTER TABLE vms ADD COLUMN origin TEXT NOT NULL DEFAULT '';
CREATE TABLE snapshots (
	id         TEXT PRIMARY KEY NOT NULL,
	name       TEXT NOT NULL UNIQUE,
	kind       TEXT NOT NULL,
	vm_id      TEXT NOT NULL DEFAULT '',
	vm_name    TEXT NOT NULL DEFAULT '',
	image      TEXT NOT NULL,
	dir        TEXT NOT NULL,
	size_bytes INTEGER NOT NULL DEFAULT 0,
	manifest   TEXT NOT NULL,
	created_at TEXT NOT NULL
) STRICT;
CREATE INDEX snapshots_image ON snapshots (image);
CREATE TABLE bases (
	id         TEXT PRIMARY KEY NOT NULL,
	path       TEXT NOT NULL UNIQUE,
	format     TEXT NOT NULL,
	backing    TEXT NOT NULL DEFAULT '',
	created_at TEXT NOT NULL
) STRICT;`,
	},
	{
		name: "vms' host folders and published ports",
		sql: `
ALTER TABLE vms ADD COLUMN mounts TEXT NOT NULL DEFAULT '[]';
ALTER TABLE vms ADD COLUMN publish TEXT NOT NULL DEFAULT '[]';`,
	},
}

// schemaVersion reads PRAGMA user_version.
func schemaVersion(ctx context.Context, q querier) (int, error) {
	var v int
	err := q.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v)
	return v, err
}

// migrateTo applies migrations until db is at version target, one
// transaction per step holding the DDL and the version bump. Each step
// re-reads the version under the write lock, so concurrent callers apply
// every step once. A version beyond len(migrations) is ErrSchemaTooNew; one
// beyond target but known is left alone (tests build old versions with it).
func migrateTo(ctx context.Context, db *sql.DB, target int) error {
	if target < 0 || target > len(migrations) {
		return fmt.Errorf("migrate: no schema version %d (this build knows 0..%d)", target, len(migrations))
	}
	for {
		done := false
		err := func() error {
			tx, err := db.BeginTx(ctx, nil) // BEGIN IMMEDIATE: see dsn
			if err != nil {
				return err
			}
			defer tx.Rollback()
			v, err := schemaVersion(ctx, tx)
			if err != nil {
				return err
			}
			if v > len(migrations) {
				return fmt.Errorf("schema version %d, this build knows up to %d: %w",
					v, len(migrations), ErrSchemaTooNew)
			}
			if v >= target {
				done = true
				return nil
			}
			m := migrations[v]
			if _, err := tx.ExecContext(ctx, m.sql); err != nil {
				return fmt.Errorf("migrate to version %d (%s): %w", v+1, m.name, err)
			}
			// PRAGMA takes no bound parameters; v+1 is an int we computed.
			if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", v+1)); err != nil {
				return fmt.Errorf("migrate to version %d: %w", v+1, err)
			}
			return tx.Commit()
		}()
		if err != nil || done {
			return err
		}
	}
}
