package image

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/runner"
)

func TestMakeWorkSeedArgv(t *testing.T) {
	scratch := t.TempDir()
	os.MkdirAll(filepath.Join(scratch, "root", ".ssh"), 0o700)
	os.WriteFile(filepath.Join(scratch, "root", ".bashrc"), []byte("x"), 0o644)
	f := &runner.Fake{}
	f.Expect("debugfs", "-R", "rdump /root "+scratch, "/img/rootfs.ext4")
	f.Expect("mke2fs", "-q", "-F", "-t", "ext4", "-T", "default", "-L", "banger-work", "-m", "0", "-E", "root_owner=0:0", "-d", filepath.Join(scratch, "root"), "/img/work-seed.ext4", "16M")
	f.Expect("debugfs", "-w", "-f", filepath.Join(scratch, "chown.debugfs"), "/img/work-seed.ext4")
	f.Expect("e2fsck", "-fn", "/img/work-seed.ext4")
	if err := MakeWorkSeed(context.Background(), f, "/img/rootfs.ext4", "/img/work-seed.ext4", scratch); err != nil {
		t.Fatal(err)
	}
	if u := f.Unmet(); len(u) > 0 {
		t.Fatalf("not run: %v", u)
	}
	cmds, _ := os.ReadFile(filepath.Join(scratch, "chown.debugfs"))
	for _, want := range []string{"sif /.bashrc uid 0", "sif /.ssh gid 0"} {
		if !strings.Contains(string(cmds), want) {
			t.Fatalf("chown commands lack %q:\n%s", want, cmds)
		}
	}
}

// TestMakeWorkSeedReal runs the real e2fsprogs on a small rootfs made here.
func TestMakeWorkSeedReal(t *testing.T) {
	for _, tool := range []string{"mke2fs", "debugfs", "e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	os.MkdirAll(filepath.Join(tree, "root", ".ssh"), 0o700)
	os.MkdirAll(filepath.Join(tree, "etc"), 0o755)
	os.WriteFile(filepath.Join(tree, "root", ".profile"), []byte("echo hi\n"), 0o644)
	os.WriteFile(filepath.Join(tree, "etc", "hostname"), []byte("x\n"), 0o644)
	rootfs := filepath.Join(dir, "rootfs.ext4")
	r := &runner.Exec{}
	if _, err := r.Run(context.Background(), "mke2fs", "-q", "-F", "-t", "ext4", "-d", tree, rootfs, "32M"); err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(dir, "work-seed.ext4")
	scratch := filepath.Join(dir, "scratch")
	os.Mkdir(scratch, 0o700)
	if err := MakeWorkSeed(context.Background(), r, rootfs, seed, scratch); err != nil {
		t.Fatal(err)
	}
	out, err := r.Run(context.Background(), "debugfs", "-R", "cat /.profile", seed)
	if err != nil || !strings.Contains(string(out), "echo hi") {
		t.Fatalf("seed lacks /root/.profile: %q %v", out, err)
	}
	// The default layout, so disks grown from the seed match full-size ones.
	stats, err := r.Run(context.Background(), "debugfs", "-R", "stats", seed)
	if err != nil || !regexp.MustCompile(`(?m)^Block size:\s+4096$`).Match(stats) || !regexp.MustCompile(`(?m)^Inode count:\s+1024$`).Match(stats) {
		t.Errorf("seed layout: want 4 KiB blocks and 1024 inodes for 16 MiB:\n%s", stats)
	}
	st, err := r.Run(context.Background(), "debugfs", "-R", "stat /.profile", seed)
	if err != nil || !strings.Contains(string(st), "User:     0") {
		t.Fatalf("owner not root: %s", st)
	}
}

// TestGuestContractReal reads banger-init out of real ext4 images: this
// build's, an older one without the contract line, and none at all.
func TestGuestContractReal(t *testing.T) {
	for _, tool := range []string{"mke2fs", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	current := guest.Embedded()["banger-init"]
	for name, tc := range map[string]struct {
		init []byte // nil: no banger-init in the image
		want int
	}{
		"current": {current, guest.Contract},
		"older":   {[]byte("#!/bin/sh\n# banger guest init\nexit 0\n"), guest.ContractWorkDisk},
		"none":    {nil, guest.ContractWorkDisk},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			tree := filepath.Join(dir, "tree")
			os.MkdirAll(filepath.Join(tree, "usr", "local", "sbin"), 0o755)
			if tc.init != nil {
				os.WriteFile(filepath.Join(tree, "usr", "local", "sbin", "banger-init"), tc.init, 0o755)
			}
			rootfs := filepath.Join(dir, "rootfs.ext4")
			r := &runner.Exec{}
			if _, err := r.Run(context.Background(), "mke2fs", "-q", "-F", "-t", "ext4", "-d", tree, rootfs, "8M"); err != nil {
				t.Fatal(err)
			}
			got, err := GuestContract(context.Background(), r, rootfs)
			if err != nil || got != tc.want {
				t.Errorf("GuestContract = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
	if _, err := GuestContract(context.Background(), &runner.Exec{}, "/nonexistent/rootfs.ext4"); err == nil {
		t.Error("GuestContract of a missing rootfs: no error")
	}
	junk := filepath.Join(t.TempDir(), "junk.ext4")
	os.WriteFile(junk, make([]byte, 64<<10), 0o644)
	if _, err := GuestContract(context.Background(), &runner.Exec{}, junk); err == nil || !strings.Contains(err.Error(), "not an ext4") {
		t.Errorf("GuestContract of zeros: %v, want not an ext4", err)
	}
}
