package guest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The config disk is read in the guest by GNU tar straight from the block
// device: extract it the same way here and check what lands.
func TestConfigDiskExtractsWithTar(t *testing.T) {
	if _, err := exec.LookPath("tar"); err != nil {
		t.Skip("no tar on this host")
	}
	priv, pub := []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"), []byte("ssh-ed25519 AAAA banger-demo\n")
	data, err := ConfigDisk(priv, pub, []Share{{Tag: "banger0", Path: "/root/src"}, {Tag: "banger1", Path: "/srv/data", ReadOnly: true}})
	if err != nil {
		t.Fatal(err)
	}
	if len(data)%4096 != 0 {
		t.Errorf("config disk is %d bytes, not whole 4 KiB blocks", len(data))
	}
	dir := t.TempDir()
	dev := filepath.Join(dir, "vdc")
	if err := os.WriteFile(dev, data, 0o600); err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(dir, "run")
	os.Mkdir(run, 0o755)
	// As banger-init does it, into /run.
	if b, err := exec.Command("tar", "-xf", dev, "-C", run, "--no-same-owner", "banger-config").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v: %s", err, b)
	}
	out := filepath.Join(run, ConfigDir)
	for name, want := range map[string]struct {
		data []byte
		mode os.FileMode
	}{
		"contract":                 {[]byte(fmt.Sprintln(Contract)), 0o644},
		"ssh_host_ed25519_key":     {priv, 0o600},
		"ssh_host_ed25519_key.pub": {pub, 0o644},
		"mounts":                   {[]byte("banger0 /root/src rw\nbanger1 /srv/data ro\n"), 0o644},
	} {
		p := filepath.Join(out, name)
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, want.data) {
			t.Errorf("%s: %q, %v; want %q", name, got, err, want.data)
			continue
		}
		// umask may only clear bits; the private key must never be more open.
		if st, _ := os.Stat(p); st.Mode().Perm()&^want.mode != 0 {
			t.Errorf("%s: mode %v, want at most %v", name, st.Mode().Perm(), want.mode)
		}
	}
	if st, err := os.Stat(out); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("%s: %v, %v; want a 0700 directory", out, st, err)
	}
	entries, _ := os.ReadDir(out)
	top, _ := os.ReadDir(run)
	if len(entries) != 4 || len(top) != 1 {
		t.Errorf("extracted %d entries in %d top-level ones, want 4 in 1", len(entries), len(top))
	}
}

// A share the guest's shell could misread is refused on the host.
func TestConfigDiskRefusesBadShare(t *testing.T) {
	for _, s := range []Share{{Tag: "banger0", Path: "/a b"}, {Tag: "x y", Path: "/a"}, {Tag: "banger0", Path: "rel"}, {Tag: "", Path: "/a"}, {Tag: "t", Path: "/a\n/b"}} {
		if _, err := ConfigDisk([]byte("x"), []byte("y"), []Share{s}); err == nil {
			t.Errorf("share %+v accepted", s)
		}
	}
}

func TestConfigDiskRefusesEmptyKey(t *testing.T) {
	if _, err := ConfigDisk(nil, []byte("x"), nil); err == nil {
		t.Error("ConfigDisk with no private key: no error")
	}
	if _, err := ConfigDisk([]byte("x"), nil, nil); err == nil {
		t.Error("ConfigDisk with no public key: no error")
	}
}

func TestContractOf(t *testing.T) {
	if got := ContractOf(mustRead("banger-init")); got != Contract {
		t.Errorf("this build's banger-init says contract %d, want %d", got, Contract)
	}
	for in, want := range map[string]int{
		"":                           ContractWorkDisk,
		"#!/bin/sh\necho old init\n": ContractWorkDisk,
		"#!/bin/sh\n# banger-guest-contract: 2\n":  ContractConfigDisk,
		"#!/bin/sh\n# banger-guest-contract: 0\n":  ContractWorkDisk,
		"#!/bin/sh\n# banger-guest-contract: 2x\n": ContractWorkDisk,
		"#!/bin/sh\n#  banger-guest-contract: 2\n": ContractWorkDisk,
	} {
		if got := ContractOf([]byte(in)); got != want {
			t.Errorf("ContractOf(%q) = %d, want %d", in, got, want)
		}
	}
}
