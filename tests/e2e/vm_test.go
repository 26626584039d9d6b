package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guest"
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
	if img.KernelVersion == "" || img.RootfsSHA256 == "" || !img.HasWorkSeed() || !isELF(img.VmlinuxPath) || img.GuestContract != guest.Contract {
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
	checkHostKey(t, e, info, "config disk")
	// qemu boots the image's vmlinux through its PVH entry (Debian's
	// kernel has one), not the self-decompressing bzImage.
	for _, st := range info.Runtime.LastBoot {
		if st.Name == "vmm start" && !strings.Contains(st.Detail, "kernel vmlinux (PVH entry)") {
			t.Errorf("vmm start: %q, want the vmlinux booted through PVH", st.Detail)
		}
	}
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

// checkHostKey checks that the VM's sshd serves the host key banger made
// and pinned (vm ssh checks it too: StrictHostKeyChecking=yes), that it
// came the way the create's work disk stage says (on), and that only a VM
// of the older contract has it on its work disk.
func checkHostKey(t *testing.T, e *harness.Env, info api.VMInfo, on string) {
	t.Helper()
	var detail string
	for _, st := range info.Runtime.LastBoot {
		if st.Name == "work disk" {
			detail = st.Detail
		}
	}
	if !strings.Contains(detail, "host key on the "+on) {
		t.Errorf("work disk stage %q does not say the host key is on the %s", detail, on)
	}
	pub, err := os.ReadFile(filepath.Join(info.Runtime.VMDir, "ssh_host_ed25519_key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	r := e.MustBanger("vm", "ssh", info.Name, "--", "cat", "/etc/ssh/ssh_host_ed25519_key.pub")
	if r.Stdout != string(pub) {
		t.Errorf("guest's host key %q, banger made %q", r.Stdout, pub)
	}
	onWork := e.Banger("vm", "ssh", info.Name, "--", "test", "-e", "/root/.banger").Code == 0
	_, err = os.Stat(filepath.Join(info.Runtime.VMDir, guest.ConfigDiskName))
	hasConfig := err == nil
	if want := on == "work disk"; onWork != want || hasConfig == want {
		t.Errorf("key on the work disk: %v, config disk present: %v; want the key on the %s only", onWork, hasConfig, on)
	}
}

// TestOlderGuestContract: an image built before the config disk (its
// banger-init, kept in testdata, reads the host key from /root/.banger)
// still gets VMs whose sshd serves the pinned key.
func TestOlderGuestContract(t *testing.T) {
	requireE2E(t)
	image := ensureImage(t)
	if !testutil.InNetNS(t) {
		return
	}
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs.ext4")
	if b, err := exec.Command("cp", "--sparse=always", filepath.Join(image, "rootfs.ext4"), rootfs).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, b)
	}
	old, err := filepath.Abs("testdata/banger-init-contract1")
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(dir, "cmds")
	os.WriteFile(script, []byte("rm /usr/local/sbin/banger-init\nwrite "+old+" /usr/local/sbin/banger-init\nsif /usr/local/sbin/banger-init mode 0100755\n"), 0o600)
	if b, err := exec.Command("debugfs", "-w", "-f", script, rootfs).CombinedOutput(); err != nil {
		t.Fatalf("debugfs: %v: %s", err, b)
	}
	e := newVMEnv(t, image)
	e.MustBanger("image", "import", "--name", "old", "--rootfs", rootfs, "--kernel", filepath.Join(image, "vmlinuz"),
		"--initrd", filepath.Join(image, "initrd.img"), "--work-seed", filepath.Join(image, "work-seed.ext4"))
	var img api.ImageInfo
	e.JSON(&img, "image", "show", "old")
	if img.GuestContract != guest.ContractWorkDisk {
		t.Fatalf("image with the older banger-init: guest contract %d, want %d", img.GuestContract, guest.ContractWorkDisk)
	}
	var info api.VMInfo
	e.JSON(&info, "vm", "create", "--name", "old1", "--image", "old")
	checkHostKey(t, e, info, "work disk")
	if info.Agent {
		t.Fatalf("a contract %d VM reports an agent", img.GuestContract)
	}
	if last := info.Runtime.LastBoot[len(info.Runtime.LastBoot)-1]; last.Name != "ssh ready" {
		t.Errorf("an older image's last create stage is %+v, want ssh ready", last)
	}
	// No agent: vm exec says so and what to do; vm run goes over SSH.
	r := e.Banger("vm", "exec", "old1", "--", "true")
	if r.Code == 0 || !strings.Contains(r.Stderr, "no guest agent") || !strings.Contains(r.Stderr, "banger vm ssh old1") {
		t.Errorf("exec in a VM without an agent: %s", r)
	}
	e.MustBanger("vm", "delete", "old1")
	if r := e.MustBanger("vm", "run", "--image", "old", "--name", "old2", "--rm", "--", "cat", "/etc/hostname"); r.Stdout != "old2\n" {
		t.Errorf("vm run on an older image: %q", r.Stdout)
	}
}
