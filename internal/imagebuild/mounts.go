package imagebuild

import (
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"strings"

	"golang.org/x/sys/unix"
)

// mounter is what the hook does to mounts, in its own mount namespace.
// Unit tests swap in a fake; the real one is sysMounter.
type mounter interface {
	// makePrivate stops mount events from propagating between this
	// namespace and mmdebstrap's.
	makePrivate() error
	// detach lazily unmounts the mount at path (and what is under it).
	detach(path string) error
	// tmpfs mounts an empty tmpfs whose root has mode on path (a
	// /proc/self/fd/N name of a directory opened without following
	// symlinks).
	tmpfs(path string, mode fs.FileMode) error
	// mountsUnder lists the mount points at or below dir.
	mountsUnder(dir string) []string
}

// sysMounter is mounter by system calls.
type sysMounter struct{}

func (sysMounter) makePrivate() error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	return nil
}

func (sysMounter) detach(path string) error {
	return unix.Unmount(path, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
}

func (sysMounter) tmpfs(path string, mode fs.FileMode) error {
	opts := fmt.Sprintf("mode=%04o,size=16m,nr_inodes=1024", mode.Perm())
	return unix.Mount("banger-build", path, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, opts)
}

func (sysMounter) mountsUnder(dir string) []string { return mountsUnder(dir) }

// mountsUnder lists the mount points (in this mount namespace) at or
// below dir, from /proc/self/mountinfo.
func mountsUnder(dir string) []string {
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	return out
}

var octalEscape = regexp.MustCompile(`\\[0-7]{3}`)

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, ...).
func unescapeMount(s string) string {
	return octalEscape.ReplaceAllStringFunc(s, func(e string) string {
		var c byte
		for _, d := range e[1:] {
			c = c*8 + byte(d-'0')
		}
		return string([]byte{c})
	})
}
