// Package imagebuild builds banger's guest images without root: bangerd
// calls Build as whatever user it runs as, and Build runs
//
//	mmdebstrap --mode=unshare --variant=minbase --include=PKGS --keyring=K
//	    --aptopt=... --customize-hook=HOOK SUITE /dev/null MIRROR
//
// which bootstraps the suite in a temporary chroot inside user, mount and
// PID namespaces (package scripts run as the user's first subordinate
// uid, never as root; a root daemon gets the same namespaces without the
// user one: it is driven by root only), with the archive's signature
// verified against the suite's pinned keyring (Keyrings) and nothing else;
// a suite without a keyring on the host is refused before anything is
// downloaded. The customize hook is this very binary (IsHook, RunHook): it
// takes the image's output files from Build over a socket, writes banger's
// guest files (internal/guest) into the tree, packs it into rootfs.ext4 and
// work-seed.ext4, copies out vmlinuz, initrd.img and kernel.config, and
// reports each stage; mmdebstrap then deletes the chroot.
//
// Build is the narrow interface: a Spec (validated without touching the
// host), Options (the image directory, the build log, a stage callback)
// and a Result. Preflight checks the host for a Spec (keyring, tools,
// subordinate ids) and is what the daemon calls before starting an
// operation; HostChecks are `banger doctor`'s lines.
//
// mmdebstrap is started with os/exec rather than through internal/runner:
// it needs a process group to signal, a parent-death signal and a stop
// that sends SIGTERM before SIGKILL. Its argv comes from a pure builder
// (mmdebstrapArgv) and never passes through a shell; the commands the hook
// runs go through runner.Exec.
package imagebuild

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/hostcheck"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/runner"
)

// Files a build makes in the image directory.
const (
	OutRootfs       = "rootfs.ext4"
	OutWorkSeed     = "work-seed.ext4"
	OutKernel       = "vmlinuz"
	OutInitrd       = "initrd.img"
	OutKernelConfig = "kernel.config"
)

// outNames are the output files in the order of their descriptors.
var outNames = []string{OutRootfs, OutWorkSeed, OutKernel, OutInitrd, OutKernelConfig}

// DefaultTempDir is where mmdebstrap's temporary chroot lives (in a
// directory of the build's own, banger-build-*): disk-backed by the FHS,
// unlike /tmp, which may be a RAM tmpfs (Debian 13's default), and a tree
// with its downloaded packages is half a GiB. It must be a directory every
// uid can traverse: the namespace's root, a subordinate uid, has to reach
// the chroot; the daemon's state directory is 0700.
const DefaultTempDir = "/var/tmp"

// workPrefix names a build's own directory under the temp dir.
const workPrefix = "banger-build-"

// Time limits.
const (
	// buildTimeout bounds a whole build (a bootstrap takes a minute or
	// two; a slow mirror more).
	buildTimeout = 90 * time.Minute
	// defaultStopGrace is how long a cancelled mmdebstrap has, after
	// SIGTERM, to remove its temporary chroot before SIGKILL.
	defaultStopGrace = 30 * time.Second
)

// Event is a stage of the build beginning: "configure" (the bootstrap is
// done; the hook is writing banger's files) and "pack" (with the kernel
// found and the initrd kind).
type Event struct {
	Stage         string
	KernelVersion string
	Initrd        string
}

// Options say where a build's output goes and how it reports.
type Options struct {
	// OutDir is the image directory: it exists, is the caller's, and holds
	// none of the output files yet.
	OutDir string
	// Log receives mmdebstrap's and the hook's output (appended); LogPath
	// is its path, for messages.
	Log     *os.File
	LogPath string
	// OnStage, when set, is called as each stage after the bootstrap
	// begins (from another goroutine).
	OnStage func(Event)
	// Agent is the banger-agent binary (static) the image carries at
	// guest.AgentPath; required.
	Agent string
	// Hook is the executable mmdebstrap runs as its customize hook (a
	// binary whose main calls RunHook when IsHook); "" is this process's
	// own executable. Build runs a copy of it.
	Hook string
	// TempDir is where the build's temporary directory goes, and the
	// hook's scratch files (unnamed while used); "" is DefaultTempDir. For
	// a build as a user every uid must be able to write there (the
	// namespace's root is a subordinate uid): sticky and world-writable,
	// as /var/tmp.
	TempDir string
	// Keyrings pins each suite's keyring; nil is DefaultKeyrings.
	Keyrings Keyrings
	// StopGrace is the time between SIGTERM and SIGKILL when the build is
	// cancelled; 0 is 30 s.
	StopGrace time.Duration
}

