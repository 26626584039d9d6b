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

// minIDPrefix is the shortest id prefix LookupVM accepts.
const minIDPrefix = 4

// vmFields maps the vms columns to vm's fields: id, created_at, then the
// columns an update rewrites.
func vmFields(vm *model.VM) []field {
	r := &vm.Runtime
	return []field{
		{"id", &vm.ID},
		{"created_at", timeCol{&vm.CreatedAt}},
		{"name", &vm.Name},
		{"image", &vm.Image},
		{"vmm", &vm.VMM},
		{"vcpus", &vm.Spec.VCPUs},
		{"memory_mib", &vm.Spec.MemoryMiB},
		{"disk_size_bytes", &vm.Spec.DiskSizeBytes},
		{"mounts", jsonCol[[]model.Mount]{&vm.Spec.Mounts}},
		{"publish", jsonCol[[]model.Publish]{&vm.Spec.Publish}},
		{"state", &r.State},
		{"guest_ip", &r.GuestIP},
		{"mac", &r.MAC},
		{"dns_name", &r.DNSName},
		{"vsock_cid", &r.VSockCID},
		{"vm_dir", &r.VMDir},
		{"api_sock_path", &r.APISockPath},
		{"vsock_path", &r.VSockPath},
		{"log_path", &r.LogPath},
		{"console_path", &r.ConsolePath},
		{"metrics_path", &r.MetricsPath},
		{"system_overlay", &r.SystemOverlay},
		{"overlay_path", &r.OverlayPath},
		{"work_disk_path", &r.WorkDiskPath},
		{"work_disk_format", &r.WorkDiskFormat},
		{"bases", jsonCol[[]string]{&r.Bases}},
		{"origin", &r.Origin},
		{"last_error", &r.LastError},
		{"last_boot", jsonCol[[]model.BootStage]{&r.LastBoot}},
		{"updated_at", timeCol{&vm.UpdatedAt}},
	}
}

var (
	vmCols      = columns(vmFields(&model.VM{}))
	vmSelectSQL = "SELECT " + strings.Join(vmCols, ", ") + " FROM vms"
	vmInsertSQL = insertSQL("vms", vmCols)
	vmUpdateSQL = updateSQL("vms", vmCols[2:], "id") // never id, created_at
)

func scanVM(row interface{ Scan(...any) error }) (model.VM, error) {
	var vm model.VM
	err := row.Scan(refs(vmFields(&vm))...)
	return vm, err
}

// writeVM inserts vm, or with update rewrites all but id and created_at.
func writeVM(ctx context.Context, q querier, vm *model.VM, update bool) error {
	args := refs(vmFields(vm))
	if !update {
		_, err := q.ExecContext(ctx, vmInsertSQL, args...)
		return vmConflict(err, vm)
	}
	res, err := q.ExecContext(ctx, vmUpdateSQL, append(args[2:], vm.ID)...)
	if err != nil {
		return vmConflict(err, vm)
	}
	return mustAffect(res, "vm", vm.ID)
}

// vmConflict names the field a uniqueness violation is about. If several
// clash, SQLite reports (and this names) the first index it checked.
func vmConflict(err error, vm *model.VM) error {
	col, ok := uniqueViolation(err)
	if !ok {
		return err
	}
	switch col {
	case "vms.id":
		return conflictf("vm id %q already exists", vm.ID)
	case "vms.name":
		return conflictf("vm name %q already exists", vm.Name)
	case "vms.guest_ip":
		return conflictf("guest ip %s already assigned", vm.Runtime.GuestIP)
	case "vms.vsock_cid":
		return conflictf("vsock cid %d already assigned", vm.Runtime.VSockCID)
	}
	return conflictf("vm %q conflicts with an existing vm (%s)", vm.Name, col)
}

