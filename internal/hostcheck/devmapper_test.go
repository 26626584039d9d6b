package hostcheck

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Only /proc/misc counts: a stale /dev/mapper/control on a kernel without
// device-mapper is no device-mapper.
func TestDeviceMapper(t *testing.T) {
	dir := t.TempDir()
	misc := filepath.Join(dir, "misc")
	control := filepath.Join(dir, "control")
	const without = "183 hw_random\n200 tun\n237 loop-control\n232 kvm\n"
	const with = without + "236 device-mapper\n"
	for _, tc := range []struct {
		misc   string
		node   bool
		want   bool
		detail string
	}{
		{with, true, true, "present"},
		{with, false, true, "is missing"},
		{without, true, false, "stale node"},
		{without, false, false, "does not list it"},
		{"236 device-mapper-x\n12 mapper\n", true, false, "stale node"},
	} {
		os.WriteFile(misc, []byte(tc.misc), 0o644)
		os.Remove(control)
		if tc.node {
			os.WriteFile(control, nil, 0o600)
		}
		got, detail := DeviceMapper(misc, control)
		if got != tc.want || !strings.Contains(detail, tc.detail) {
			t.Errorf("misc %q node %v: %v %q; want %v, %q", tc.misc, tc.node, got, detail, tc.want, tc.detail)
		}
	}
	if got, detail := DeviceMapper(filepath.Join(dir, "none"), control); got || !strings.Contains(detail, "cannot tell") {
		t.Errorf("no misc list: %v %q", got, detail)
	}
	// The real host, whatever it has: the verdict follows /proc/misc.
	got, detail := DeviceMapper(ProcMisc, DeviceMapperControl)
	listed, _ := miscHas(ProcMisc, "device-mapper")
	t.Logf("this host: %v: %s", got, detail)
	if got != listed {
		t.Errorf("host verdict %v, /proc/misc lists it: %v", got, listed)
	}
}