// Result names what a build made.
type Result struct {
	KernelVersion string
	// Initrd is InitrdMini or InitrdTools.
	Initrd string
	// Paths of the output files in OutDir.
	Rootfs, WorkSeed, Kernel, InitrdPath, KernelConfig string
	// Sizes in bytes (apparent; the file systems are sparse).
	RootfsSize, WorkSeedSize int64
}

// Preflight checks spec and the host for a build as this process's user
// and returns the suite's keyring: the spec is valid, the suite has a
// keyring that is there, mmdebstrap and the hook's tools are installed,
// and, for a user other than root, newuidmap and newgidmap can map its
// subordinate ids (at least 65536 in /etc/subuid and /etc/subgid) and the
// kernel allows it user namespaces. Every refusal says what to do.
func Preflight(spec Spec, keyrings Keyrings) (string, error) {
	if err := spec.Validate(); err != nil {
		return "", err
	}
	if keyrings == nil {
		keyrings = DefaultKeyrings()
	}
	keyring, err := keyrings.For(spec.Suite)
	if err != nil {
		return "", err
	}
	if err := checkConfPath("keyring", keyring); err != nil {
		return "", fmt.Errorf("%v: %w", err, rpc.ErrBadRequest)
	}
	var missing []string
	for _, tool := range []string{"mmdebstrap", "mke2fs", "e2fsck", "debugfs", "chroot"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if _, err := os.Stat(mergedUsrHooks); err != nil && !slices.Contains(missing, "mmdebstrap") {
		missing = append(missing, mergedUsrHooks+" (of mmdebstrap)")
	}
	if len(missing) > 0 {
		return "", rpc.WithHint(newError(fmt.Sprintf("image builds need %s, not found in PATH", strings.Join(missing, ", ")), ErrMissingTool, rpc.ErrUnavailable),
			"install them: sudo apt-get install mmdebstrap uidmap e2fsprogs coreutils")
	}
	if os.Geteuid() == 0 {
		return keyring, nil
	}
	for _, tool := range []string{"newuidmap", "newgidmap"} {
		if _, err := hostcheck.IDMapper(tool); err != nil {
			return "", rpc.WithHint(newError(fmt.Sprintf("an image build as a user needs %s: %v", tool, err), ErrMissingTool, rpc.ErrUnavailable), installHint)
		}
	}
	name := userName()
	for _, f := range []string{hostcheck.SubUIDFile, hostcheck.SubGIDFile} {
		if _, err := hostcheck.SubIDs(f, name, os.Getuid()); err != nil {
			return "", rpc.WithHint(newError(fmt.Sprintf("an image build as %s (uid %d) runs its package scripts as subordinate ids of that user, and %v", name, os.Getuid(), err),
				ErrNoSubIDs, rpc.ErrUnavailable), subidHint(name))
		}
	}
	if ok, detail := hostcheck.UserNamespaces(); !ok {
		return "", rpc.WithHint(newError("an image build as a user needs unprivileged user namespaces: "+detail, ErrNoSubIDs, rpc.ErrUnavailable),
			"enable them: sudo sysctl -w user.max_user_namespaces=65536 (and kernel.unprivileged_userns_clone=1 where it exists), or run bangerd as root")
	}
	return keyring, nil
}

// userName is this process's user name, as mmdebstrap looks it up.
func userName() string {
	if u, err := user.LookupId(strconv.Itoa(os.Getuid())); err == nil {
		return u.Username
	}
	return strconv.Itoa(os.Getuid())
}

// Build builds the image of spec into o.OutDir. It returns when the files
// are complete (mode 0644, synced) or the build failed: then the output
// files are removed again, mmdebstrap has removed its chroot, and the
// error says what failed and names the log. Cancelling ctx stops
// mmdebstrap (SIGTERM to its process group, SIGKILL after o.StopGrace).
func Build(ctx context.Context, spec Spec, o Options) (res Result, err error) {
	keyring, err := Preflight(spec, o.Keyrings)
	if err != nil {
		return res, err
	}
	if o.Log == nil || o.OutDir == "" {
		return res, errors.New("imagebuild: Options.Log and Options.OutDir are required")
	}
	if err := CheckAgent(o.Agent); err != nil {
		return res, err
	}
	ctx, cancel := context.WithTimeoutCause(ctx, buildTimeout, fmt.Errorf("the build took more than %s", buildTimeout))
	defer cancel()
	logf := func(format string, args ...any) { fmt.Fprintf(o.Log, "==> bootstrap: "+format+"\n", args...) }

	tempDir := o.TempDir
	if tempDir == "" {
		tempDir = DefaultTempDir
	}
	sweepStale(ctx, tempDir, o.Log)
	w, err := newWorkDir(tempDir, o.Hook, o.Agent)
	if err != nil {
		return res, fmt.Errorf("preparing the build's directory under %s: %w", tempDir, err)
	}
	defer w.remove(ctx, o.Log)

	outs, err := createOutputs(o.OutDir)
	if err != nil {
		return res, err
	}
	defer func() {
		if err != nil {
			outs.remove()
		}
		outs.close()
	}()

	peerUID, err := hookUID()
	if err != nil {
		return res, err
	}
	token, err := newToken()
	if err != nil {
		return res, err
	}
	params, _ := json.Marshal(hookParams{
		Protocol: hookProtocol, Suite: spec.Suite, Mirror: spec.Mirror, SecurityMirror: spec.SecurityMirror,
		Variant: spec.Variant, RootfsSize: spec.RootfsSize, Socket: w.socket, Token: token, Agent: w.agent, Scratch: tempDir,
	})
	argv := mmdebstrapArgv(spec, keyring, w.trusted, w.hook)
	pkgs := spec.AllPackages()
	logf("mmdebstrap %s from %s with %d packages, the archive's signature checked against %s only (as uid %d, temporary chroot under %s)",
		spec.Suite, spec.Mirror, len(pkgs), keyring, os.Geteuid(), w.dir)
	fmt.Fprintf(o.Log, "$ %s\n", runner.Argv(argv[0], argv[1:]...))
	logStart, _ := o.Log.Seek(0, io.SeekEnd)

	statusCh := make(chan statusResult, 1)
	hc := &hookConn{ln: w.ln, token: token, uid: peerUID, files: outs.files, onStage: o.OnStage, log: o.Log}
	go func() { statusCh <- hc.serve() }()
	grace := o.StopGrace
	if grace <= 0 {
		grace = defaultStopGrace
	}
	runErr := runMmdebstrap(ctx, argv, buildEnv(w.dir, string(params)), o.Log, grace)

	// mmdebstrap is gone, and with its PID namespace every process of the
	// build: the hook's connection is closed, or was never made.
	w.ln.Close()
	var st statusResult
	select {
	case st = <-statusCh:
	case <-time.After(10 * time.Second):
		hc.close()
		st = <-statusCh
	}
	logText := readLogFrom(o.Log, logStart)
	switch {
	case ctx.Err() != nil:
		return res, fmt.Errorf("the build was stopped (%v) (full output in %s)", context.Cause(ctx), o.LogPath)
	case st.failure != nil:
		return res, fmt.Errorf("%s failed: %s (full output in %s)", st.failure.Stage, st.failure.Error, o.LogPath)
	case runErr != nil:
		return res, classify(runErr, logText, o.LogPath, keyring, spec.Mirror, userName())
	case st.err != nil:
		return res, fmt.Errorf("the hook's report: %v (full output in %s)", st.err, o.LogPath)
	case st.done == nil:
		return res, fmt.Errorf("mmdebstrap succeeded but the hook never reported its end: was it run? (full output in %s)", o.LogPath)
	}
	sizes, err := outs.finish()
	if err != nil {
		return res, fmt.Errorf("finishing the image files: %w (full output in %s)", err, o.LogPath)
	}
	if sizes[0] != st.done.RootfsSize || sizes[1] != st.done.WorkSeedSize {
		return res, fmt.Errorf("the hook reported a rootfs of %d and a work-seed of %d bytes, the files hold %d and %d (full output in %s)",
			st.done.RootfsSize, st.done.WorkSeedSize, sizes[0], sizes[1], o.LogPath)
	}
	return Result{
		KernelVersion: st.done.KernelVersion, Initrd: st.done.Initrd,
		Rootfs: filepath.Join(o.OutDir, OutRootfs), WorkSeed: filepath.Join(o.OutDir, OutWorkSeed),
		Kernel: filepath.Join(o.OutDir, OutKernel), InitrdPath: filepath.Join(o.OutDir, OutInitrd),
		KernelConfig: filepath.Join(o.OutDir, OutKernelConfig),
		RootfsSize:   sizes[0], WorkSeedSize: sizes[1],
	}, nil
}

// runMmdebstrap runs argv in a process group of its own, its output to
// log, no descriptor beyond the standard ones. mmdebstrap gets SIGTERM
// when this thread dies (bangerd gone): it then waits for its build,
// whose hook fails on the closed socket, and removes its chroot.
// Cancelling ctx sends SIGTERM to the group (mmdebstrap removes its chroot
// on TERM), SIGKILL after grace.
func runMmdebstrap(ctx context.Context, argv, env []string, log *os.File, grace time.Duration) error {
	// The parent-death signal follows the thread that forked: keep it
	// until the command ends.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Dir = "/"
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting mmdebstrap: %w", err)
	}
	pgid := cmd.Process.Pid
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	fmt.Fprintf(log, "==> bootstrap: stopping mmdebstrap (%v): SIGTERM to its process group, SIGKILL in %s\n", context.Cause(ctx), grace)
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case err := <-done:
		return err
	case <-time.After(grace):
	}
	fmt.Fprintf(log, "==> bootstrap: mmdebstrap still running after %s: SIGKILL\n", grace)
	syscall.Kill(-pgid, syscall.SIGKILL)
	return <-done
}

