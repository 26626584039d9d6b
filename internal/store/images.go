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

// imageFields maps the images columns to img's fields; name comes first.
func imageFields(img *model.Image) []field {
	return []field{
		{"name", &img.Name},
		{"dir", &img.Dir},
		{"source", &img.Source},
		{"suite", &img.Suite},
		{"kernel_version", &img.KernelVersion},
		{"rootfs_path", &img.RootfsPath},
		{"rootfs_size", &img.RootfsSize},
		{"rootfs_sha256", &img.RootfsSHA256},
		{"work_seed_path", &img.WorkSeedPath},
		{"work_seed_size", &img.WorkSeedSize},
		{"work_seed_sha256", &img.WorkSeedSHA},
		{"kernel_path", &img.KernelPath},
		{"vmlinux_path", &img.VmlinuxPath},
		{"initrd_path", &img.InitrdPath},
		{"build_log_path", &img.BuildLogPath},
		{"guest_contract", &img.GuestContract},
		{"created_at", timeCol{&img.CreatedAt}},
	}
}

var (
	imageCols      = columns(imageFields(&model.Image{}))
	imageSelectSQL = "SELECT " + strings.Join(imageCols, ", ") + " FROM images"
	imageInsertSQL = insertSQL("images", imageCols)
	imageUpdateSQL = updateSQL("images", imageCols[1:], "name")
)

func scanImage(row interface{ Scan(...any) error }) (model.Image, error) {
	var img model.Image
	err := row.Scan(refs(imageFields(&img))...)
	return img, err
}

func imageConflict(err error, name string) error {
	if _, ok := uniqueViolation(err); ok {
		return conflictf("image %q already exists", name)
	}
	return err
}

func validImage(img *model.Image) error {
	if img.Name == "" {
		return rpc.Errorf(rpc.ErrBadRequest, "image without a name")
	}
	return nil
}

// CreateImage inserts img. A zero CreatedAt is set to now (in img too).
// An existing name is rpc.ErrConflict.
func (s *Store) CreateImage(ctx context.Context, img *model.Image) error {
	if err := validImage(img); err != nil {
		return err
	}
	v := *img
	if v.CreatedAt.IsZero() {
		v.CreatedAt = now()
	}
	if _, err := s.db.ExecContext(ctx, imageInsertSQL, refs(imageFields(&v))...); err != nil {
		return fmt.Errorf("create image %q: %w", img.Name, imageConflict(err, img.Name))
	}
	*img = v
	return nil
}

// GetImage returns the named image or rpc.ErrNotFound.
func (s *Store) GetImage(ctx context.Context, name string) (model.Image, error) {
	img, err := scanImage(s.db.QueryRowContext(ctx, imageSelectSQL+" WHERE name = ?", name))
	if errors.Is(err, sql.ErrNoRows) {
		return model.Image{}, rpc.Errorf(rpc.ErrNotFound, "image %q", name)
	}
	if err != nil {
		return model.Image{}, fmt.Errorf("get image %q: %w", name, err)
	}
	return img, nil
}

// ListImages returns every image, ordered by name.
func (s *Store) ListImages(ctx context.Context) ([]model.Image, error) {
	rows, err := s.db.QueryContext(ctx, imageSelectSQL+" ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	defer rows.Close()
	var imgs []model.Image
	for rows.Next() {
		img, err := scanImage(rows)
		if err != nil {
			return nil, fmt.Errorf("list images: %w", err)
		}
		imgs = append(imgs, img)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	return imgs, nil
}

// UpdateImage replaces every column of the image named img.Name, CreatedAt
// included (a rebuilt image is a new image under an old name). A missing
// image is rpc.ErrNotFound.
func (s *Store) UpdateImage(ctx context.Context, img *model.Image) error {
	if err := validImage(img); err != nil {
		return err
	}
	args := refs(imageFields(img))
	res, err := s.db.ExecContext(ctx, imageUpdateSQL, append(args[1:], img.Name)...)
	if err != nil {
		return fmt.Errorf("update image %q: %w", img.Name, err)
	}
	return mustAffect(res, "image", img.Name)
}

// DeleteImage deletes the named image. It is rpc.ErrNotFound if missing and
// rpc.ErrConflict, naming them, while VMs use it; the check and the delete
// are one transaction.
func (s *Store) DeleteImage(ctx context.Context, name string) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		users, err := vmsUsingImage(ctx, tx, name)
		if err != nil {
			return fmt.Errorf("delete image %q: %w", name, err)
		}
		if len(users) > 0 {
			return conflictf("image %q is used by vm %s", name, strings.Join(users, ", "))
		}
		res, err := tx.ExecContext(ctx, "DELETE FROM images WHERE name = ?", name)
		if err != nil {
			return fmt.Errorf("delete image %q: %w", name, err)
		}
		return mustAffect(res, "image", name)
	})
}

// mustAffect turns "no row changed" into rpc.ErrNotFound for kind "name".
func mustAffect(res sql.Result, kind, name string) error {
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return rpc.Errorf(rpc.ErrNotFound, "%s %q", kind, name)
	}
	return nil
}
