// Package store is bangerd's durable state: one SQLite database (state.db)
// holding images and VMs, accessed through modernc.org/sqlite (pure Go, no
// cgo).
//
// # What is stored
//
// Only durable facts: model.Image rows and model.VM rows (identity, spec and
// model.VMRuntime). Transient kernel-level handles (model.VMHandles: PIDs,
// TAP names, loop and dm devices) are never stored here; the daemon keeps
// them in memory and in each VM's handles.json.
//
// Every field has its own column, so SQLite itself enforces identity and
// uniqueness, across processes:
//
//	images  name PRIMARY KEY
//	vms     id PRIMARY KEY, name UNIQUE,
//	        guest_ip UNIQUE where non-empty, vsock_cid UNIQUE where non-zero
//
// vms.image is plain text, not a foreign key: an image may be rebuilt or
// re-imported under the same name, and "delete refuses while a VM uses the
// image" is policy. DeleteImage nevertheless checks for users in the same
// transaction as the delete, so the check cannot race a concurrent writer.
// VMState values are checked in Go (VMState.Valid), not by a CHECK
// constraint, so adding a state needs no table rebuild.
//
// Times are TEXT in UTC with a fixed-width RFC 3339 layout and nanoseconds
// ("2006-01-02T15:04:05.000000000Z"): exact round trips, readable in the
// sqlite3 shell, and text order is time order.
//
// # Migrations
//
// The schema version is SQLite's PRAGMA user_version (0 for a new file), a
// field of the database header, so it changes in the same transaction as the
// DDL it describes: a migration and its version bump commit together or not
// at all. Migration i (0-based) in the migrations slice takes the schema
// from version i to i+1; Open applies the missing ones in order, each in
// its own BEGIN IMMEDIATE transaction that re-reads the version first, so two
// processes opening an old database at once do not both apply a step.
// A database whose version is newer than len(migrations) was written by a
// newer banger; Open refuses it (ErrSchemaTooNew) rather than guess.
//
// Policy: never edit a migration that has shipped; append a new one. A
// released database may be at any older version, and the tests upgrade one
// from every older version and require the result to match a fresh schema.
//
// # Durability
//
// The database runs in WAL mode with synchronous=NORMAL. A transaction whose
// commit has returned survives the daemon being killed (kill -9, a crash,
// OOM): the commit is in the WAL file in the kernel's page cache, and the
// next open replays it. It is not guaranteed to survive a power loss or a
// kernel crash (the WAL is fsynced only at checkpoints); the last commits
// before one may roll back, but the database stays consistent. That is the
// right trade for a developer tool whose VMs die with the host anyway.
package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/banger-dev/banger/internal/rpc"
)

// busyTimeout is how long a statement waits for another connection's (or
// process's) write lock before failing with SQLITE_BUSY.
const busyTimeout = 5 * time.Second

// Store is the open database. It is safe for concurrent use, and several
// Stores (in one process or several) may share one file.
type Store struct {
	db   *sql.DB
	path string
}

// Open opens (creating if needed) the database at path and brings its
// schema up to date. A missing parent directory is created 0700 and a
// missing database file 0600 (existing ones keep their modes). Open refuses a database written by a newer build
// (errors.Is(err, ErrSchemaTooNew)).
func Open(ctx context.Context, path string) (*Store, error) {
	if path == "" || strings.ContainsRune(path, '?') {
		return nil, fmt.Errorf("open store: invalid path %q", path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	// Create the file ourselves so it gets 0600; SQLite would use 0644, and
	// gives its -wal and -shm files the main file's mode.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	f.Close()

	db, err := sql.Open("sqlite", dsn(path))
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	// Connections that open a new file at once race to switch it to WAL,
	// and the loser gets SQLITE_BUSY without the busy handler ever
	// running; retry that, within busyTimeout, like any other lock wait.
	deadline := time.Now().Add(busyTimeout)
	for {
		err = migrateTo(ctx, db, len(migrations))
		if err == nil || !isBusy(err) || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			err = ctx.Err()
		case <-time.After(20 * time.Millisecond):
			continue
		}
		break
	}
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return &Store{db: db, path: path}, nil
}

// isBusy reports whether err is SQLITE_BUSY (any extended code).
func isBusy(err error) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_BUSY
}

// dsn is the data source name for path. The driver runs the pragmas on every
// connection it opens, so every pooled connection gets them:
//   - busy_timeout: wait for a competing writer instead of failing at once;
//   - foreign_keys: off by default in SQLite; on, so future FKs hold;
//   - journal_mode=WAL: readers don't block the writer or each other, and a
//     commit is one append to the -wal file, replayed by the next open;
//   - synchronous=NORMAL: with WAL, commits survive a process crash, not a
//     power loss (see the package comment).
//
// _txlock=immediate makes every transaction take the write lock at BEGIN,
// waiting under busy_timeout, instead of trying to upgrade a read lock at
// its first write, which in WAL mode fails with SQLITE_BUSY without waiting
// when another connection committed in between. Store only opens
// transactions to write.
func dsn(path string) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Set("_txlock", "immediate")
	return path + "?" + q.Encode()
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Path is the database file.
func (s *Store) Path() string { return s.path }