// hookUID is the uid the hook runs as, seen from here: root for a build
// as root, else the user's first subordinate uid (the namespace's root).
func hookUID() (uint32, error) {
	if os.Geteuid() == 0 {
		return 0, nil
	}
	r, err := hostcheck.SubIDs(hostcheck.SubUIDFile, userName(), os.Getuid())
	if err != nil {
		return 0, rpc.WithHint(newError(err.Error(), ErrNoSubIDs, rpc.ErrUnavailable), subidHint(userName()))
	}
	return uint32(r.Start), nil
}

func newToken() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// hookConn is Build's side of the hook's socket: it accepts the hook (its
// peer uid hookUID and its first line the token; anyone else is turned
// away and logged), hands it the output files and reads its status. The
// socket is reachable by any user (0666 in a 0711 directory); the uid
// check keeps out all but the build's own namespace. Within it, package
// scripts run as the hook's uid with its environment (the token) and
// could take its place: they wrote the tree the image is made of, so the
// output files give them nothing more, and the daemon trusts nothing the
// hook reports but in form (kernel version, initrd kind) and checks sizes
// itself.
type hookConn struct {
	ln      *net.UnixListener
	token   string
	uid     uint32
	files   []*os.File
	onStage func(Event)
	log     io.Writer

	mu   sync.Mutex
	conn *net.UnixConn
}

