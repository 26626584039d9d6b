package hostcheck

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

// ProcMisc lists the kernel's registered misc devices ("MINOR NAME" lines).
const ProcMisc = "/proc/misc"

// DeviceMapperControl is device-mapper's control node.
const DeviceMapperControl = "/dev/mapper/control"

// DeviceMapper reports whether the running kernel has device-mapper. The
// kernel registers it as the misc device "device-mapper" when dm_mod is
// built in or loaded, so misc (ProcMisc; a parameter for tests) is the
// truth: a /dev/mapper/control node alone proves nothing, since a node
// left by an earlier kernel or made by hand outlives the driver (opening
// it then fails with ENODEV). control (DeviceMapperControl) only refines
// the detail. The detail says which case it is.
func DeviceMapper(misc, control string) (bool, string) {
	listed, err := miscHas(misc, "device-mapper")
	if err != nil {
		return false, fmt.Sprintf("cannot tell whether the kernel has device-mapper: %v", err)
	}
	_, nodeErr := os.Stat(control)
	switch {
	case listed && nodeErr == nil:
		return true, "the kernel has device-mapper (" + misc + " lists it; " + control + " present)"
	case listed:
		return true, "the kernel has device-mapper (" + misc + " lists it), but " + control + " is missing"
	case nodeErr == nil:
		return false, "this kernel has no device-mapper: " + misc + " does not list it (" + control + " is a stale node)"
	}
	return false, "this kernel has no device-mapper (" + misc + " does not list it)"
}

// miscHas reports whether the misc device list at path has name.
func miscHas(path, name string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) == 2 && fs[1] == name {
			return true, nil
		}
	}
	return false, sc.Err()
}