// SchemaVersion is the database's schema version: after Open, the number
// of migrations this build knows.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	v, err := schemaVersion(ctx, s.db)
	if err != nil {
		return 0, fmt.Errorf("schema version: %w", err)
	}
	return v, nil
}

// querier is what *sql.DB and *sql.Tx have in common.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// inTx runs fn in one write transaction and commits if fn returns nil.
func (s *Store) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// timeLayout is RFC 3339 with exactly nine fractional digits; always used
// in UTC, so every stored time has the same width and sorts as text.
const timeLayout = "2006-01-02T15:04:05.000000000Z07:00"

// timeCol adapts a *time.Time to a TEXT column, as a query argument
// (driver.Valuer) and as a Scan destination (sql.Scanner).
type timeCol struct{ t *time.Time }

func (c timeCol) Value() (driver.Value, error) { return c.t.UTC().Format(timeLayout), nil }

func (c timeCol) Scan(src any) error {
	var s string
	switch v := src.(type) {
	case string:
		s = v
	case []byte:
		s = string(v)
	default:
		return fmt.Errorf("time column: unexpected %T", src)
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return fmt.Errorf("time column: %w", err)
	}
	*c.t = t
	return nil
}

// jsonCol adapts a value stored as JSON text: a small list that is only
// ever read and written whole (a VM's last boot stages).
type jsonCol[T any] struct{ v *T }

func (c jsonCol[T]) Value() (driver.Value, error) {
	b, err := json.Marshal(*c.v)
	if err != nil {
		return nil, err
	}
	if string(b) == "null" {
		return "[]", nil
	}
	return string(b), nil
}

func (c jsonCol[T]) Scan(src any) error {
	var b []byte
	switch v := src.(type) {
	case string:
		b = []byte(v)
	case []byte:
		b = v
	default:
		return fmt.Errorf("json column: unexpected %T", src)
	}
	var zero T
	*c.v = zero
	if string(b) == "[]" || len(b) == 0 {
		return nil
	}
	return json.Unmarshal(b, c.v)
}

// now is the time stamped on created and updated rows.
func now() time.Time { return time.Now().UTC() }

// field pairs a column with a pointer to the struct field it stores. The
// same list gives INSERT and UPDATE arguments (database/sql dereferences
// pointers) and SELECT scan destinations, so the three cannot drift apart.
type field struct {
	col string
	ref any
}

func columns(fs []field) []string {
	cols := make([]string, len(fs))
	for i, f := range fs {
		cols[i] = f.col
	}
	return cols
}

func refs(fs []field) []any {
	rs := make([]any, len(fs))
	for i, f := range fs {
		rs[i] = f.ref
	}
	return rs
}

// insertSQL is "INSERT INTO table (a, b) VALUES (?, ?)".
func insertSQL(table string, cols []string) string {
	return fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s)", table,
		strings.Join(cols, ", "), strings.TrimSuffix(strings.Repeat("?, ", len(cols)), ", "))
}

// updateSQL is "UPDATE table SET a = ?, b = ? WHERE key = ?".
func updateSQL(table string, cols []string, key string) string {
	return fmt.Sprintf("UPDATE %s SET %s = ? WHERE %s = ?", table,
		strings.Join(cols, " = ?, "), key)
}

// conflictError is a uniqueness or in-use error: its message is the whole
// story ("vm name \"x\" already exists") and it wraps rpc.ErrConflict.
type conflictError struct{ msg string }

func (e *conflictError) Error() string { return e.msg }
func (e *conflictError) Unwrap() error { return rpc.ErrConflict }

func conflictf(format string, args ...any) error {
	return &conflictError{msg: fmt.Sprintf(format, args...)}
}

// uniqueViolation reports whether err is a UNIQUE or PRIMARY KEY constraint
// failure and, if so, the "table.column" SQLite names in its message. The
// class comes from the extended result code; only the column, which no code
// carries, is read from the message ("UNIQUE constraint failed: vms.name").
func uniqueViolation(err error) (column string, ok bool) {
	var se *sqlite.Error
	if !errors.As(err, &se) {
		return "", false
	}
	switch se.Code() {
	case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
	default:
		return "", false
	}
	msg := se.Error()
	const marker = "constraint failed: "
	if i := strings.LastIndex(msg, marker); i >= 0 {
		column = msg[i+len(marker):]
		column, _, _ = strings.Cut(column, " ")
		column, _, _ = strings.Cut(column, ",")
	}
	return column, true
}