func (h *hookConn) serve() statusResult {
	for {
		conn, err := h.ln.AcceptUnix()
		if err != nil {
			return statusResult{err: errors.New("the hook never connected")}
		}
		if err := h.admit(conn); err != nil {
			fmt.Fprintf(h.log, "==> warning: refused a connection to the build's socket: %v\n", err)
			conn.Close()
			continue
		}
		h.ln.Close() // one hook per build
		h.mu.Lock()
		h.conn = conn
		h.mu.Unlock()
		defer conn.Close()
		return readStatus(conn, h.onStage)
	}
}

// admit checks the peer and the token, then sends the files.
func (h *hookConn) admit(conn *net.UnixConn) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if cerr != nil {
		return cerr
	}
	if cred.Uid != h.uid {
		return fmt.Errorf("peer uid %d (pid %d), want %d", cred.Uid, cred.Pid, h.uid)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	line, err := bufio.NewReaderSize(io.LimitReader(conn, 64), 64).ReadString('\n')
	if err != nil || subtle.ConstantTimeCompare([]byte(strings.TrimSuffix(line, "\n")), []byte(h.token)) != 1 {
		return fmt.Errorf("pid %d did not send the token", cred.Pid)
	}
	fds := make([]int, len(h.files))
	for i, f := range h.files {
		fds[i] = int(f.Fd())
	}
	if _, _, err := conn.WriteMsgUnix([]byte("files\n"), unix.UnixRights(fds...), nil); err != nil {
		return fmt.Errorf("sending the output files: %w", err)
	}
	conn.SetDeadline(time.Time{})
	return nil
}

