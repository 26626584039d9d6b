package helper

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger-dev/banger/internal/helperapi"
)

// Per-interface sysctls, under /proc/sys/net of the helper's network
// namespace. The interface name is validated (banger's own names, or an
// interface name without '/') before it is part of a path.

func confPath(family, iface, key string) string {
	return filepath.Join("/proc/sys/net", family, "conf", iface, key)
}

func readSysctl(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	return strings.TrimSpace(string(raw)), nil
}

// setSysctl writes value when the file holds something else, and reads it
// back.
func setSysctl(path, value string) error {
	if have, err := readSysctl(path); err != nil || have == value {
		return err
	}
	if err := os.WriteFile(path, []byte(value+"\n"), 0o644); err != nil {
		return fmt.Errorf("setting %s to %s: %w", path, value, err)
	}
	if have, err := readSysctl(path); err != nil || have != value {
		return fmt.Errorf("%s is still not %s after writing it", path, value)
	}
	return nil
}

// ipv6Off takes iface off the IPv6 attack surface (helperapi.IPv6Off):
// no router advertisements, no SLAAC, no redirects, IPv6 disabled. It runs
// on a new link before it is brought up, and again on every ensure. A host
// without IPv6 (no /proc/sys/net/ipv6) has nothing to turn off.
func ipv6Off(iface string) error {
	if _, err := os.Stat("/proc/sys/net/ipv6"); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	for _, kv := range helperapi.IPv6Off {
		if err := setSysctl(confPath("ipv6", iface, kv.Key), kv.Value); err != nil {
			return fmt.Errorf("%s: %w", iface, err)
		}
	}
	return nil
}
