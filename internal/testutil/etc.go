package testutil

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// PrivateEtcFiles gives the calling process's mount namespace, which must
// be private (InNetNS's child, or a CLONE_NEWNS child), its own copies of
// files in /etc (name -> content, for example "subuid"): each is bound
// over the host's when the host has the file, else /etc becomes an overlay
// of the host's whose upper layer (in scratch) holds them. The host's /etc
// is never written. undo takes the mounts away again.
func PrivateEtcFiles(scratch string, files map[string]string) (undo func(), err error) {
	all := true
	for name := range files {
		if _, err := os.Stat(filepath.Join("/etc", name)); errors.Is(err, os.ErrNotExist) {
			all = false
		}
	}
	if !all {
		upper, work := filepath.Join(scratch, "etc-upper"), filepath.Join(scratch, "etc-work")
		for _, d := range []string{upper, work} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return nil, err
			}
		}
		if err := unix.Mount("overlay", "/etc", "overlay", 0, "lowerdir=/etc,upperdir="+upper+",workdir="+work); err != nil {
			return nil, fmt.Errorf("an overlay over /etc: %w", err)
		}
		for name, content := range files {
			if err := os.WriteFile(filepath.Join("/etc", name), []byte(content), 0o644); err != nil {
				unix.Unmount("/etc", unix.MNT_DETACH)
				return nil, err
			}
		}
		return func() { unix.Unmount("/etc", unix.MNT_DETACH) }, nil
	}
	var bound []string
	undo = func() {
		for _, b := range bound {
			unix.Unmount(b, unix.MNT_DETACH)
		}
	}
	for name, content := range files {
		src := filepath.Join(scratch, "etc-"+name)
		if err := os.WriteFile(src, []byte(content), 0o644); err != nil {
			undo()
			return nil, err
		}
		dst := filepath.Join("/etc", name)
		if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
			undo()
			return nil, fmt.Errorf("bind-mounting %s over %s: %w", src, dst, err)
		}
		bound = append(bound, dst)
	}
	return undo, nil
}