// close stops the status reader (a descriptor of the connection left open
// somewhere).
func (h *hookConn) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.conn != nil {
		h.conn.Close()
	}
}

// statusResult is what the hook reported.
type statusResult struct {
	done    *status
	failure *status
	err     error
}

// readStatus reads the hook's status lines until EOF, calling onStage for
// each stage that begins. The lines must come in order (configure, pack,
// done, or a failure): anything else is an error, and the build fails.
func readStatus(r io.Reader, onStage func(Event)) statusResult {
	var res statusResult
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 4096), 64<<10)
	next := "configure"
	for sc.Scan() {
		var st status
		if err := json.Unmarshal(sc.Bytes(), &st); err != nil {
			res.err = fmt.Errorf("a status line that is not JSON: %q", trunc(sc.Text()))
			continue
		}
		switch {
		case res.err != nil || res.done != nil || res.failure != nil:
			res.err = fmt.Errorf("status after the end: %q", trunc(sc.Text()))
		case st.Error != "":
			res.failure = &st
		case st.Done && next == "done":
			if !kernelVersionRE.MatchString(st.KernelVersion) || (st.Initrd != InitrdMini && st.Initrd != InitrdTools) {
				res.err = fmt.Errorf("the hook reported kernel %q, initrd %q", trunc(st.KernelVersion), trunc(st.Initrd))
				continue
			}
			res.done = &st
		case st.Stage == next && !st.Done:
			if next == "pack" && !kernelVersionRE.MatchString(st.KernelVersion) {
				res.err = fmt.Errorf("the hook reported kernel %q", trunc(st.KernelVersion))
				continue
			}
			if onStage != nil {
				onStage(Event{Stage: st.Stage, KernelVersion: st.KernelVersion, Initrd: st.Initrd})
			}
			next = map[string]string{"configure": "pack", "pack": "done"}[next]
		default:
			res.err = fmt.Errorf("status out of order (want %s): %q", next, trunc(sc.Text()))
		}
	}
	if err := sc.Err(); err != nil && res.err == nil && !errors.Is(err, os.ErrClosed) {
		res.err = err
	}
	return res
}

func trunc(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// readLogFrom returns the log from offset on (at most its last 1 MiB). The
// log is open for appending only: it is read through a descriptor of its
// own, opened from /proc/self/fd (the very file, whatever its path).
func readLogFrom(log *os.File, off int64) string {
	f, err := os.Open(fdPath(int(log.Fd())))
	if err != nil {
		return ""
	}
	defer f.Close()
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return ""
	}
	off = min(max(off, end-1<<20), end)
	buf := make([]byte, end-off)
	n, _ := f.ReadAt(buf, off)
	return string(buf[:n])
}

// outputFiles are the five output files, created by the daemon.
type outputFiles struct {
	dir   string
	files []*os.File
	ids   [][2]uint64
}

