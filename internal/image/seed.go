package image

import (
	"context"
	"fmt"
	"os"

	"github.com/banger-dev/banger/internal/disk"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/runner"
)

// WorkSeedSize is the size of a generated work-seed; VM creation grows each
// clone to the VM's disk size.
const WorkSeedSize = "16M"

// MakeWorkSeed makes out, an ext4 of WorkSeedSize holding the /root
// directory of the ext4 image rootfs, unprivileged and without mounting
// (disk.Ext4FromRoot), and checks it. scratch is a private directory.
func MakeWorkSeed(ctx context.Context, r runner.Runner, rootfs, out, scratch string) error {
	if err := disk.Ext4FromRoot(ctx, r, rootfs, out, WorkSeedSize, scratch); err != nil {
		return fmt.Errorf("making work-seed: %w", err)
	}
	if _, err := r.Run(ctx, "e2fsck", "-fn", out); err != nil {
		return fmt.Errorf("checking work-seed: %w", err)
	}
	return nil
}

// GuestContract reads the guest contract of the ext4 image rootfs from its
// banger-init (guest.ContractOf), without mounting: debugfs prints the
// file. A rootfs without banger-init has the oldest contract.
func GuestContract(ctx context.Context, r runner.Runner, rootfs string) (int, error) {
	// debugfs exits 0 even when it cannot open the file system: check
	// that it is one first.
	if err := checkExt(rootfs); err != nil {
		return 0, err
	}
	out, err := r.Run(ctx, "debugfs", "-R", "cat /usr/local/sbin/banger-init", rootfs)
	if err != nil {
		return 0, fmt.Errorf("reading banger-init from %s: %w", rootfs, err)
	}
	return guest.ContractOf(out), nil
}

// checkExt reports an error unless path holds an ext2/3/4 file system (the
// superblock's magic, 0xEF53 at byte 1080).
func checkExt(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var magic [2]byte
	if _, err := f.ReadAt(magic[:], 1024+56); err != nil || magic != [2]byte{0x53, 0xef} {
		return fmt.Errorf("%s is not an ext4 file system", path)
	}
	return nil
}
