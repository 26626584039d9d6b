package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/banger-dev/banger/tests/harness"
)

// newVMEnv is an install with the image imported as "default", a bridge
// and subnet of its own, and a cleanup that deletes every VM and stops the
// helper the root daemon started.
func newVMEnv(t *testing.T, image string) *harness.Env {
	t.Helper()
	e := harness.NewEnv(t)
	e.WriteConfig("[network]\nbridge = \"bangere2e\"\nsubnet = \"10.231.9.0/24\"\ntap_pool_size = 0\n[vm]\nmemory_mib = 512\ndisk_size = \"1G\"\nboot_timeout = \"240s\"\n")
	e.MustBanger("image", "import", "--name", "default", image)
	t.Cleanup(func() {
		var list []struct {
			Name string `json:"name"`
		}
		e.JSON(&list, "vm", "list")
		for _, v := range list {
			e.Banger("vm", "delete", "--force", v.Name)
		}
		// After the suite's VMs are gone, nothing of banger's may remain.
		if r := e.Banger("system", "verify"); r.Code != 0 {
			t.Errorf("leaks after the test: %s", r)
		}
		killHelper(e)
	})
	return e
}

func killHelper(e *harness.Env) { e.KillHelper() }

// linkExists reports whether a network device exists in this namespace.
func linkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// vmmProcesses lists pids whose command line mentions dir.
func vmmProcesses(dir string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), dir) && harness.Alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// tapLinks lists banger's per-VM TAP devices in this namespace.
func tapLinks() []string {
	links, _ := netlink.LinkList()
	var out []string
	for _, l := range links {
		if n := l.Attrs().Name; strings.HasPrefix(n, "tap-") && !strings.HasPrefix(n, "tap-pool-") {
			out = append(out, n)
		}
	}
	return out
}

func linkNames() []string {
	links, _ := netlink.LinkList()
	out := make([]string, 0, len(links))
	for _, l := range links {
		out = append(out, l.Attrs().Name)
	}
	return out
}
