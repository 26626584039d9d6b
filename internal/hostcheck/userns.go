package hostcheck

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/subid"
)

// What an unprivileged image build (mmdebstrap --mode=unshare) needs of the
// host: subordinate ids for the user, newuidmap and newgidmap able to map
// them, and user namespaces the kernel lets an unprivileged user create.

// Files of subordinate ids (subuid(5), subgid(5)).
const (
	SubUIDFile = "/etc/subuid"
	SubGIDFile = "/etc/subgid"
)

// MinSubIDs is the smallest subordinate id range an image build accepts:
// Debian's packages use ids up to 65534 (nobody) inside the build.
const MinSubIDs = subid.Needed

// SubIDRange is the first range of subordinate ids a user has in a file.
type SubIDRange struct {
	Start, Count uint64
}

// ErrNoSubIDs: the user has no usable range in the file.
var ErrNoSubIDs = errors.New("no subordinate id range")

// SubIDs returns user's first range in file (SubUIDFile or SubGIDFile,
// parsed by package subid), looked up by user name as mmdebstrap does. A
// range of fewer than MinSubIDs ids, a file that is missing or a user that
// appears only by numeric uid (newuidmap accepts that, mmdebstrap does
// not) is ErrNoSubIDs, with the reason.
func SubIDs(file, user string, uid int) (SubIDRange, error) {
	if _, err := os.Stat(file); err != nil {
		return SubIDRange{}, fmt.Errorf("%s: %w (%v)", file, ErrNoSubIDs, err)
	}
	ranges, err := subid.Read(file)
	if err != nil {
		return SubIDRange{}, err
	}
	byUID := false
	for _, r := range ranges {
		if r.Owner == strconv.Itoa(uid) {
			byUID = true
		}
		if r.Owner != user {
			continue
		}
		// mmdebstrap uses the first entry of the user only.
		got := SubIDRange{Start: r.Start, Count: r.Count}
		if r.Count < MinSubIDs {
			return got, fmt.Errorf("%s: %s has %d subordinate ids, fewer than the %d an image build needs: %w", file, user, r.Count, MinSubIDs, ErrNoSubIDs)
		}
		return got, nil
	}
	if byUID {
		return SubIDRange{}, fmt.Errorf("%s lists uid %d but not the name %s, and mmdebstrap looks users up by name: %w", file, uid, user, ErrNoSubIDs)
	}
	return SubIDRange{}, fmt.Errorf("%s has no entry for %s: %w", file, user, ErrNoSubIDs)
}

// UserNamespaces reports whether an unprivileged process may create a user
// namespace: user.max_user_namespaces above 0 and, on kernels that have the
// switch (Debian's before 6.x, Ubuntu's), kernel.unprivileged_userns_clone
// set to 1.
func UserNamespaces() (bool, string) {
	return userNamespaces("/proc/sys/user/max_user_namespaces", "/proc/sys/kernel/unprivileged_userns_clone")
}

func userNamespaces(maxFile, cloneFile string) (bool, string) {
	raw, err := os.ReadFile(maxFile)
	if err != nil {
		return false, fmt.Sprintf("reading %s: %v", maxFile, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil || n <= 0 {
		return false, fmt.Sprintf("%s is %q: user namespaces are off", maxFile, strings.TrimSpace(string(raw)))
	}
	detail := fmt.Sprintf("%s = %d", maxFile, n)
	raw, err = os.ReadFile(cloneFile)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return false, fmt.Sprintf("reading %s: %v", cloneFile, err)
	case strings.TrimSpace(string(raw)) != "1":
		return false, fmt.Sprintf("%s is %q: unprivileged users may not create user namespaces", cloneFile, strings.TrimSpace(string(raw)))
	default:
		detail += ", " + cloneFile + " = 1"
	}
	return true, detail
}

// IDMapper finds newuidmap or newgidmap (name) in PATH and checks that it
// can map subordinate ids: setuid root, or holding file capabilities
// (security.capability).
func IDMapper(name string) (string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return "", err
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return path, err
	}
	if st.Uid == 0 && st.Mode&unix.S_ISUID != 0 {
		return path, nil
	}
	if n, err := unix.Getxattr(path, "security.capability", nil); err == nil && n > 0 {
		return path, nil
	}
	return path, fmt.Errorf("%s is neither setuid root nor has file capabilities, so it cannot map subordinate ids", path)
}