func validVM(vm *model.VM) error {
	switch {
	case vm.ID == "":
		return rpc.Errorf(rpc.ErrBadRequest, "vm %q without an id", vm.Name)
	case vm.Name == "":
		return rpc.Errorf(rpc.ErrBadRequest, "vm %s without a name", vm.ID)
	case !vm.Runtime.State.Valid():
		return rpc.Errorf(rpc.ErrBadRequest, "vm %q: invalid state %q", vm.Name, vm.Runtime.State)
	}
	return nil
}

// CreateVM inserts vm. A zero CreatedAt is set to now and a zero UpdatedAt
// to CreatedAt (in vm too). A taken id, name, guest IP or vsock CID is
// rpc.ErrConflict naming the field.
func (s *Store) CreateVM(ctx context.Context, vm *model.VM) error {
	if err := validVM(vm); err != nil {
		return err
	}
	v := *vm
	if v.CreatedAt.IsZero() {
		v.CreatedAt = now()
	}
	if v.UpdatedAt.IsZero() {
		v.UpdatedAt = v.CreatedAt
	}
	if err := writeVM(ctx, s.db, &v, false); err != nil {
		return fmt.Errorf("create vm %q: %w", vm.Name, err)
	}
	*vm = v
	return nil
}

// GetVM returns the VM with this exact id, or rpc.ErrNotFound.
func (s *Store) GetVM(ctx context.Context, id string) (model.VM, error) {
	return getVM(ctx, s.db, "id", id)
}

// GetVMByName returns the VM with this exact name, or rpc.ErrNotFound.
func (s *Store) GetVMByName(ctx context.Context, name string) (model.VM, error) {
	return getVM(ctx, s.db, "name", name)
}

func getVM(ctx context.Context, q querier, col, val string) (model.VM, error) {
	vm, err := scanVM(q.QueryRowContext(ctx, vmSelectSQL+" WHERE "+col+" = ?", val))
	if errors.Is(err, sql.ErrNoRows) {
		return model.VM{}, rpc.Errorf(rpc.ErrNotFound, "vm %q", val)
	}
	if err != nil {
		return model.VM{}, fmt.Errorf("get vm %q: %w", val, err)
	}
	return vm, nil
}

// LookupVM resolves what a user typed: an exact id, else an exact name,
// else an id prefix of at least 4 characters that matches exactly one VM.
// No match is rpc.ErrNotFound; an ambiguous prefix is rpc.ErrBadRequest.
func (s *Store) LookupVM(ctx context.Context, ref string) (model.VM, error) {
	vm, err := scanVM(s.db.QueryRowContext(ctx,
		vmSelectSQL+" WHERE id = ?1 OR name = ?1 ORDER BY id = ?1 DESC LIMIT 1", ref))
	switch {
	case err == nil:
		return vm, nil
	case !errors.Is(err, sql.ErrNoRows):
		return model.VM{}, fmt.Errorf("lookup vm %q: %w", ref, err)
	}
	if len(ref) < minIDPrefix {
		return model.VM{}, rpc.Errorf(rpc.ErrNotFound, "vm %q", ref)
	}
	rows, err := s.db.QueryContext(ctx,
		vmSelectSQL+" WHERE substr(id, 1, length(?1)) = ?1 ORDER BY id LIMIT 2", ref)
	if err != nil {
		return model.VM{}, fmt.Errorf("lookup vm %q: %w", ref, err)
	}
	vms, err := collectVMs(rows)
	switch {
	case err != nil:
		return model.VM{}, fmt.Errorf("lookup vm %q: %w", ref, err)
	case len(vms) == 0:
		return model.VM{}, rpc.Errorf(rpc.ErrNotFound, "vm %q", ref)
	case len(vms) > 1:
		return model.VM{}, rpc.Errorf(rpc.ErrBadRequest, "vm %q: ambiguous id prefix (%s, %s, ...)",
			ref, vms[0].ID, vms[1].ID)
	}
	return vms[0], nil
}

// ListVMs returns every VM, oldest first (ties by name).
func (s *Store) ListVMs(ctx context.Context) ([]model.VM, error) {
	rows, err := s.db.QueryContext(ctx, vmSelectSQL+" ORDER BY created_at, name")
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	vms, err := collectVMs(rows)
	if err != nil {
		return nil, fmt.Errorf("list vms: %w", err)
	}
	return vms, nil
}

