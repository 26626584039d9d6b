package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/rpc"
)

// snapshotFields maps the snapshots columns to sn's fields; id first.
func snapshotFields(sn *model.Snapshot) []field {
	return []field{
		{"id", &sn.ID},
		{"name", &sn.Name},
		{"kind", &sn.Kind},
		{"vm_id", &sn.VMID},
		{"vm_name", &sn.VMName},
		{"image", &sn.Image},
		{"dir", &sn.Dir},
		{"size_bytes", &sn.SizeBytes},
		{"manifest", &sn.Manifest},
		{"created_at", timeCol{&sn.CreatedAt}},
	}
}

var (
	snapshotCols      = columns(snapshotFields(&model.Snapshot{}))
	snapshotSelectSQL = "SELECT " + strings.Join(snapshotCols, ", ") + " FROM snapshots"
	snapshotInsertSQL = insertSQL("snapshots", snapshotCols)
)

func scanSnapshot(row interface{ Scan(...any) error }) (model.Snapshot, error) {
	var sn model.Snapshot
	err := row.Scan(refs(snapshotFields(&sn))...)
	return sn, err
}

// CreateSnapshot inserts sn: the last step of taking a snapshot, once its
// files are in place. A zero CreatedAt is set to now. A taken id or name
// is rpc.ErrConflict.
func (s *Store) CreateSnapshot(ctx context.Context, sn *model.Snapshot) error {
	if sn.ID == "" || sn.Name == "" {
		return rpc.Errorf(rpc.ErrBadRequest, "snapshot without an id or a name")
	}
	v := *sn
	if v.CreatedAt.IsZero() {
		v.CreatedAt = now()
	}
	if _, err := s.db.ExecContext(ctx, snapshotInsertSQL, refs(snapshotFields(&v))...); err != nil {
		if _, ok := uniqueViolation(err); ok {
			return conflictf("snapshot %q already exists", sn.Name)
		}
		return fmt.Errorf("create snapshot %q: %w", sn.Name, err)
	}
	*sn = v
	return nil
}

// GetSnapshot returns the snapshot named ref (or with the id ref), or
// rpc.ErrNotFound.
func (s *Store) GetSnapshot(ctx context.Context, ref string) (model.Snapshot, error) {
	sn, err := scanSnapshot(s.db.QueryRowContext(ctx, snapshotSelectSQL+" WHERE name = ? OR id = ? ORDER BY name = ? DESC LIMIT 1", ref, ref, ref))
	if errors.Is(err, sql.ErrNoRows) {
		return model.Snapshot{}, rpc.Errorf(rpc.ErrNotFound, "snapshot %q", ref)
	}
	if err != nil {
		return model.Snapshot{}, fmt.Errorf("get snapshot %q: %w", ref, err)
	}
	return sn, nil
}

// ListSnapshots returns every snapshot, oldest first.
func (s *Store) ListSnapshots(ctx context.Context) ([]model.Snapshot, error) {
	return listRows(ctx, s.db, snapshotSelectSQL+" ORDER BY created_at, name", scanSnapshot)
}

// DeleteSnapshot deletes the snapshot row with id; rpc.ErrNotFound if
// missing.
func (s *Store) DeleteSnapshot(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, "DELETE FROM snapshots WHERE id = ?", id)
	if err != nil {
		return fmt.Errorf("delete snapshot %s: %w", id, err)
	}
	return mustAffect(res, "snapshot", id)
}

func baseFields(b *model.Base) []field {
	return []field{
		{"id", &b.ID},
		{"path", &b.Path},
		{"format", &b.Format},
		{"backing", &b.Backing},
		{"created_at", timeCol{&b.CreatedAt}},
	}
}

var (
	baseCols      = columns(baseFields(&model.Base{}))
	baseSelectSQL = "SELECT " + strings.Join(baseCols, ", ") + " FROM bases"
	baseInsertSQL = insertSQL("bases", baseCols)
)

func scanBase(row interface{ Scan(...any) error }) (model.Base, error) {
	var b model.Base
	err := row.Scan(refs(baseFields(&b))...)
	return b, err
}

// CreateBase records a frozen disk file.
func (s *Store) CreateBase(ctx context.Context, b *model.Base) error {
	v := *b
	if v.CreatedAt.IsZero() {
		v.CreatedAt = now()
	}
	if _, err := s.db.ExecContext(ctx, baseInsertSQL, refs(baseFields(&v))...); err != nil {
		if _, ok := uniqueViolation(err); ok {
			return conflictf("base %s (%s) already exists", b.ID, b.Path)
		}
		return fmt.Errorf("create base %s: %w", b.ID, err)
	}
	*b = v
	return nil
}

// ListBases returns every frozen disk file.
func (s *Store) ListBases(ctx context.Context) ([]model.Base, error) {
	return listRows(ctx, s.db, baseSelectSQL+" ORDER BY created_at, id", scanBase)
}

// DeleteBase deletes the base row with id; rpc.ErrNotFound if missing.
func (s *Store) DeleteBase(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, "DELETE FROM bases WHERE id = ?", id)
	if err != nil {
		return fmt.Errorf("delete base %s: %w", id, err)
	}
	return mustAffect(res, "base", id)
}

// listRows runs query and scans every row with scan.
func listRows[T any](ctx context.Context, q querier, query string, scan func(interface{ Scan(...any) error }) (T, error), args ...any) ([]T, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
