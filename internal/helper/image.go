package helper

// Image build steps (helperapi/image.go has the contract).
//
// Every build lives in BuildDir/<build id>/, which only root can reach:
//
//	BuildDir/                    0700 root, emptied of stale builds at start
//	    <build id>/              0700
//	        tree/                debootstrap's target, then the guest's root
//	        seed/                the tree's /root, moved here by image.pack
//	        initrd.img           the mini initrd made by image.configure
//	        state.json           which step the build has reached
//	        rootfs.ext4, work-seed.ext4   made by image.pack, removed once copied
//
// The caller never names a path inside it, only a build id, so nothing the
// caller controls is ever chrooted into or run. Commands that may mount or
// leave processes (debootstrap, chroot) run through nsWrap: in fresh mount
// and PID namespaces (mounts vanish with the namespace, and when its first
// process ends the kernel kills the rest), with a parent-death signal so
// that they die with the helper. What leaves the scratch directory is
// copied into files created anew (O_EXCL|O_NOFOLLOW) under a directory fd
// that was checked to be the caller's, and handed to the caller's uid.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/runner"
)

// nsWrap runs a command in new mount and PID namespaces that die with the
// helper: setpriv gives the wrapper a parent-death SIGKILL (the helper
// forks it from a goroutine locked to its thread, so the signal means the
// helper itself went away); unshare's forked child is PID 1 of the new PID
// namespace and gets SIGKILL when unshare dies (--kill-child), and when it
// ends the kernel kills whatever else is left in the namespace. Mounts made
// inside (debootstrap's /proc and /sys in the target) are private to the
// mount namespace and vanish with it.
var nsWrap = []string{
	"setpriv", "--pdeathsig", "KILL", "--",
	"unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--",
}

// Time limits of the steps.
const (
	bootstrapTimeout = 30 * time.Minute
	configureTimeout = 10 * time.Minute
	packTimeout      = 20 * time.Minute
)

// Names inside a build's directory and in the caller's output directory.
const (
	treeName      = "tree"
	seedName      = "seed"
	miniInitrd    = "initrd.img"
	stateName     = "state.json"
	scratchRootfs = "rootfs.ext4"
	scratchSeed   = "work-seed.ext4"

	OutRootfs       = "rootfs.ext4"
	OutWorkSeed     = "work-seed.ext4"
	OutKernel       = "vmlinuz"
	OutInitrd       = "initrd.img"
	OutKernelConfig = "kernel.config"
)

// Build steps recorded in state.json.
const (
	stepBootstrapped = "bootstrapped"
	stepConfigured   = "configured"
)

// buildState is a build's state.json.
type buildState struct {
	Step          string `json:"step"`
	Suite         string `json:"suite"`
	KernelVersion string `json:"kernel_version,omitempty"`
	// Initrd is "mini" (BuildDir/<id>/initrd.img) or "initramfs-tools"
	// (the tree's /boot/initrd.img-KVER).
	Initrd string `json:"initrd,omitempty"`
}

// buildEnv is the environment of build commands: nothing of the helper's
// own but a proxy, if it has one.
func buildEnv() []string {
	env := []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LC_ALL=C.UTF-8", "LANG=C.UTF-8", "HOME=/root", "DEBIAN_FRONTEND=noninteractive",
	}
	for _, k := range []string{"http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}

// buildLocks serialises the steps of one build id.
type buildLocks struct {
	mu    sync.Mutex
	locks map[string]*buildLock
}

type buildLock struct {
	sync.Mutex
	refs int
}

func (b *buildLocks) lock(id string) func() {
	b.mu.Lock()
	if b.locks == nil {
		b.locks = map[string]*buildLock{}
	}
	l := b.locks[id]
	if l == nil {
		l = &buildLock{}
		b.locks[id] = l
	}
	l.refs++
	b.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		b.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(b.locks, id)
		}
		b.mu.Unlock()
	}
}

