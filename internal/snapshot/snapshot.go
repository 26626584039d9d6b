// Package snapshot is the durable side of banger's snapshots: the
// manifest that says what a saved VM state is and what a restore must
// match, the directory a snapshot's files are written to (a temporary one,
// renamed into place complete and synced), and which frozen disk bases
// are still needed. It runs no VMM and touches no database: the daemon
// wires it to the drivers (vmm.Snapshotter) and the store.
package snapshot

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/model"
)

// ManifestVersion is the manifest format this package writes and reads.
const ManifestVersion = 1

// Files of a snapshot directory.
const (
	FileManifest = "manifest.json"
	FileState    = "state"  // the VMM's device state (qemu: the migration stream)
	FileMemory   = "memory" // the guest's memory, when apart from the state
	FileConfig   = "config.tar"
)

// Manifest describes one snapshot: where it came from, what it holds, and
// the facts of the VM and host it was made on that a restore must match.
type Manifest struct {
	Version   int       `json:"version"`
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Kind      string    `json:"kind"` // model.Snapshot*
	CreatedAt time.Time `json:"created_at"`

	// Source is the VM it was taken from, and its identity then.
	Source Source `json:"source"`

	// Machine is what a restore must match.
	Machine Machine `json:"machine"`

	// Disks are the frozen disks, in the VM's disk order.
	Disks []Disk `json:"disks"`
	// State and Memory are file names in the snapshot's directory;
	// Memory is "" when the memory is in the state (a qemu VM whose RAM
	// was not in a memfd).
	State  string `json:"state"`
	Memory string `json:"memory,omitempty"`
}

// Source is the VM a snapshot was taken from.
type Source struct {
	VMID     string `json:"vm_id"`
	VMName   string `json:"vm_name"`
	Hostname string `json:"hostname"`
	IP       string `json:"ip"`
	MAC      string `json:"mac"`
}

// Machine is everything a restore must match exactly: the VMM and its
// exact version, the accelerator and CPU model, memory and vCPUs, the
// image (by name and build), the guest contract, and the VMM's device set
// (Devices: a fingerprint of the argv without per-VM values).
type Machine struct {
	VMM           string `json:"vmm"`
	VMMVersion    string `json:"vmm_version"`
	Accel         string `json:"accel"`
	CPU           string `json:"cpu"`
	VCPUs         int    `json:"vcpus"`
	MemoryMiB     int    `json:"memory_mib"`
	DiskSizeBytes int64  `json:"disk_size_bytes"`
	Image         string `json:"image"`
	ImageBuild    string `json:"image_build"` // the rootfs's sha256, or its size and time when unhashed
	GuestContract int    `json:"guest_contract"`
	Devices       string `json:"devices"`
}

// Disk is one frozen disk of a snapshot.
type Disk struct {
	ID     string `json:"id"`   // rootfs, work, config
	Base   string `json:"base"` // a model.Base id; "" for the config disk, a file of the snapshot
	Format string `json:"format"`
	File   string `json:"file,omitempty"` // a file of the snapshot's own (the config disk)
}

// Mismatch is why a snapshot cannot be restored here: each differing fact
// with the snapshot's value and this host's or VM's.
type Mismatch struct {
	Diffs []Diff
}

// Diff is one differing fact.
type Diff struct {
	What, Snapshot, Here string
}

func (m *Mismatch) Error() string {
	parts := make([]string, len(m.Diffs))
	for i, d := range m.Diffs {
		parts[i] = fmt.Sprintf("%s: the snapshot's %s, here %s", d.What, d.Snapshot, d.Here)
	}
	return "the snapshot does not match: " + strings.Join(parts, "; ")
}

// Compare returns a *Mismatch naming every fact of want that differs from
// the snapshot's, or nil. With sizeMatters false the work disk's size is
// not compared (a restore keeps the snapshot's disks, whatever was asked).
func (m Machine) Compare(want Machine, sizeMatters bool) error {
	var diffs []Diff
	add := func(what string, a, b any) {
		if fmt.Sprint(a) != fmt.Sprint(b) {
			diffs = append(diffs, Diff{what, quote(a), quote(b)})
		}
	}
	add("vmm", m.VMM, want.VMM)
	add("vmm version", m.VMMVersion, want.VMMVersion)
	add("accelerator", m.Accel, want.Accel)
	add("cpu model", m.CPU, want.CPU)
	add("vcpus", m.VCPUs, want.VCPUs)
	add("memory (MiB)", m.MemoryMiB, want.MemoryMiB)
	if sizeMatters {
		add("work disk (bytes)", m.DiskSizeBytes, want.DiskSizeBytes)
	}
	add("image", m.Image, want.Image)
	add("image build", m.ImageBuild, want.ImageBuild)
	add("guest contract", m.GuestContract, want.GuestContract)
	add("device set", m.Devices, want.Devices)
	if len(diffs) == 0 {
		return nil
	}
	return &Mismatch{Diffs: diffs}
}

