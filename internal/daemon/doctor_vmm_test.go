package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/hostcheck"
)

// fakeFirecracker writes a script that answers --version as Firecracker
// of version v does.
func fakeFirecracker(t *testing.T, v string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "firecracker")
	script := "#!/bin/sh\n[ \"$1\" = --version ] || exit 9\nprintf 'Firecracker v" + v + "\\n\\n'\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// seedKVM gives d a KVM verdict without probing: the API probe's, and a
// boot probe's for kernel when bootOK is not nil.
func seedKVM(d *Daemon, api bool, kernel string, bootOK *bool) {
	d.kvm.mu.Lock()
	defer d.kvm.mu.Unlock()
	d.kvm.api = &hostcheck.KVMResult{DeviceExists: true, Usable: api, Detail: "the KVM API ran a tiny guest"}
	d.kvm.boot, d.kvm.kernel = nil, ""
	if bootOK != nil {
		d.kvm.boot = &hostcheck.KVMResult{DeviceExists: true, Usable: *bootOK, Detail: "a guest kernel booted under qemu with KVM"}
		d.kvm.kernel = kernel
	}
}

// Under vmm = auto, Firecracker is chosen only where KVM works, it is
// 1.14 or newer and this user can open /dev/net/tun (it opens its TAP
// itself); otherwise qemu, saying why.
func TestDoctorChooseVMMFirecrackerRules(t *testing.T) {
	d, _ := newTestDaemon(t, nil)
	ctx := context.Background()
	yes, no := true, false
	dir := t.TempDir()
	old := tunDevice
	t.Cleanup(func() { tunDevice = old })
	d.cfg.VMM, d.cfg.Accel = "auto", "auto"
	for _, tc := range []struct {
		name    string
		fc      string // version; "" none installed
		tun     string
		boot    *bool
		vmm     string
		accel   string
		because string
	}{
		{"all there", "1.16.1", "/dev/null", &yes, "firecracker", "kvm", "firecracker 1.16.1 is installed"},
		{"oldest", "1.14.0", "/dev/null", &yes, "firecracker", "kvm", "firecracker 1.14.0"},
		{"too old", "1.13.1", "/dev/null", &yes, "qemu", "kvm", "older than 1.14"},
		{"no tun access", "1.16.1", dir, &yes, "qemu", "kvm", "cannot open " + dir},
		{"no tun", "1.16.1", filepath.Join(dir, "none"), &yes, "qemu", "kvm", "is missing"},
		{"not installed", "", "/dev/null", &yes, "qemu", "kvm", "not installed"},
		{"kvm fails", "1.16.1", "/dev/null", &no, "qemu", "tcg", "KVM cannot run guests"},
	} {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			d.cfg.Paths.Firecracker = filepath.Join(dir, "no-firecracker")
			if tc.fc != "" {
				d.cfg.Paths.Firecracker = fakeFirecracker(t, tc.fc)
			}
			tunDevice = tc.tun
			seedKVM(d, true, "/k", tc.boot)
			vmm, accel, reason := d.chooseVMM(ctx, "/k")
			if vmm != tc.vmm || accel != tc.accel || !strings.Contains(reason, tc.because) {
				t.Fatalf("%s with %s (%s), want %s with %s because %q", vmm, accel, reason, tc.vmm, tc.accel, tc.because)
			}
		})
	}
	// Set in config, it is what the config says; doctor's tun line then
	// fails (see TestDoctorTunLine).
	d.cfg.VMM = "firecracker"
	tunDevice = dir
	if vmm, _, reason := d.chooseVMM(ctx, "/k"); vmm != "firecracker" || reason != "set in config" {
		t.Fatalf("%s (%s)", vmm, reason)
	}
}

