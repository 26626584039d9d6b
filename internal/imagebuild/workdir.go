package imagebuild

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/runner"
)

// workDir is a build's own directory under the temp dir,
// banger-build-NNNN (mode 0711: the namespace's root may pass through, not
// list or write), holding
//
//	lock            flocked by Build while it runs
//	hook            a copy (0755) of the hook executable
//	hook.sock       Build's socket for the hook (0666: the namespace's
//	                root must connect; Build admits only its uid with the token)
//	trusted.gpg.d/  empty: apt's Dir::Etc::TrustedParts
//	mmdebstrap.*    mmdebstrap's temporary chroot (its TMPDIR is this dir)
//
// The hook is a copy so that the namespace's root can run it whatever the
// original's directory (a 0700 home, say) and so that its path is one
// banger chose: mmdebstrap execs a hook directly only when the path has no
// shell metacharacters, and would hand it to sh otherwise.
type workDir struct {
	dir, hook, agent, trusted, socket string
	lock                              *os.File
	ln                                *net.UnixListener
}

func newWorkDir(tempDir, hookSrc, agentSrc string) (*workDir, error) {
	if hookSrc == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("finding this executable (the build's hook): %w", err)
		}
		hookSrc = exe
	}
	dir, err := os.MkdirTemp(tempDir, workPrefix)
	if err != nil {
		return nil, err
	}
	w := &workDir{dir: dir, hook: filepath.Join(dir, "hook"), agent: filepath.Join(dir, "agent"), trusted: filepath.Join(dir, "trusted.gpg.d"), socket: filepath.Join(dir, "hook.sock")}
	fail := func(err error) (*workDir, error) {
		if w.lock != nil {
			w.lock.Close()
		}
		if w.ln != nil {
			w.ln.Close()
		}
		os.RemoveAll(dir)
		return nil, err
	}
	if len(w.socket) >= 108 {
		return fail(fmt.Errorf("%s: too long for a socket path", w.socket))
	}
	for _, p := range []string{dir, w.hook, w.trusted, w.socket} {
		if err := checkConfPath("build directory", p); err != nil {
			return fail(err)
		}
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fail(err)
	}
	w.lock = lock
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fail(fmt.Errorf("locking %s: %w", lock.Name(), err))
	}
	if err := os.Mkdir(w.trusted, 0o755); err != nil {
		return fail(err)
	}
	if err := copyExecutable(hookSrc, w.hook); err != nil {
		return fail(fmt.Errorf("copying the hook %s: %w", hookSrc, err))
	}
	if err := copyExecutable(agentSrc, w.agent); err != nil {
		return fail(fmt.Errorf("copying banger-agent %s: %w", agentSrc, err))
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: w.socket, Net: "unix"})
	if err != nil {
		return fail(err)
	}
	w.ln = ln
	for p, mode := range map[string]os.FileMode{dir: 0o711, w.trusted: 0o755, w.hook: 0o755, w.agent: 0o755, w.socket: 0o666} {
		if err := os.Chmod(p, mode); err != nil {
			return fail(err)
		}
	}
	return w, nil
}

func copyExecutable(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o700)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// remove deletes the work directory after a build: mmdebstrap removed its
// chroot (unless it was killed), so what is left is the build's own.
func (w *workDir) remove(ctx context.Context, log io.Writer) {
	w.ln.Close()
	w.lock.Close()
	if err := removeWorkDir(ctx, w.dir, log); err != nil {
		fmt.Fprintf(log, "==> warning: %v\n", err)
	}
}

// removeWorkDir removes dir. A chroot mmdebstrap could not remove (it was
// killed) belongs to the user's subordinate ids, which the user cannot
// delete directly: it is removed from a user namespace mapping them
// (unshare --map-auto), then the emptied directory from outside.
func removeWorkDir(ctx context.Context, dir string, log io.Writer) error {
	if err := os.RemoveAll(dir); err == nil {
		return nil
	}
	if os.Geteuid() != 0 {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), "mmdebstrap.") {
				continue
			}
			chroot := filepath.Join(dir, e.Name())
			fmt.Fprintf(log, "==> removing %s, left by a stopped mmdebstrap, in a user namespace\n", chroot)
			r := &runner.Exec{Log: log}
			if _, err := r.Run(ctx, "unshare", "--user", "--map-auto", "--setuid", "0", "--setgid", "0", "--",
				"find", chroot, "-mount", "-mindepth", "1", "-delete"); err != nil {
				fmt.Fprintf(log, "==> warning: %v\n", err)
			}
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing the build directory %s: %w", dir, err)
	}
	return nil
}

// staleAge is how old a work directory must be before another build may
// remove it: a directory younger than that may be one being made. (A
// variable for the tests.)
var staleAge = time.Minute

// sweepStale removes work directories of this user under tempDir left by
// builds that are gone (bangerd killed, the machine rebooted): older than
// staleAge, their lock free (no Build of a live bangerd holds it) and no
// process naming the directory on its command line (an mmdebstrap still
// winding down after its bangerd died: its hook fails, then it removes
// its chroot itself).
func sweepStale(ctx context.Context, tempDir string, log io.Writer) {
	ents, err := os.ReadDir(tempDir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), workPrefix) || !e.IsDir() {
			continue
		}
		dir := filepath.Join(tempDir, e.Name())
		var st unix.Stat_t
		if unix.Lstat(dir, &st) != nil || st.Uid != uint32(os.Geteuid()) || time.Since(time.Unix(st.Mtim.Unix())) < staleAge {
			continue
		}
		lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|unix.O_NOFOLLOW, 0)
		if err == nil {
			if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
				lock.Close()
				continue // a live build
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			continue
		}
		if processNaming(dir) {
			if lock != nil {
				lock.Close()
			}
			continue
		}
		fmt.Fprintf(log, "==> removing %s, left by an earlier build that is gone\n", dir)
		if err := removeWorkDir(ctx, dir, log); err != nil {
			fmt.Fprintf(log, "==> warning: %v\n", err)
		}
		if lock != nil {
			lock.Close()
		}
	}
}

// processNaming reports whether a process has dir/ on its command line
// (mmdebstrap's names dir/hook).
func processNaming(dir string) bool {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		cl, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cl), dir+"/") {
			return true
		}
	}
	return false
}