func quote(v any) string {
	if s, ok := v.(string); ok {
		if s == "" {
			return "(none)"
		}
		if len(s) > 40 {
			s = s[:40] + "..."
		}
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprint(v)
}

// Read reads and checks the manifest in dir.
func Read(dir string) (Manifest, error) {
	var m Manifest
	b, err := os.ReadFile(filepath.Join(dir, FileManifest))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("snapshot manifest %s: %w", filepath.Join(dir, FileManifest), err)
	}
	if m.Version != ManifestVersion {
		return m, fmt.Errorf("snapshot manifest %s: format %d, this banger reads %d", filepath.Join(dir, FileManifest), m.Version, ManifestVersion)
	}
	return m, nil
}

// Pending is a snapshot being written: a temporary directory next to
// where it will live, renamed into place by Commit.
type Pending struct {
	Dir   string // the temporary directory: write the files here
	final string
}

// Begin makes the temporary directory for the snapshot id under root
// (STATE/snapshots): root/.tmp-ID, 0700.
func Begin(root, id string) (*Pending, error) {
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	p := &Pending{Dir: filepath.Join(root, ".tmp-"+id), final: filepath.Join(root, id)}
	if err := os.Mkdir(p.Dir, 0o700); err != nil {
		return nil, err
	}
	return p, nil
}

// Path is where a file of the snapshot is written now.
func (p *Pending) Path(name string) string { return filepath.Join(p.Dir, name) }

// Commit syncs every file, writes the manifest (synced), renames the
// directory into place and syncs its parent. It returns the final
// directory. On error the temporary directory is left for Abort.
func (p *Pending) Commit(m Manifest) (string, error) {
	m.Version = ManifestVersion
	ents, err := os.ReadDir(p.Dir)
	if err != nil {
		return "", err
	}
	for _, e := range ents {
		if err := syncFile(filepath.Join(p.Dir, e.Name())); err != nil {
			return "", err
		}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return "", err
	}
	if err := writeSynced(filepath.Join(p.Dir, FileManifest), append(b, '\n')); err != nil {
		return "", err
	}
	if err := syncFile(p.Dir); err != nil {
		return "", err
	}
	if err := os.Rename(p.Dir, p.final); err != nil {
		return "", err
	}
	return p.final, syncFile(filepath.Dir(p.final))
}

// Abort removes the temporary directory.
func (p *Pending) Abort() error { return os.RemoveAll(p.Dir) }

// IsTemp reports whether a directory name under the snapshots root is a
// snapshot being written (or left by a crash while it was).
func IsTemp(name string) bool { return strings.HasPrefix(name, ".tmp-") }

// Size is the disk space the files of dir take (allocated blocks: the
// memory file is sparse).
func Size(dir string) int64 {
	var n int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			n += allocated(fi)
		}
	}
	return n
}

func syncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", p, err)
	}
	return nil
}

func writeSynced(p string, data []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Unreferenced returns the bases that no root reaches through Backing, in
// an order that deletes a base before the one it sits on. Roots are base
// ids: those of snapshots and those VMs' disks sit on. An unknown root is
// ignored; a cycle (which banger never makes) keeps its members.
func Unreferenced(bases []model.Base, roots []string) []model.Base {
	byID := map[string]model.Base{}
	for _, b := range bases {
		byID[b.ID] = b
	}
	live := map[string]bool{}
	for _, r := range roots {
		for id := r; id != "" && !live[id]; id = byID[id].Backing {
			if _, ok := byID[id]; !ok {
				break
			}
			live[id] = true
		}
	}
	var dead []model.Base
	for _, b := range bases {
		if !live[b.ID] {
			dead = append(dead, b)
		}
	}
	// Depth from the chain's bottom: deeper (an overlay of another dead
	// base) first.
	depth := func(b model.Base) int {
		n := 0
		for seen := map[string]bool{}; b.Backing != "" && !seen[b.ID]; n++ {
			seen[b.ID] = true
			next, ok := byID[b.Backing]
			if !ok {
				break
			}
			b = next
		}
		return n
	}
	sort.SliceStable(dead, func(i, j int) bool { return depth(dead[i]) > depth(dead[j]) })
	return dead
}

// ErrInUse is a snapshot or base still needed.
var ErrInUse = errors.New("in use")
