package e2e

import (
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/testutil"
)

// TestBadInput: every refusal names what failed, its code and what to do,
// and leaves no TAP, VMM process or VM behind.
func TestBadInput(t *testing.T) {
	requireE2E(t)
	image := ensureImage(t)
	if !testutil.InNetNS(t) {
		return
	}
	e := newVMEnv(t, image)
	cases := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"invalid name", []string{"vm", "create", "--name", "Bad_Name"}, 7, []string{"vm name", "bad_request"}},
		{"name with slash", []string{"vm", "create", "--name", "a/b"}, 7, []string{"bad_request"}},
		{"unknown image", []string{"vm", "create", "--name", "x1", "--image", "nope"}, 3, []string{`image "nope"`, "not_found", "banger image build --name nope"}},
		{"memory too small", []string{"vm", "create", "--name", "x2", "--memory", "16"}, 7, []string{"too small", "--memory 128"}},
		{"disk too small", []string{"vm", "create", "--name", "x3", "--disk-size", "1M"}, 7, []string{"too small", "--disk-size"}},
		{"run without command", []string{"vm", "run", "--name", "x4"}, 2, []string{"after --"}},
	}
	for _, c := range cases {
		r := e.Banger(c.args...)
		if r.Code != c.code {
			t.Errorf("%s: exit %d, want %d\n%s", c.name, r.Code, c.code, r)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(r.Stderr, w) {
				t.Errorf("%s: stderr lacks %q:\n%s", c.name, w, r.Stderr)
			}
		}
		if c.code != 2 && !strings.Contains(r.Stderr, "op id: op-") {
			t.Errorf("%s: no op id:\n%s", c.name, r.Stderr)
		}
	}

	// A duplicate name is a conflict; the first VM is untouched.
	e.MustBanger("vm", "create", "--name", "dup", "--vcpus", "1")
	if r := e.Banger("vm", "create", "--name", "dup"); r.Code != 4 || !strings.Contains(r.Stderr, "already exists") {
		t.Fatalf("duplicate: %s", r)
	}
	e.MustBanger("vm", "ssh", "dup", "--", "true")
	e.MustBanger("vm", "delete", "dup")

	// A VM that never becomes ready: the error names the console log, and
	// its TAP and VMM are released.
	e.WriteConfig("[network]\nbridge = \"bangere2e\"\nsubnet = \"10.231.9.0/24\"\ntap_pool_size = 0\n[vm]\nmemory_mib = 512\ndisk_size = \"1G\"\nboot_timeout = \"2s\"\n")
	e.MustBanger("daemon", "stop")
	r := e.Banger("vm", "create", "--name", "slow")
	if r.Code != 6 || !strings.Contains(r.Stderr, "console.log") || !strings.Contains(r.Stderr, "not ready within 2s") {
		t.Fatalf("boot timeout: %s", r)
	}
	var list []struct {
		Name    string `json:"name"`
		Alive   bool   `json:"alive"`
		Runtime struct {
			State  string `json:"state"`
			VMDir  string `json:"vm_dir"`
			Reason string `json:"last_error"`
		} `json:"runtime"`
	}
	e.JSON(&list, "vm", "list")
	if len(list) != 1 || list[0].Runtime.State != "failed" || list[0].Alive || list[0].Runtime.Reason == "" {
		t.Fatalf("after a failed create: %+v", list)
	}
	if pids := vmmProcesses(list[0].Runtime.VMDir); len(pids) > 0 {
		t.Fatalf("VMM left running: %v", pids)
	}
	if links := tapLinks(); len(links) > 0 {
		t.Fatalf("TAPs left: %v", links)
	}
	e.MustBanger("vm", "delete", "slow")
}
