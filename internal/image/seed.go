package image

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger-dev/banger/internal/runner"
)

// WorkSeedSize is the size of a generated work-seed; VM creation grows each
// clone to the VM's disk size.
const WorkSeedSize = "16M"

// MakeWorkSeed makes out, an ext4 holding the /root directory of the ext4
// image rootfs, without mounting anything and without root: debugfs copies
// /root out, mke2fs -d builds the seed from it, and debugfs then gives every
// inode to root (an unprivileged copy belongs to the caller). scratch is a
// private directory for the copy.
func MakeWorkSeed(ctx context.Context, r runner.Runner, rootfs, out, scratch string) error {
	if strings.ContainsAny(scratch, " \t\n\"'\\") {
		return fmt.Errorf("scratch directory %q: debugfs commands cannot quote it", scratch)
	}
	if _, err := r.Run(ctx, "debugfs", "-R", "rdump /root "+scratch, rootfs); err != nil {
		return fmt.Errorf("copying /root out of %s: %w", rootfs, err)
	}
	tree := filepath.Join(scratch, "root")
	if st, err := os.Stat(tree); err != nil || !st.IsDir() {
		return fmt.Errorf("%s has no /root directory to seed from", rootfs)
	}
	if _, err := r.Run(ctx, "mke2fs", "-q", "-F", "-t", "ext4", "-L", "banger-work", "-m", "0",
		"-E", "root_owner=0:0", "-d", tree, out, WorkSeedSize); err != nil {
		return fmt.Errorf("making work-seed: %w", err)
	}
	cmds, err := chownCommands(tree)
	if err != nil {
		return err
	}
	if len(cmds) > 0 {
		cmdFile := filepath.Join(scratch, "chown.debugfs")
		if err := os.WriteFile(cmdFile, []byte(strings.Join(cmds, "\n")+"\n"), 0o600); err != nil {
			return err
		}
		if _, err := r.Run(ctx, "debugfs", "-w", "-f", cmdFile, out); err != nil {
			return fmt.Errorf("setting owners in work-seed: %w", err)
		}
	}
	if _, err := r.Run(ctx, "e2fsck", "-fn", out); err != nil {
		return fmt.Errorf("checking work-seed: %w", err)
	}
	return nil
}

// chownCommands lists the debugfs commands that make every entry under tree
// owned by root. Names debugfs cannot take unquoted are refused.
func chownCommands(tree string) ([]string, error) {
	var cmds []string
	err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(tree, p)
		if rel == "." {
			return nil
		}
		if strings.ContainsAny(rel, " \t\n\"'\\") {
			return fmt.Errorf("work-seed: cannot set the owner of %q (whitespace or quotes in the name)", rel)
		}
		rel = "/" + filepath.ToSlash(rel)
		cmds = append(cmds, "sif "+rel+" uid 0", "sif "+rel+" gid 0")
		return nil
	})
	return cmds, err
}