// initImages sets up the image methods: the runner factory and the build
// directory. A build directory that cannot be made safe turns the image
// methods off (logged, and said by each call) rather than the helper.
func (h *Helper) initImages() error {
	if h.cfg.ImageRunner == nil {
		base := h.cfg.Runner
		if e, ok := base.(*runner.Exec); ok {
			h.cfg.ImageRunner = func(log io.Writer) runner.Runner {
				c := *e
				c.Log = log
				c.Env = buildEnv()
				return &c
			}
		} else {
			h.cfg.ImageRunner = func(io.Writer) runner.Runner { return base }
		}
	}
	if h.cfg.BuildDir == "" {
		h.buildErr = errors.New("this helper has no build directory (--build-dir)")
		return nil
	}
	if err := helperapi.ValidatePath("build-dir", h.cfg.BuildDir); err != nil {
		return err
	}
	if err := h.prepareBuildDir(); err != nil {
		h.buildErr = err
		h.log.Error("image builds disabled: the build directory is not usable", "build_dir", h.cfg.BuildDir, "error", err.Error())
	}
	return nil
}

// prepareBuildDir makes BuildDir (0700, the helper's) after checking that
// no user can reach into it: each existing component of its path must be a
// real directory (not a symlink) owned by root or the helper, and writable
// by others only when sticky (/tmp). Builds left by an earlier run are
// removed: no build survives a helper restart.
func (h *Helper) prepareBuildDir() error {
	dir := h.cfg.BuildDir
	self := uint32(os.Geteuid())
	cur := "/"
	for _, elem := range strings.Split(strings.TrimPrefix(dir, "/"), "/") {
		cur = filepath.Join(cur, elem)
		var st unix.Stat_t
		err := unix.Lstat(cur, &st)
		if errors.Is(err, unix.ENOENT) {
			if err := os.Mkdir(cur, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("creating %s: %w", cur, err)
			}
			if err := unix.Lstat(cur, &st); err != nil {
				return err
			}
		} else if err != nil {
			return fmt.Errorf("stat %s: %w", cur, err)
		}
		switch {
		case st.Mode&unix.S_IFMT != unix.S_IFDIR:
			return fmt.Errorf("%s is not a directory (a symlink?): the build directory's path must be real directories", cur)
		case st.Uid != 0 && st.Uid != self:
			return fmt.Errorf("%s belongs to uid %d: the build directory must be reachable by root only", cur, st.Uid)
		case st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0 && cur != dir:
			return fmt.Errorf("%s is writable by others: the build directory must be reachable by root only", cur)
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if helperapi.ValidateBuildID("", e.Name()) != nil {
			h.log.Warn("leaving a foreign entry in the build directory", "build_dir", dir, "entry", e.Name())
			continue
		}
		if _, err := h.removeBuild(context.Background(), e.Name()); err != nil {
			h.log.Error("removing a stale build", "build_id", e.Name(), "error", err.Error())
			continue
		}
		h.log.Info("removed a stale build tree (no build survives a helper restart)", "build_id", e.Name())
	}
	return nil
}

// buildPath is BuildDir/<id>[/elem...]; id must be valid.
func (h *Helper) buildPath(id string, elem ...string) string {
	return filepath.Join(append([]string{h.cfg.BuildDir, id}, elem...)...)
}

// imageStep is what every step shares: the build lock, the log, the runner.
type imageStep struct {
	h      *Helper
	method string
	id     string
	log    *os.File
	logArg string
	run    runner.Runner
	start  time.Time
}

// beginStep checks that builds are on, takes the build's lock and opens the
// caller's log. The returned function releases both.
func (h *Helper) beginStep(ctx context.Context, caller rpc.PeerCred, method, id, logPath string) (*imageStep, func(), error) {
	if h.buildErr != nil {
		return nil, nil, fmt.Errorf("image builds are off: %v: %w", h.buildErr, rpc.ErrUnavailable)
	}
	logf, err := h.openLog(caller, logPath)
	if err != nil {
		return nil, nil, err
	}
	unlock := h.builds.lock(id)
	s := &imageStep{h: h, method: method, id: id, log: logf, logArg: logPath, run: h.cfg.ImageRunner(logf), start: time.Now()}
	s.logf("%s for build %s (%s)", method, id, op.From(ctx))
	return s, func() { unlock(); logf.Close() }, nil
}

// logf writes one "==> method: ..." header line to the build log.
func (s *imageStep) logf(format string, args ...any) {
	fmt.Fprintf(s.log, "==> %s: %s\n", s.method, fmt.Sprintf(format, args...))
}

// cmd runs argv (after a header line) and names the log in its error.
func (s *imageStep) cmd(ctx context.Context, what string, argv ...string) error {
	s.logf("%s", what)
	// Fork from a thread that outlives the command, so the parent-death
	// signal of nsWrap fires only when the helper goes.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if _, err := s.run.Run(ctx, argv[0], argv[1:]...); err != nil {
		s.logf("FAILED: %s: %v", what, err)
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
		}
		return s.fail(what, err)
	}
	return nil
}

