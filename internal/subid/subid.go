// Package subid reads /etc/subuid and /etc/subgid (name:start:count per
// line): which subordinate ids a user may map into a user namespace, as
// newuidmap and newgidmap enforce them. Unprivileged image builds
// (mmdebstrap --mode=unshare) need a range of Needed ids; `banger system
// install` adds one when a user has none, and `banger doctor` checks it.
package subid

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
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

// Has reports whether owner's first range (mmdebstrap uses only that one,
// looked up by name) holds at least n ids.
func Has(ranges []Range, owner string, n uint64) bool {
	for _, r := range ranges {
		if r.Owner == owner {
			return r.Count >= n
		}
	}
	return false
}

// Free returns the start of n ids that no range uses: after the highest
// range, and at least 100000.
func Free(ranges []Range, n uint64) uint64 {
	start := uint64(firstFree)
	for _, r := range ranges {
		if end := r.Start + r.Count; end > start {
			start = end
		}
	}
	return start
}
