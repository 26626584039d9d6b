package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/tests/harness"
)

// TestHelperUnitUnderSystemd runs `banger system install` and the
// banger-helper.service it writes under a real systemd, with every
// hardening option in force: in a banger VM (the development machine has
// no systemd as PID 1). In the guest, install grants uid 65534 a network
// (and subordinate ids), installs the helper and starts the unit;
// helperprobe then calls every method as root and as the granted uid, and
// they all work (netlink, nftables, /dev/net/tun, the per-interface
// sysctls under ProtectKernelTunables, port 53).
func TestHelperUnitUnderSystemd(t *testing.T) {
	requireE2E(t)
	image := ensureImage(t)
	if !testutil.InNetNS(t) {
		return
	}
	goBin := testutil.RequireTool(t, "go")
	dir := t.TempDir()
	probe := filepath.Join(dir, "helperprobe")
	build := exec.Command(goBin, "build", "-o", probe, "./helperprobe")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building helperprobe: %v\n%s", err, out)
	}
	e := newVMEnv(t, image)
	e.MustBanger("vm", "create", "--name", "sd")
	// Deleted last: a failure's journal (the cleanup below) needs the VM.
	t.Cleanup(func() { e.Banger("vm", "delete", "sd") })
	var info api.VMInfo
	e.JSON(&info, "vm", "show", "sd")

	for _, f := range []struct{ local, remote string }{
		{filepath.Join(harness.BinDir, "banger"), "/usr/local/bin/banger"},
		{filepath.Join(harness.BinDir, "banger-helper"), "/usr/local/bin/banger-helper"},
		{probe, "/usr/local/bin/helperprobe"},
	} {
		data, err := os.ReadFile(f.local)
		if err != nil {
			t.Fatal(err)
		}
		guestSh(t, e, info, data, `cat > "$1" && chmod 755 "$1"`, f.remote)
	}
	out := guestSh(t, e, info, nil, "banger system install --user nobody 2>&1 && systemctl is-active banger-helper.service")
	t.Logf("banger system install in the guest:\n%s", out)
	if !strings.Contains(out, "granted nobody (uid 65534): bridge banger1, subnet 172.30.78.0/24, TAPs tap1-*") || !strings.HasSuffix(strings.TrimSpace(out), "active") {
		t.Fatalf("system install: %q", out)
	}
	grants := guestSh(t, e, info, nil, "cat "+helperapi.DefaultGrantsFile+"; stat -c '%U %a' "+helperapi.DefaultGrantsFile+"; grep ^nobody: /etc/subuid /etc/subgid")
	if !strings.Contains(grants, `"subnet": "172.30.78.0/24"`) || !strings.Contains(grants, "root 644") || strings.Count(grants, ":65536") != 2 {
		t.Errorf("grants and subordinate ids after install:\n%s", grants)
	}
	if unit := guestSh(t, e, info, nil, "cat /etc/systemd/system/banger-helper.service"); unit != helperapi.UnitFile(helperapi.DefaultUnitOptions()) {
		t.Errorf("the installed unit is not the shipped one:\n%s", unit)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("journal of the unit:\n%s", guestSh(t, e, info, nil, "journalctl -u banger-helper.service --no-pager | tail -n 40; cat /var/log/banger/helper.log | tail -n 40"))
		}
	})
	// systemd says active once the process runs; under TCG its socket may
	// come a few seconds later.
	guestSh(t, e, info, nil, "for i in $(seq 1 300); do [ -S /run/banger/helper.sock ] && exit 0; sleep 0.1; done; echo no helper socket after 30 s")
	for _, run := range []struct{ who, cmd string }{
		{"root", "helperprobe"},
		{"uid 65534", "setpriv --reuid=65534 --regid=65534 --clear-groups helperprobe -user"},
	} {
		out := guestSh(t, e, info, nil, run.cmd+" 2>&1; echo exit=$?")
		t.Logf("helperprobe as %s under systemd:\n%s", run.who, out)
		if !strings.Contains(out, "exit=0") || strings.Contains(out, "FAIL") || !strings.Contains(out, "ok bridge.delete") {
			t.Errorf("helperprobe as %s failed under the hardened unit", run.who)
		}
	}
	// The unit really is the hardened one, and systemd rates it so.
	props := guestSh(t, e, info, nil, "systemctl show -p CapabilityBoundingSet -p ProtectKernelTunables -p PrivateDevices -p ProtectHome banger-helper.service")
	for _, want := range []string{"CapabilityBoundingSet=cap_net_bind_service cap_net_admin", "ProtectKernelTunables=yes", "PrivateDevices=yes", "ProtectHome=yes"} {
		if !strings.Contains(props, want) {
			t.Errorf("unit properties lack %q:\n%s", want, props)
		}
	}
	score := guestSh(t, e, info, nil, "systemd-analyze security banger-helper.service | tail -n 1")
	t.Logf("systemd-analyze security in the guest: %s", strings.TrimSpace(score))
}

// guestSh runs sh -c script with args in the VM as root through the guest
// agent (banger vm exec -i), stdin from data, and returns its output.
func guestSh(t *testing.T, e *harness.Env, info api.VMInfo, data []byte, script string, args ...string) string {
	t.Helper()
	cmd := e.Command(append([]string{"vm", "exec", "-i", info.Name, "--", "sh", "-c", script, "sh"}, args...)...)
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in the guest: %s: %v\n%s", script, err, out)
	}
	return string(out)
}