// fail is the error of a failed step: it names the log.
func (s *imageStep) fail(what string, err error) error {
	return fmt.Errorf("%s of build %s: %s failed (full output in %s): %w", s.method, s.id, what, s.logArg, err)
}

// imageBootstrap is image.bootstrap.
func (h *Helper) imageBootstrap(ctx context.Context, caller rpc.PeerCred, p helperapi.ImageBootstrapParams) (helperapi.ImageStepResult, error) {
	var res helperapi.ImageStepResult
	s, done, err := h.beginStep(ctx, caller, helperapi.MethodImageBootstrap, p.BuildID, p.LogPath)
	if err != nil {
		return res, err
	}
	defer done()
	ctx, cancel := context.WithTimeoutCause(ctx, bootstrapTimeout, fmt.Errorf("debootstrap took more than %s", bootstrapTimeout))
	defer cancel()

	if removed, err := h.removeBuild(ctx, p.BuildID); err != nil {
		return res, err
	} else if removed {
		s.logf("removed the tree of an earlier attempt")
	}
	if err := os.Mkdir(h.buildPath(p.BuildID), 0o700); err != nil {
		return res, fmt.Errorf("creating the build directory: %w", err)
	}
	tree := h.buildPath(p.BuildID, treeName)
	if err := os.Mkdir(tree, 0o755); err != nil {
		return res, err
	}
	if err := os.Chmod(tree, 0o755); err != nil {
		return res, err
	}
	pkgs := bootstrapPackages(p.Packages)
	if err := s.cmd(ctx, fmt.Sprintf("debootstrap %s from %s with %d packages (in new mount and PID namespaces)", p.Suite, p.Mirror, len(pkgs)),
		bootstrapArgv(p.Suite, tree, p.Mirror, pkgs)...); err != nil {
		return res, err
	}
	if left := mountsUnder(tree); len(left) > 0 {
		return res, fmt.Errorf("image.bootstrap: mounts left under the tree after debootstrap: %q", left)
	}
	if fi, err := os.Lstat(filepath.Join(tree, "var/lib/dpkg/status")); err != nil || !fi.Mode().IsRegular() {
		return res, s.fail("debootstrap", errors.New("the tree has no dpkg status: not a Debian system"))
	}
	if err := h.writeState(p.BuildID, buildState{Step: stepBootstrapped, Suite: p.Suite}); err != nil {
		return res, err
	}
	res.DurationMS = time.Since(s.start).Milliseconds()
	s.logf("done in %s", time.Since(s.start).Round(time.Millisecond))
	h.log.InfoContext(ctx, "image bootstrapped", "build_id", p.BuildID, "suite", p.Suite, "duration_ms", res.DurationMS)
	return res, nil
}

