package hostcheck

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Status of one check.
type Status string

const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "fail"
)

// Check is one line of `banger doctor`: what was checked, the verdict,
// what was found and, unless it is ok, what to do.
type Check struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Hint   string `json:"hint,omitempty"`
}

// BinaryVersion finds bin in PATH and returns its path and the first line of
// `bin --version`.
func BinaryVersion(ctx context.Context, bin string) (path, version string, err error) {
	path, err = exec.LookPath(bin)
	if err != nil {
		return "", "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return path, "", fmt.Errorf("%s --version: %w", path, err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return path, strings.TrimSpace(line), nil
}

// CheckDevice reports whether a character device exists and whether this
// process can open it read-write.
func CheckDevice(path string) (exists, openable bool, err error) {
	if _, err := os.Stat(path); err != nil {
		return false, false, err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return true, false, err
	}
	f.Close()
	return true, true, nil
}

// DeviceMapperAvailable reports whether the kernel has device-mapper: the
// control node exists and the misc device is registered.
func DeviceMapperAvailable() (bool, string) {
	if _, err := os.Stat("/dev/mapper/control"); err != nil {
		if miscHas("device-mapper") {
			return false, "the kernel registers device-mapper but /dev/mapper/control is missing"
		}
		return false, "this kernel has no device-mapper (no /dev/mapper/control, none in /proc/misc)"
	}
	return true, "/dev/mapper/control present"
}

func miscHas(name string) bool {
	b, err := os.ReadFile("/proc/misc")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[1] == name {
			return true
		}
	}
	return false
}

// NFTablesAvailable reports whether the kernel has nf_tables: loaded as a
// module, built in (modules.builtin, /proc/config.gz), or loadable.
func NFTablesAvailable() (bool, string) {
	if _, err := os.Stat("/sys/module/nf_tables"); err == nil {
		return true, "nf_tables is loaded"
	}
	if b, err := os.ReadFile("/proc/modules"); err == nil && strings.Contains(string(b), "nf_tables ") {
		return true, "nf_tables is loaded"
	}
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	release := unix.ByteSliceToString(uts.Release[:])
	if b, err := os.ReadFile("/lib/modules/" + release + "/modules.builtin"); err == nil && strings.Contains(string(b), "/nf_tables.ko") {
		return true, "nf_tables is built into the kernel"
	}
	if kernelConfigHas("/proc/config.gz", "CONFIG_NF_TABLES=y") {
		return true, "nf_tables is built into the kernel"
	}
	if matches, _ := filepath.Glob("/lib/modules/" + release + "/kernel/net/netfilter/nf_tables.ko*"); len(matches) > 0 {
		return true, "nf_tables is a module; the helper's first NAT setup loads it"
	}
	return false, "no nf_tables in this kernel (not loaded, not built in, no module found)"
}

// kernelConfigHas looks for a line in a gzipped kernel config such as
// /proc/config.gz.
func kernelConfigHas(path, line string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return false
	}
	sc := bufio.NewScanner(zr)
	for sc.Scan() {
		if sc.Text() == line {
			return true
		}
	}
	return false
}

// FreeBytes is the space available to unprivileged users under path.
func FreeBytes(path string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// Route is an IPv4 route of the host's main table.
type Route struct {
	Iface  string
	Prefix netip.Prefix
}

// IPv4Routes reads the host's IPv4 routes from /proc/net/route (readable by
// any user; no privileges or netlink socket needed).
func IPv4Routes() ([]Route, error) {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Route
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 8 {
			continue
		}
		dst, err1 := leHexIP(fl[1])
		mask, err2 := leHexIP(fl[7])
		if err1 != nil || err2 != nil {
			continue
		}
		bits := 0
		for _, b := range mask.As4() {
			for i := 7; i >= 0; i-- {
				if b&(1<<i) != 0 {
					bits++
				}
			}
		}
		out = append(out, Route{Iface: fl[0], Prefix: netip.PrefixFrom(dst, bits).Masked()})
	}
	return out, sc.Err()
}

func leHexIP(s string) (netip.Addr, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 4 {
		return netip.Addr{}, fmt.Errorf("bad address %q", s)
	}
	return netip.AddrFrom4([4]byte{b[3], b[2], b[1], b[0]}), nil
}

// SubnetClashes lists the routes, other than the default route and those on
// banger's own bridge, that overlap subnet.
func SubnetClashes(routes []Route, subnet netip.Prefix, bridge string) []Route {
	var out []Route
	for _, r := range routes {
		if r.Iface == bridge || r.Prefix.Bits() == 0 {
			continue
		}
		if r.Prefix.Overlaps(subnet) {
			out = append(out, r)
		}
	}
	return out
}
