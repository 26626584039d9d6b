package hostcheck

import (
	"bufio"
	"compress/gzip"
	"context"
	"fmt"
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