// Before any guest kernel has been booted under KVM, doctor says the
// choice is unconfirmed, with both outcomes, instead of "qemu with kvm".
func TestDoctorVMMUnconfirmed(t *testing.T) {
	d, _ := newTestDaemon(t, nil)
	ctx := context.Background()
	d.cfg.VMM, d.cfg.Accel = "auto", "auto"
	d.cfg.Paths.Firecracker = filepath.Join(t.TempDir(), "none")
	d.cfg.Paths.Qemu = filepath.Join(t.TempDir(), "no-qemu") // nothing recorded can apply
	seedKVM(d, true, "", nil)
	kvm, confirmed := d.kvmVerdict(ctx, "")
	if confirmed || !kvm.Usable {
		t.Fatalf("verdict %+v confirmed=%v, want the API probe's, unconfirmed", kvm, confirmed)
	}
	vmm, accel, reason := d.chooseVMM(ctx, "")
	c := vmmChoiceCheck(d.cfg.VMM, d.cfg.Accel, vmm, accel, reason, kvm, confirmed)
	if c.Status != hostcheck.Warn || !strings.HasPrefix(c.Detail, "unconfirmed: qemu with kvm if a guest kernel boots under KVM, else qemu with tcg") || c.Hint == "" {
		t.Fatalf("%+v", c)
	}
	if strings.Contains(c.Detail, "qemu with kvm (") {
		t.Fatalf("claims the choice: %q", c.Detail)
	}

	for _, tc := range []struct {
		cfgVMM, cfgAccel, vmm, accel string
		confirmed                    bool
		want                         string
	}{
		{"auto", "auto", "qemu", "kvm", true, "qemu with kvm ("}, // booted: the choice
		{"auto", "auto", "firecracker", "kvm", false, "unconfirmed: firecracker with kvm if a guest kernel boots under KVM, else qemu with tcg"},
		{"qemu", "kvm", "qemu", "kvm", false, "qemu with kvm ("},                       // the config's, whatever KVM does
		{"firecracker", "auto", "firecracker", "kvm", false, "firecracker with kvm ("}, // the config's
		{"qemu", "auto", "qemu", "kvm", false, "unconfirmed: qemu with kvm if a guest kernel boots under KVM, else qemu with tcg"},
		{"auto", "kvm", "firecracker", "kvm", false, "unconfirmed: firecracker with kvm if a guest kernel boots under KVM, else qemu with kvm"},
	} {
		c := vmmChoiceCheck(tc.cfgVMM, tc.cfgAccel, tc.vmm, tc.accel, "why", hostcheck.KVMResult{Usable: true}, tc.confirmed)
		if !strings.HasPrefix(c.Detail, tc.want) {
			t.Errorf("vmm=%s accel=%s confirmed=%v: %q, want %q...", tc.cfgVMM, tc.cfgAccel, tc.confirmed, c.Detail, tc.want)
		}
	}
	// KVM that cannot run guests is no unconfirmed choice: qemu with tcg.
	if c := vmmChoiceCheck("auto", "auto", "qemu", "tcg", "why", hostcheck.KVMResult{}, false); c.Status != hostcheck.OK || !strings.HasPrefix(c.Detail, "qemu with tcg") {
		t.Errorf("%+v", c)
	}
}

// With no image to boot, a boot probe recorded in this host boot with
// this qemu (of any kernel) confirms the verdict: a kernel has been booted
// under KVM here.
func TestDoctorKVMRecordConfirms(t *testing.T) {
	d, _ := newTestDaemon(t, nil)
	ctx := context.Background()
	dir := t.TempDir()
	qemu := filepath.Join(dir, "qemu")
	os.WriteFile(qemu, []byte("#!/bin/sh\n"), 0o755)
	kernel := filepath.Join(dir, "vmlinuz-gone")
	os.WriteFile(kernel, []byte("k"), 0o644)
	d.cfg.Paths.Qemu = qemu
	key, stable := newKVMKey(qemu, kernel)
	if !stable {
		t.Skip("no boot id on this host")
	}
	d.rememberKVM(key, hostcheck.KVMResult{DeviceExists: true, Usable: true, Detail: "a guest kernel booted under qemu with KVM"})
	os.Remove(kernel) // the image is gone; the host's verdict stands
	seedKVM(d, true, "", nil)
	kvm, confirmed := d.kvmVerdict(ctx, "")
	if !confirmed || !kvm.Usable || !strings.Contains(kvm.Detail, "recorded in this host boot") {
		t.Fatalf("%+v confirmed=%v", kvm, confirmed)
	}
	// Another qemu binary (an upgrade) is not vouched for.
	os.WriteFile(qemu, []byte("#!/bin/sh\n# upgraded\n"), 0o755)
	if _, confirmed := d.kvmVerdict(ctx, ""); confirmed {
		t.Fatal("a record of another qemu confirmed the verdict")
	}
}

// Doctor's firecracker line checks the version: 1.14 or newer, a failure
// only when the config needs firecracker.
func TestDoctorFirecrackerLine(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		fc     string
		needed bool
		status hostcheck.Status
		detail string
	}{
		{"1.16.1", false, hostcheck.OK, "Firecracker 1.16.1"},
		{"1.13.0", false, hostcheck.Warn, "Firecracker 1.13.0"},
		{"1.13.0", true, hostcheck.Fail, "too old"},
		{"", false, hostcheck.Warn, "executable file not found"},
		{"", true, hostcheck.Fail, "executable file not found"},
	} {
		bin := "banger-no-such-firecracker"
		if tc.fc != "" {
			bin = fakeFirecracker(t, tc.fc)
		}
		c := firecrackerCheck(ctx, bin, tc.needed)
		if c.Status != tc.status || !strings.Contains(c.Detail, tc.detail) || (c.Status != hostcheck.OK) != (c.Hint != "") {
			t.Errorf("firecracker %q needed=%v: %+v", tc.fc, tc.needed, c)
		}
	}
}

// Only /proc/misc counts: a stale /dev/mapper/control does not make
// doctor say the kernel has device-mapper.
func TestDoctorDeviceMapperLine(t *testing.T) {
	dir := t.TempDir()
	misc, control := filepath.Join(dir, "misc"), filepath.Join(dir, "control")
	os.WriteFile(control, nil, 0o600) // the stale node
	os.WriteFile(misc, []byte("200 tun\n237 loop-control\n"), 0o644)
	if c := deviceMapperCheck(misc, control); !strings.Contains(c.Detail, "no device-mapper") || !strings.Contains(c.Detail, "stale") {
		t.Errorf("stale node: %+v", c)
	}
	os.WriteFile(misc, []byte("200 tun\n236 device-mapper\n"), 0o644)
	if c := deviceMapperCheck(misc, control); !strings.HasPrefix(c.Detail, "the kernel has device-mapper") {
		t.Errorf("listed: %+v", c)
	}
}
