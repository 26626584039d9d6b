package e2e

import (
	"os"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/tests/harness"
)

func isELF(p string) bool { return image.IsELF(p) }

// TestVMLifecycle is the main job: vm run prints the hostname; ssh works;
// /root survives stop and start; delete removes row, dir, TAP and process.
func TestVMLifecycle(t *testing.T) {
	requireE2E(t)
	image := ensureImage(t)
	if !testutil.InNetNS(t) {
		return
	}
	e := newVMEnv(t, image)
	var img api.ImageInfo
	e.JSON(&img, "image", "show", "default")
	if img.KernelVersion == "" || img.RootfsSHA256 == "" || !img.HasWorkSeed() || !isELF(img.VmlinuxPath) {
		t.Fatalf("image metadata: %+v", img)
	}

	r := e.Banger("vm", "run", "--name", "t1", "--", "cat", "/etc/hostname")
	if r.Code != 0 || r.Stdout != "t1\n" {
		t.Fatalf("vm run: %s", r)
	}
	t.Logf("vm run (create, boot, ssh, run) took %s", r.Took)

	r = e.MustBanger("vm", "ssh", "t1", "--", "uname", "-r")
	if !strings.Contains(r.Stdout, "cloud-amd64") {
		t.Fatalf("uname -r: %q", r.Stdout)
	}
	// The remote exit status is banger's.
	if r := e.Banger("vm", "ssh", "t1", "--", "sh", "-c", "exit 7"); r.Code != 7 {
		t.Fatalf("exit status: %s", r)
	}
	var info api.VMInfo
	e.JSON(&info, "vm", "show", "t1")
	if !info.Alive || info.Handles == nil || !linkExists(info.Handles.TapDevice) {
		t.Fatalf("running VM: %+v", info)
	}
	tap := info.Handles.TapDevice
	// /root is the work disk and survives stop and start.
	e.MustBanger("vm", "ssh", "t1", "--", "sh", "-c", "findmnt -no SOURCE /root && echo kept > /root/marker && sync")
	e.MustBanger("vm", "stop", "t1")
	// The stop was graceful: the guest handled the ACPI power button.
	var powered bool
	for _, rec := range harness.LogLines(t, e.StateDir+"/bangerd.log") {
		if rec["msg"] == "vm powered off" && rec["vm"] == "t1" {
			powered = true
		}
	}
	if !powered {
		t.Fatal("vm stop was not a graceful power-off")
	}
	if r := e.MustBanger("vm", "logs", "t1"); !strings.Contains(r.Stdout, "t1 login:") {
		t.Fatalf("console log lacks the login prompt:\n%s", r.Stdout)
	}
	e.JSON(&info, "vm", "show", "t1")
	if info.Runtime.State != "stopped" || info.Alive {
		t.Fatalf("after stop: %+v", info)
	}
	if linkExists(tap) {
		t.Fatal("TAP left after stop")
	}
	e.MustBanger("vm", "start", "t1")
	if r := e.MustBanger("vm", "ssh", "t1", "--", "cat", "/root/marker"); r.Stdout != "kept\n" {
		t.Fatalf("/root/marker after restart: %q", r.Stdout)
	}
	e.JSON(&info, "vm", "show", "t1")
	dir := info.Runtime.VMDir

	e.MustBanger("vm", "delete", "t1")
	if r := e.Banger("vm", "show", "t1"); r.Code != 3 {
		t.Fatalf("show after delete: %s", r)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("vm dir left: %v", err)
	}
	if linkExists(tap) {
		t.Fatalf("TAP %s left", tap)
	}
	if pids := vmmProcesses(dir); len(pids) > 0 {
		t.Fatalf("VMM processes left: %v", pids)
	}
}
