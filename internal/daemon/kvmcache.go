package daemon

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger-dev/banger/internal/hostcheck"
)

// The KVM boot probe costs its whole timeout (8 s) on a host whose KVM
// cannot run guests, the hosts where banger runs under tcg; without a
// record, every bangerd start paid it again on its first create. The
// verdict is kept in STATE/kvm.json for as long as what it was made of
// stays the same: this host's boot, the qemu binary and the guest kernel.
// `banger doctor` probes anew and rewrites it.

// kvmKey names what a boot probe's verdict depends on.
type kvmKey struct {
	BootID string `json:"boot_id"`
	Qemu   string `json:"qemu"`
	Kernel string `json:"kernel"`
}

type kvmRecord struct {
	Key    kvmKey              `json:"key"`
	Result hostcheck.KVMResult `json:"result"`
}

// fileStamp is path, size and modification time: enough to notice a
// package upgrade or a rebuilt image.
func fileStamp(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%s %d %d", path, fi.Size(), fi.ModTime().UnixNano())
}

func newKVMKey(qemu, kernel string) (kvmKey, bool) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	k := kvmKey{BootID: strings.TrimSpace(string(b)), Qemu: fileStamp(qemu), Kernel: fileStamp(kernel)}
	return k, err == nil && k.BootID != "" && k.Qemu != "" && k.Kernel != ""
}

func (d *Daemon) kvmRecordPath() string { return filepath.Join(d.layout.StateDir, "kvm.json") }

// rememberedKVM is the recorded verdict for key, if there is one.
func (d *Daemon) rememberedKVM(key kvmKey) (hostcheck.KVMResult, bool) {
	b, err := os.ReadFile(d.kvmRecordPath())
	if err != nil {
		return hostcheck.KVMResult{}, false
	}
	var rec kvmRecord
	if json.Unmarshal(b, &rec) != nil || rec.Key != key {
		return hostcheck.KVMResult{}, false
	}
	return rec.Result, true
}

// rememberKVM records a verdict (temp file, then rename); a failure costs
// only the next start's probe, so it is logged and no more.
func (d *Daemon) rememberKVM(key kvmKey, r hostcheck.KVMResult) {
	b, _ := json.Marshal(kvmRecord{Key: key, Result: r})
	tmp := d.kvmRecordPath() + ".tmp"
	err := os.WriteFile(tmp, append(b, '\n'), 0o600)
	if err == nil {
		err = os.Rename(tmp, d.kvmRecordPath())
	}
	if err != nil {
		os.Remove(tmp)
		d.log.Warn("recording the kvm verdict", "err", err)
	}
}

// recordedHostKVM is the recorded boot probe's verdict when it was made
// in this host boot with this qemu binary, whatever kernel it booted: a
// guest kernel has been booted under KVM here (or failed to), which is
// what the KVM verdict needs when no image is left to probe with.
func (d *Daemon) recordedHostKVM(qemu string) (hostcheck.KVMResult, bool) {
	b, err := os.ReadFile(d.kvmRecordPath())
	if err != nil {
		return hostcheck.KVMResult{}, false
	}
	var rec kvmRecord
	if json.Unmarshal(b, &rec) != nil {
		return hostcheck.KVMResult{}, false
	}
	key, _ := newKVMKey(qemu, "")
	if key.BootID == "" || key.Qemu == "" || rec.Key.BootID != key.BootID || rec.Key.Qemu != key.Qemu {
		return hostcheck.KVMResult{}, false
	}
	return rec.Result, true
}
