package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/runner"
)

// Version is a Firecracker release number.
type Version struct {
	Major, Minor, Patch int
	// Suffix is what follows the number ("-dev", "+fuzzing"), if anything.
	Suffix string
}

// MinVersion is the oldest Firecracker banger drives: PUT /serial, which
// gives the guest's console its own file, came in 1.14.
var MinVersion = Version{Major: 1, Minor: 14}

// VsockOverrideVersion is the first release whose PUT /snapshot/load takes
// vsock_override.
var VsockOverrideVersion = Version{Major: 1, Minor: 16}

func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d%s", v.Major, v.Minor, v.Patch, v.Suffix)
}

// Less reports whether v is an older release than o. Suffixes are not
// compared: 1.17.0-dev counts as 1.17.0.
func (v Version) Less(o Version) bool {
	if v.Major != o.Major {
		return v.Major < o.Major
	}
	if v.Minor != o.Minor {
		return v.Minor < o.Minor
	}
	return v.Patch < o.Patch
}

// ParseVersion reads a Firecracker version as GET /version gives it
// ("1.16.1") or as `firecracker --version` prints it ("Firecracker
// v1.16.1", then a blank line).
func ParseVersion(s string) (Version, error) {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	line = strings.TrimSpace(line)
	num := strings.TrimPrefix(line, "Firecracker ")
	num = strings.TrimPrefix(num, "v")
	var v Version
	core := num
	if i := strings.IndexAny(num, "-+ "); i >= 0 {
		core, v.Suffix = num[:i], num[i:]
	}
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return Version{}, fmt.Errorf("firecracker version %q: want MAJOR.MINOR.PATCH", line)
	}
	var nums [3]int
	for i, p := range parts {
		if p == "" || strings.Trim(p, "0123456789") != "" {
			return Version{}, fmt.Errorf("firecracker version %q: want MAJOR.MINOR.PATCH", line)
		}
		n, err := strconv.Atoi(p)
		if err != nil {
			return Version{}, fmt.Errorf("firecracker version %q: %w", line, err)
		}
		nums[i] = n
	}
	v.Major, v.Minor, v.Patch = nums[0], nums[1], nums[2]
	return v, nil
}

// TooOldError is a Firecracker older than MinVersion (or than what one
// operation needs).
type TooOldError struct {
	Binary string // the binary that answered
	Found  Version
	Need   Version
	Why    string // what the needed release brought
}

func (e *TooOldError) Error() string {
	return fmt.Sprintf("Firecracker %s (%s) is too old: banger needs %d.%d or newer (%s)",
		e.Found, e.Binary, e.Need.Major, e.Need.Minor, e.Why)
}

// checkVersion returns a TooOldError, with the user's way out as its hint,
// when found is older than need.
func checkVersion(where string, found, need Version, why string) error {
	if !found.Less(need) {
		return nil
	}
	return rpc.WithHint(&TooOldError{Binary: where, Found: found, Need: need, Why: why},
		fmt.Sprintf("install Firecracker %d.%d or newer (https://github.com/firecracker-microvm/firecracker/releases) as paths.firecracker, or set vmm = \"qemu\" in the config", need.Major, need.Minor))
}

// whyMin says what MinVersion brought, for errors.
const whyMin = "PUT /serial, which gives the guest's console its own file, came in 1.14"

// CheckVersion finds binary (a path or a name in PATH), runs
// `binary --version` and checks the release is MinVersion or newer. It
// returns the binary's path and version; a binary that is there but too
// old gives both with a *TooOldError. This is doctor's check; Start and
// Restore also ask the running process (GET /version).
func CheckVersion(ctx context.Context, binary string) (path string, v Version, err error) {
	path, err = exec.LookPath(binary)
	if err != nil {
		return "", Version{}, fmt.Errorf("firecracker: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := (&runner.Exec{}).Run(ctx, path, "--version")
	if err != nil {
		return path, Version{}, fmt.Errorf("firecracker: %w", err)
	}
	v, err = ParseVersion(string(out))
	if err != nil {
		return path, Version{}, fmt.Errorf("%s --version: %w", path, err)
	}
	return path, v, checkVersion(path, v, MinVersion, whyMin)
}

// apiVersion asks a running Firecracker, binary, its version
// (GET /version) and checks it is MinVersion or newer.
func apiVersion(ctx context.Context, c *Client, binary string) (Version, error) {
	s, err := c.Version(ctx)
	if err != nil {
		return Version{}, err
	}
	v, err := ParseVersion(s)
	if err != nil {
		return Version{}, fmt.Errorf("GET /version: %w", err)
	}
	return v, checkVersion(binary, v, MinVersion, whyMin)
}

// IsTooOld reports whether err says Firecracker is too old.
func IsTooOld(err error) bool {
	var e *TooOldError
	return errors.As(err, &e)
}
