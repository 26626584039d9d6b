// Package subid reads /etc/subuid and /etc/subgid (name:start:count per
// line): which subordinate ids a user may map into a user namespace, as
// newuidmap and newgidmap enforce them. Unprivileged image builds
// (mmdebstrap --mode=unshare) need a range of Needed ids; `banger system
// install` adds one when a user has none, and `banger doctor` checks it.
//
// A subordinate range must hold no account's id: a process in a namespace
// that maps an id of the range is, to the kernel outside it, that id, so a
// range over another account's uid lets its owner act as that account
// (towards the root helper, which admits callers by SO_PEERCRED), and one
// over a gid lets it open that group's TAPs. Free picks around the ids of
// /etc/passwd and /etc/group (AccountIDs); Containing finds the ranges over
// an id.
//
// This package is the one parser of these files; hostcheck and the CLI go
// through it.
package subid

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// The files.
const (
	UIDFile    = "/etc/subuid"
	GIDFile    = "/etc/subgid"
	PasswdFile = "/etc/passwd"
	GroupFile  = "/etc/group"
)

// Needed is the size of the range an image build maps (uid 0 to 65535 of
// the guest tree).
const Needed = 65536

// firstFree is where new ranges start at the lowest (as useradd does).
const firstFree = 100000

// Range is one line: Owner may map Count ids from Start.
type Range struct {
	Owner        string
	Start, Count uint64
}

// Last is the range's last id.
func (r Range) Last() uint64 { return r.Start + r.Count - 1 }

// Contains reports whether id lies in the range.
func (r Range) Contains(id uint64) bool { return id >= r.Start && id-r.Start < r.Count }

func (r Range) String() string { return fmt.Sprintf("%s's %d-%d", r.Owner, r.Start, r.Last()) }

// Read parses a subuid or subgid file; a missing file has no ranges.
// Malformed lines are skipped, as newuidmap does.
func Read(path string) ([]Range, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return Parse(raw), nil
}

// Parse parses the text of a subuid or subgid file.
func Parse(raw []byte) []Range {
	var out []Range
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		f := strings.Split(strings.TrimSpace(sc.Text()), ":")
		if len(f) != 3 || f[0] == "" || strings.HasPrefix(f[0], "#") {
			continue
		}
		start, err1 := strconv.ParseUint(f[1], 10, 32)
		count, err2 := strconv.ParseUint(f[2], 10, 32)
		if err1 != nil || err2 != nil || count == 0 {
			continue
		}
		out = append(out, Range{Owner: f[0], Start: start, Count: count})
	}
	return out
}

// First is owner's first range: the one mmdebstrap uses, looked up by
// name.
func First(ranges []Range, owner string) (Range, bool) {
	i := slices.IndexFunc(ranges, func(r Range) bool { return r.Owner == owner })
	if i < 0 {
		return Range{}, false
	}
	return ranges[i], true
}

// Has reports whether owner's first range holds at least n ids.
func Has(ranges []Range, owner string, n uint64) bool {
	r, ok := First(ranges, owner)
	return ok && r.Count >= n
}

// Containing returns the ranges that hold id.
func Containing(ranges []Range, id uint64) []Range {
	var out []Range
	for _, r := range ranges {
		if r.Contains(id) {
			out = append(out, r)
		}
	}
	return out
}

// Free returns the start of n ids that no range uses and that hold none
// of taken (accounts' ids): after the highest range, at least 100000, and
// past every taken id that would fall inside.
func Free(ranges []Range, n uint64, taken []uint64) uint64 {
	start := uint64(firstFree)
	for _, r := range ranges {
		if end := r.Start + r.Count; end > start {
			start = end
		}
	}
	ids := slices.Sorted(slices.Values(taken))
	for _, id := range ids {
		if id >= start && id-start < n {
			start = id + 1
		}
	}
	return start
}

// AccountIDs returns every uid and gid of the accounts in passwd (its uid
// and primary gid fields) and of the groups in group; a missing file has
// none. The ids are in no order and may repeat.
func AccountIDs(passwd, group string) ([]uint64, error) {
	var out []uint64
	for _, f := range []struct {
		path   string
		fields []int
	}{{passwd, []int{2, 3}}, {group, []int{2}}} {
		raw, err := os.ReadFile(f.path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", f.path, err)
		}
		for _, line := range strings.Split(string(raw), "\n") {
			cols := strings.Split(line, ":")
			for _, i := range f.fields {
				if i >= len(cols) {
					continue
				}
				if id, err := strconv.ParseUint(cols[i], 10, 32); err == nil {
					out = append(out, id)
				}
			}
		}
	}
	return out, nil
}

// Account is a name with its id, from /etc/passwd or /etc/group.
type Account struct {
	Name string
	ID   uint64
}

// Accounts returns the (name, id) pairs of a passwd or group file (the
// third field); a missing file has none.
func Accounts(path string) ([]Account, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	var out []Account
	for _, line := range strings.Split(string(raw), "\n") {
		cols := strings.Split(line, ":")
		if len(cols) < 3 || cols[0] == "" || strings.HasPrefix(cols[0], "#") {
			continue
		}
		if id, err := strconv.ParseUint(cols[2], 10, 32); err == nil {
			out = append(out, Account{Name: cols[0], ID: id})
		}
	}
	return out, nil
}