// createOutputs creates the output files anew in dir (O_EXCL|O_NOFOLLOW:
// an existing file or symlink is never overwritten or followed), mode 0600
// until finish: nobody but the daemon's user may open them, and the hook
// writes them only through the descriptors it is passed (it makes the file
// systems in scratch files of its own and copies them in), so no command
// reopens them. finish makes them 0644, after checking that nothing linked
// them elsewhere meanwhile.
func createOutputs(dir string) (*outputFiles, error) {
	o := &outputFiles{dir: dir}
	fail := func(err error) (*outputFiles, error) {
		o.remove()
		o.close()
		return nil, err
	}
	for _, name := range outNames {
		p := filepath.Join(dir, name)
		fd, err := unix.Open(p, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			if errors.Is(err, unix.EEXIST) {
				return fail(rpc.WithHint(fmt.Errorf("%s already exists: %w", p, rpc.ErrConflict), "remove it, or build under another name"))
			}
			return fail(fmt.Errorf("creating %s: %w", p, err))
		}
		f := os.NewFile(uintptr(fd), p)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			f.Close()
			return fail(fmt.Errorf("fstat %s: %w", p, err))
		}
		o.files = append(o.files, f)
		o.ids = append(o.ids, [2]uint64{st.Dev, st.Ino})
		// The umask may have taken bits; it cannot have added any.
		if err := unix.Fchmod(fd, 0o600); err != nil {
			return fail(fmt.Errorf("chmod 0600 %s: %w", p, err))
		}
	}
	return o, nil
}

// finish checks each file: still one link (a hard link made during the
// build, say through /proc/self/fd/N by a process of the build, would let
// whoever can reach it read or write the image later), and not empty; then
// makes it 0644 and syncs it. It returns the sizes.
func (o *outputFiles) finish() ([]int64, error) {
	var sizes []int64
	for i, f := range o.files {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			return nil, fmt.Errorf("fstat %s: %w", f.Name(), err)
		}
		if st.Nlink != 1 {
			return nil, rpc.WithHint(fmt.Errorf("%s has %d links, want 1: something in the build linked it elsewhere, so the image is not used", f.Name(), st.Nlink),
				"look for a file with its inode number (find / -xdev -inum "+strconv.FormatUint(st.Ino, 10)+"), remove it, and build again")
		}
		if st.Size == 0 {
			return nil, fmt.Errorf("%s is empty", outNames[i])
		}
		if err := f.Chmod(0o644); err != nil {
			return nil, fmt.Errorf("chmod 0644 %s: %w", f.Name(), err)
		}
		if err := f.Sync(); err != nil {
			return nil, fmt.Errorf("syncing %s: %w", f.Name(), err)
		}
		sizes = append(sizes, st.Size)
	}
	d, err := os.Open(o.dir)
	if err == nil {
		err = d.Sync()
		d.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("syncing the image directory %s: %w", o.dir, err)
	}
	return sizes, nil
}

// remove deletes the files made (those still the same inode) after a
// failure.
func (o *outputFiles) remove() {
	for i, id := range o.ids {
		p := filepath.Join(o.dir, outNames[i])
		var st unix.Stat_t
		if unix.Lstat(p, &st) == nil && st.Dev == id[0] && st.Ino == id[1] {
			os.Remove(p)
		}
	}
}

func (o *outputFiles) close() {
	for _, f := range o.files {
		f.Close()
	}
}

// CheckAgent refuses a banger-agent the image could not run: missing, not
// an x86-64 ELF executable, or linked dynamically (the guest's libc is not
// the host's; build it with CGO_ENABLED=0, as make build does).
func CheckAgent(path string) error {
	hint := "build and install banger-agent with banger: make build (or make install)"
	if path == "" {
		return rpc.WithHint(fmt.Errorf("no banger-agent binary to put into the image: %w", rpc.ErrUnavailable), hint)
	}
	f, err := elf.Open(path)
	if err != nil {
		return rpc.WithHint(fmt.Errorf("banger-agent %s: %v: %w", path, err, rpc.ErrUnavailable), hint)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return rpc.WithHint(fmt.Errorf("banger-agent %s is not an x86-64 executable: %w", path, rpc.ErrUnavailable), hint)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return rpc.WithHint(fmt.Errorf("banger-agent %s is linked dynamically; the guest needs a static one: %w", path, rpc.ErrUnavailable),
				"CGO_ENABLED=0 go build ./cmd/banger-agent (make build does)")
		}
	}
	return nil
}
