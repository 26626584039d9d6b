package helperapi

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/rpc"
)

const distUnit = "../../dist/systemd/banger-helper.service"

// The shipped unit is the default rendering; regenerate it with
// BANGER_UPDATE_UNIT=1 go test ./internal/helperapi -run TestDistUnit.
func TestDistUnitIsDefaultRendering(t *testing.T) {
	want := UnitFile(DefaultUnitOptions())
	if os.Getenv("BANGER_UPDATE_UNIT") == "1" {
		if err := os.MkdirAll(filepath.Dir(distUnit), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(distUnit, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(distUnit)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("%s differs from UnitFile(DefaultUnitOptions()); rerun with BANGER_UPDATE_UNIT=1\n--- got\n%s\n--- want\n%s", distUnit, got, want)
	}
}

func TestUnitFileTemplated(t *testing.T) {
	o := DefaultUnitOptions()
	o.LogLevel = "debug"
	o.GrantsFile = "/etc/banger/other.json"
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	u := UnitFile(o)
	for _, want := range []string{
		"ExecStart=/usr/local/libexec/banger/banger-helper \\\n    --socket /run/banger/helper.sock \\\n    --socket-mode 0666 \\\n    --grants /etc/banger/other.json \\\n",
		"    --state-file /var/lib/banger-helper/state.json \\\n    --log /var/log/banger/helper.log \\\n    --log-level debug\n",
		"CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE\n",
		"ProtectKernelTunables=yes\n", "ReadWritePaths=/proc/sys/net\n", "PrivateDevices=yes\n",
		"DeviceAllow=/dev/net/tun rw\n", "ProtectHome=yes\n", "RestrictNamespaces=yes\n",
		"Type=simple\n", "RuntimeDirectory=banger\n", "RuntimeDirectoryPreserve=yes\n", "NoNewPrivileges=yes\n",
	} {
		if !strings.Contains(u, want) {
			t.Errorf("unit lacks %q:\n%s", want, u)
		}
	}
	verifyUnit(t, u)
}

func TestUnitOptionsValidate(t *testing.T) {
	for _, mod := range []func(*UnitOptions){
		func(o *UnitOptions) { o.StateFile = "relative" },
		func(o *UnitOptions) { o.GrantsFile = "/etc/banger\n[Service]\nExecStartPre=/bin/sh" },
		func(o *UnitOptions) { o.GrantsFile = "/etc/banger/a b.json" },
		func(o *UnitOptions) { o.BinaryPath = "/usr/bin/../bin/sh" },
		func(o *UnitOptions) { o.LogFile = "/var/log/%n" },
		func(o *UnitOptions) { o.LogLevel = "info\nUser=nobody" },
	} {
		o := DefaultUnitOptions()
		mod(&o)
		if err := o.Validate(); !errors.Is(err, rpc.ErrBadRequest) {
			t.Errorf("%+v: want bad request, got %v", o, err)
		}
	}
}

// verifyUnit runs systemd-analyze verify on the unit where it is
// installed (it checks syntax and that the binary exists).
func verifyUnit(t *testing.T, unit string) {
	t.Helper()
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not in PATH; syntax not verified")
		return
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "banger-helper")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	unit = strings.Replace(unit, DefaultBinaryPath, bin, 1)
	path := filepath.Join(dir, "banger-helper.service")
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", path).CombinedOutput()
	if err != nil || strings.Contains(string(out), "banger-helper.service:") {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