func collectVMs(rows *sql.Rows) ([]model.VM, error) {
	defer rows.Close()
	var vms []model.VM
	for rows.Next() {
		vm, err := scanVM(rows)
		if err != nil {
			return nil, err
		}
		vms = append(vms, vm)
	}
	return vms, rows.Err()
}

// UpdateVM rewrites the whole row of vm.ID except CreatedAt, and sets
// UpdatedAt to now (in vm too, on success). A missing VM is
// rpc.ErrNotFound; a taken name, guest IP or vsock CID rpc.ErrConflict.
func (s *Store) UpdateVM(ctx context.Context, vm *model.VM) error {
	if err := validVM(vm); err != nil {
		return err
	}
	v := *vm
	v.UpdatedAt = now()
	if err := writeVM(ctx, s.db, &v, true); err != nil {
		return fmt.Errorf("update vm %q: %w", vm.Name, err)
	}
	vm.UpdatedAt = v.UpdatedAt
	return nil
}

// UpdateVMRuntime reads the VM with this id, lets fn change its runtime and
// writes it back with a new UpdatedAt, all in one transaction holding the
// write lock, so concurrent updates (from any process) never lose one
// another. An error from fn aborts the update and is returned as is. It
// returns the VM as written.
func (s *Store) UpdateVMRuntime(ctx context.Context, id string, fn func(*model.VMRuntime) error) (model.VM, error) {
	var vm model.VM
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		if vm, err = getVM(ctx, tx, "id", id); err != nil {
			return err
		}
		if err := fn(&vm.Runtime); err != nil {
			return err
		}
		if err := validVM(&vm); err != nil {
			return err
		}
		vm.UpdatedAt = now()
		if err := writeVM(ctx, tx, &vm, true); err != nil {
			return fmt.Errorf("update vm %q: %w", vm.Name, err)
		}
		return nil
	})
	if err != nil {
		return model.VM{}, err
	}
	return vm, nil
}

// DeleteVM deletes the VM with this id, or is rpc.ErrNotFound.
func (s *Store) DeleteVM(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, "DELETE FROM vms WHERE id = ?", id)
	if err != nil {
		return fmt.Errorf("delete vm %q: %w", id, err)
	}
	return mustAffect(res, "vm", id)
}

// VMsUsingImage returns the names of the VMs made from image, sorted.
func (s *Store) VMsUsingImage(ctx context.Context, image string) ([]string, error) {
	names, err := vmsUsingImage(ctx, s.db, image)
	if err != nil {
		return nil, fmt.Errorf("vms using image %q: %w", image, err)
	}
	return names, nil
}

func vmsUsingImage(ctx context.Context, q querier, image string) ([]string, error) {
	return queryList[string](ctx, q, "SELECT name FROM vms WHERE image = ? ORDER BY name", image)
}

// UsedGuestIPs returns every assigned guest IP, sorted as text.
func (s *Store) UsedGuestIPs(ctx context.Context) ([]string, error) {
	ips, err := queryList[string](ctx, s.db, "SELECT guest_ip FROM vms WHERE guest_ip != '' ORDER BY guest_ip")
	if err != nil {
		return nil, fmt.Errorf("used guest ips: %w", err)
	}
	return ips, nil
}

// UsedVSockCIDs returns every assigned vsock CID, ascending.
func (s *Store) UsedVSockCIDs(ctx context.Context) ([]uint32, error) {
	cids, err := queryList[uint32](ctx, s.db, "SELECT vsock_cid FROM vms WHERE vsock_cid != 0 ORDER BY vsock_cid")
	if err != nil {
		return nil, fmt.Errorf("used vsock cids: %w", err)
	}
	return cids, nil
}

// queryList runs a one-column query and collects the column.
func queryList[T any](ctx context.Context, q querier, query string, args ...any) ([]T, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		var v T
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}
