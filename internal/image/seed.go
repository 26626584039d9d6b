package image

import (
	"context"
	"fmt"

	"github.com/banger-dev/banger/internal/disk"
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