// bootstrapPackages is guest.BasePackages followed by the packages asked
// for, without duplicates: every image gets what the guest contract needs.
func bootstrapPackages(extra []string) []string {
	out := slices.Clone(guest.BasePackages)
	for _, p := range extra {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// bootstrapArgv is the debootstrap command line, inside nsWrap.
func bootstrapArgv(suite, tree, mirror string, pkgs []string) []string {
	return append(slices.Clone(nsWrap), "debootstrap", "--variant=minbase", "--include="+strings.Join(pkgs, ","), suite, tree, mirror)
}

// initramfsArgv rebuilds the tree's initramfs-tools initrd, inside nsWrap.
func initramfsArgv(tree, kver string) []string {
	return append(slices.Clone(nsWrap), "chroot", tree, "update-initramfs", "-c", "-k", kver)
}

// imageConfigure is image.configure.
func (h *Helper) imageConfigure(ctx context.Context, caller rpc.PeerCred, p helperapi.ImageConfigureParams) (helperapi.ImageConfigureResult, error) {
	var res helperapi.ImageConfigureResult
	s, done, err := h.beginStep(ctx, caller, helperapi.MethodImageConfigure, p.BuildID, p.LogPath)
	if err != nil {
		return res, err
	}
	defer done()
	ctx, cancel := context.WithTimeoutCause(ctx, configureTimeout, fmt.Errorf("configuring took more than %s", configureTimeout))
	defer cancel()

	st, err := h.readState(p.BuildID)
	if err != nil {
		return res, err
	}
	if st.Step != stepBootstrapped && st.Step != stepConfigured {
		return res, fmt.Errorf("build %s is at step %q, want %q: %w", p.BuildID, st.Step, stepBootstrapped, rpc.ErrConflict)
	}
	if st.Suite != p.Suite {
		return res, fmt.Errorf("build %s was bootstrapped from suite %s, not %s: %w", p.BuildID, st.Suite, p.Suite, rpc.ErrConflict)
	}
	tree := h.buildPath(p.BuildID, treeName)
	t, err := openTree(tree)
	if err != nil {
		return res, err
	}
	defer t.Close()

	files := guest.FilesFor(p.Variant)
	s.logf("writing %d guest files, links and masks (internal/guest)", len(files))
	for _, f := range files {
		if err := t.write(f); err != nil {
			return res, s.fail("writing the guest files", err)
		}
	}
	s.logf("writing /etc/apt/sources.list for %s from %s (security: %q)", p.Suite, p.Mirror, p.SecurityMirror)
	if err := t.write(guest.File{Path: "/etc/apt/sources.list", Mode: 0o644, Content: guest.AptSources(p.Suite, p.Mirror, p.SecurityMirror)}); err != nil {
		return res, s.fail("writing sources.list", err)
	}

	kver, err := t.kernelVersion()
	if err != nil {
		return res, s.fail("finding the kernel", err)
	}
	s.logf("kernel %s", kver)
	if err := s.cmd(ctx, "update-initramfs for "+kver+" (chroot, new mount and PID namespaces)", initramfsArgv(tree, kver)...); err != nil {
		return res, err
	}
	remove := guest.RemoveFor(p.Variant)
	s.logf("removing %s", strings.Join(remove, " "))
	for _, pat := range remove {
		if err := t.removeMatching(pat); err != nil {
			return res, s.fail("cleaning the tree", err)
		}
	}

	initrdKind := "mini"
	var size int64
	if p.Variant == guest.VariantStock {
		err = fmt.Errorf("the stock variant boots with Debian's initrd: %w", errNoMiniInitrd)
	} else {
		size, err = h.makeMiniInitrd(t, kver, h.buildPath(p.BuildID, miniInitrd))
	}
	switch {
	case errors.Is(err, errNoMiniInitrd):
		initrdKind = "initramfs-tools"
		s.logf("no mini initrd (%v); the image uses the tree's /boot/initrd.img-%s", err, kver)
	case err != nil:
		return res, s.fail("making the mini initrd", err)
	default:
		s.logf("mini initrd: %d bytes (busybox and %d modules)", size, len(guest.InitrdModules))
	}
	if err := h.writeState(p.BuildID, buildState{Step: stepConfigured, Suite: p.Suite, KernelVersion: kver, Initrd: initrdKind}); err != nil {
		return res, err
	}
	res.KernelVersion = kver
	res.DurationMS = time.Since(s.start).Milliseconds()
	s.logf("done in %s", time.Since(s.start).Round(time.Millisecond))
	h.log.InfoContext(ctx, "image configured", "build_id", p.BuildID, "kernel", kver, "initrd", initrdKind, "duration_ms", res.DurationMS)
	return res, nil
}

// imageDiscard is image.discard.
func (h *Helper) imageDiscard(ctx context.Context, _ rpc.PeerCred, p helperapi.ImageDiscardParams) (helperapi.DeleteResult, error) {
	if h.buildErr != nil {
		return helperapi.DeleteResult{}, fmt.Errorf("image builds are off: %v: %w", h.buildErr, rpc.ErrUnavailable)
	}
	unlock := h.builds.lock(p.BuildID)
	defer unlock()
	removed, err := h.removeBuild(ctx, p.BuildID)
	if removed {
		h.log.InfoContext(ctx, "image build discarded", "build_id", p.BuildID)
	}
	return helperapi.DeleteResult{Deleted: removed}, err
}

// removeBuild removes BuildDir/<id>. Nothing may be mounted under it (a
// mount found is detached lazily, and said so, before anything is removed:
// RemoveAll would otherwise walk into it), and no process may have its root
// or working directory there.
func (h *Helper) removeBuild(ctx context.Context, id string) (bool, error) {
	if err := helperapi.ValidateBuildID("build_id", id); err != nil {
		return false, err
	}
	dir := h.buildPath(id)
	fi, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	if !fi.IsDir() {
		return false, fmt.Errorf("%s is not a directory: %w", dir, rpc.ErrConflict)
	}
	if mounts := mountsUnder(dir); len(mounts) > 0 {
		// Deepest first.
		slices.SortFunc(mounts, func(a, b string) int { return len(b) - len(a) })
		for _, m := range mounts {
			h.log.WarnContext(ctx, "lazily unmounting a mount left under a build tree", "build_id", id, "mount", m)
			if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				return false, fmt.Errorf("unmounting %s: %w", m, err)
			}
		}
		if left := mountsUnder(dir); len(left) > 0 {
			return false, fmt.Errorf("still mounted under %s: %q: %w", dir, left, rpc.ErrConflict)
		}
	}
	if pids := processesUnder(dir); len(pids) > 0 {
		return false, fmt.Errorf("processes %v have their root or working directory in build %s (a step still running?): %w", pids, id, rpc.ErrConflict)
	}
	if err := os.RemoveAll(dir); err != nil {
		return false, fmt.Errorf("removing build %s: %w", id, err)
	}
	return true, nil
}

// writeState records a build's step (atomically: temp file and rename).
func (h *Helper) writeState(id string, st buildState) error {
	raw, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := h.buildPath(id, stateName+".new")
	if err := os.WriteFile(tmp, append(raw, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, h.buildPath(id, stateName))
}

// readState reads a build's step; a build that does not exist is not_found.
func (h *Helper) readState(id string) (buildState, error) {
	var st buildState
	raw, err := os.ReadFile(h.buildPath(id, stateName))
	if errors.Is(err, os.ErrNotExist) {
		return st, fmt.Errorf("build %s: no bootstrapped tree (image.bootstrap first, and no helper restart in between): %w", id, rpc.ErrNotFound)
	} else if err != nil {
		return st, err
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, fmt.Errorf("build %s: state: %w", id, err)
	}
	return st, nil
}

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

// processesUnder lists the pids whose root or working directory is at or
// below dir.
func processesUnder(dir string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid := 0
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid <= 0 {
			continue
		}
		for _, l := range []string{"root", "cwd"} {
			p, err := os.Readlink(filepath.Join("/proc", e.Name(), l))
			if err == nil && (p == dir || strings.HasPrefix(p, dir+"/")) {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}
