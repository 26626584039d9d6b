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
	SubUIDFile = subid.UIDFile
	SubGIDFile = subid.GIDFile
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
	// mmdebstrap uses the first entry of the user only.
	if r, ok := subid.First(ranges, user); ok {
		got := SubIDRange{Start: r.Start, Count: r.Count}
		if r.Count < MinSubIDs {
			return got, fmt.Errorf("%s: %s has %d subordinate ids, fewer than the %d an image build needs: %w", file, user, r.Count, MinSubIDs, ErrNoSubIDs)
		}
		return got, nil
	}
	if _, byUID := subid.First(ranges, strconv.Itoa(uid)); byUID {
		return SubIDRange{}, fmt.Errorf("%s lists uid %d but not the name %s, and mmdebstrap looks users up by name: %w", file, uid, user, ErrNoSubIDs)
	}
	return SubIDRange{}, fmt.Errorf("%s has no entry for %s: %w", file, user, ErrNoSubIDs)
}

// SubIDOverlaps lists what lets one account act as another through
// subordinate ids, as it concerns user (uid, gid): a subordinate range of
// anyone's over user's uid (in SubUIDFile) or gid (in SubGIDFile), so that
// its owner can be user to the root helper or open user's TAPs; and user's
// own first ranges over another account's uid (/etc/passwd) or gid
// (/etc/group). Each line names the range, its owner and the account. Files
// that cannot be read are skipped (the other checks report them).
func SubIDOverlaps(user string, uid, gid uint64) []string {
	return subIDOverlaps(SubUIDFile, SubGIDFile, subid.PasswdFile, subid.GroupFile, user, uid, gid)
}

func subIDOverlaps(subuid, subgid, passwd, group, user string, uid, gid uint64) []string {
	var out []string
	for _, f := range []struct {
		file, kind, accounts string
		id                   uint64
	}{{subuid, "uid", passwd, uid}, {subgid, "gid", group, gid}} {
		ranges, err := subid.Read(f.file)
		if err != nil {
			continue
		}
		for _, r := range subid.Containing(ranges, f.id) {
			out = append(out, fmt.Sprintf("%s's subordinate %ss %d-%d in %s hold %s's %s %d: %s can act as %s",
				r.Owner, f.kind, r.Start, r.Last(), f.file, user, f.kind, f.id, r.Owner, user))
		}
		own, ok := subid.First(ranges, user)
		if !ok {
			continue
		}
		accounts, err := subid.Accounts(f.accounts)
		if err != nil {
			continue
		}
		for _, a := range accounts {
			if own.Contains(a.ID) && a.Name != user {
				out = append(out, fmt.Sprintf("%s's subordinate %ss %d-%d in %s hold %s %d of %s (%s): %s can act as %s",
					user, f.kind, own.Start, own.Last(), f.file, f.kind, a.ID, a.Name, f.accounts, user, a.Name))
			}
		}
	}
	return out
}

// SubIDOverlapHint is what to do about SubIDOverlaps' findings.
const SubIDOverlapHint = "root moves the range off the account's id (sudo usermod --del-subuids START-END --add-subuids NEWSTART-NEWEND OWNER, likewise --del-subgids/--add-subgids; a free range starts after the highest in the file and holds no id of /etc/passwd or /etc/group)"

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
