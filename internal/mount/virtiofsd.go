package mount

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// wrapperArg is the hidden first argument that makes bangerd the wrapper
// (IsWrapper, RunWrapper). Its arguments follow: ro|rw SOURCE SOCKET
// VIRTIOFSD [ARGS...].
const wrapperArg = "--banger-virtiofsd-wrapper"

// candidates are where Debian and others put virtiofsd.
var candidates = []string{"/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd", "/usr/lib/virtiofsd"}

// Find returns the virtiofsd binary.
func Find() (string, error) {
	for _, c := range candidates {
		if fi, err := os.Stat(c); err == nil && fi.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	if p, err := exec.LookPath("virtiofsd"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("no virtiofsd (looked in %s and PATH): install qemu-system-common", strings.Join(candidates, ", "))
}

// Options start one virtiofsd.
type Options struct {
	Binary string // virtiofsd (Find)
	Self   string // the wrapper: bangerd's own executable (or a test binary calling RunWrapper)
	Spec   Spec
	Socket string // the vhost-user socket qemu connects to (made 0600)
	// LogPath gets virtiofsd's output (appended, 0600).
	LogPath string
	// Cache is virtiofsd's cache mode: auto (""), always or none.
	Cache string
	// ThreadPoolSize sets --thread-pool-size when > 0.
	ThreadPoolSize int
	// Extra are more virtiofsd arguments (tests).
	Extra []string
}

// Argv is virtiofsd's command line for o (without the wrapper).
func (o Options) Argv() []string {
	cache := o.Cache
	if cache == "" {
		cache = "auto"
	}
	argv := []string{o.Binary, "--socket-path=" + o.Socket, "-o", "source=" + o.Spec.HostDir, "-o", "cache=" + cache}
	if o.ThreadPoolSize > 0 {
		argv = append(argv, "--thread-pool-size="+strconv.Itoa(o.ThreadPoolSize))
	}
	if os.Getuid() != 0 {
		// Raising the fd limit past the hard one is refused in a user
		// namespace; leave it as it is.
		argv = append(argv, "--rlimit-nofile=0")
	}
	return append(argv, o.Extra...)
}

// command is the wrapper's process for o: a new mount namespace, and a
// user namespace mapping the caller to root when the caller is not root.
func (o Options) command() *exec.Cmd {
	mode := "rw"
	if o.Spec.ReadOnly {
		mode = "ro"
	}
	cmd := exec.Command(o.Self, append([]string{wrapperArg, mode, o.Spec.HostDir, o.Socket}, o.Argv()...)...)
	attr := &syscall.SysProcAttr{Setsid: true, Cloneflags: syscall.CLONE_NEWNS}
	if uid := os.Getuid(); uid != 0 {
		attr.Cloneflags |= syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}}
		attr.GidMappingsEnableSetgroups = false
	}
	cmd.SysProcAttr = attr
	return cmd
}

// Start starts a virtiofsd for o and returns its pid once its socket
// exists (virtiofsd then waits for qemu), or an error with the end of its
// log when it exits first or is not ready in 5 s.
func Start(ctx context.Context, o Options) (int, error) {
	if o.Binary == "" || o.Self == "" || o.Socket == "" || o.LogPath == "" {
		return 0, errors.New("virtiofsd: binary, wrapper, socket and log are all needed")
	}
	switch o.Cache {
	case "", "auto", "always", "none":
	default:
		return 0, fmt.Errorf("virtiofsd cache mode %q: want auto, always or none", o.Cache)
	}
	log, err := os.OpenFile(o.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer log.Close()
	os.Remove(o.Socket)
	cmd := o.command()
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("starting virtiofsd: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it whenever it ends
	pid := cmd.Process.Pid
	deadline := time.NewTimer(5 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if fi, err := os.Stat(o.Socket); err == nil && fi.Mode()&os.ModeSocket != 0 {
			// Only its user (qemu, bangerd) may connect.
			if err := os.Chmod(o.Socket, 0o600); err != nil {
				Stop(pid, o.Socket)
				return 0, err
			}
			return pid, nil
		}
		select {
		case err := <-exited:
			return 0, fmt.Errorf("virtiofsd for %s exited (%v): %s", o.Spec.HostDir, err, tail(o.LogPath))
		case <-deadline.C:
			Stop(pid, o.Socket)
			return 0, fmt.Errorf("virtiofsd for %s made no socket in 5 s: %s", o.Spec.HostDir, tail(o.LogPath))
		case <-ctx.Done():
			Stop(pid, o.Socket)
			return 0, ctx.Err()
		case <-tick.C:
		}
	}
}

// tail is the last lines of a log, for an error.
func tail(path string) string {
	b, _ := os.ReadFile(path)
	b = bytes.TrimSpace(b)
	lines := strings.Split(string(b), "\n")
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	if len(b) == 0 {
		return "(no output; see " + path + ")"
	}
	return strings.Join(lines, " | ")
}

// Alive reports whether pid is the virtiofsd serving socket (pids are
// reused: its command line must name the socket).
func Alive(pid int, socket string) bool {
	if pid <= 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	var st [3]byte
	if s, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		if i := bytes.LastIndexByte(s, ')'); i > 0 && i+2 < len(s) {
			copy(st[:], s[i+2:])
		}
	}
	return st[0] != 'Z' && bytes.Contains(b, []byte("--socket-path="+socket+"\x00"))
}

// Stop ends the virtiofsd pid serving socket and its sandboxed children:
// SIGTERM, then SIGKILL after 2 s. A pid that is not it is left alone.
func Stop(pid int, socket string) error {
	if !Alive(pid, socket) {
		return nil
	}
	procs := append(children(pid), pid)
	gone := func(sig syscall.Signal, wait time.Duration) bool {
		for _, p := range procs {
			_ = syscall.Kill(p, sig)
		}
		for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if !Alive(pid, socket) {
				return true
			}
		}
		return false
	}
	if gone(syscall.SIGTERM, 2*time.Second) || gone(syscall.SIGKILL, time.Second) {
		return nil
	}
	return fmt.Errorf("virtiofsd pid %d survived SIGKILL", pid)
}

// children are the processes whose parent is pid.
func children(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if p, err := strconv.Atoi(e.Name()); err == nil && ParentPID(p) == pid {
			out = append(out, p)
		}
	}
	return out
}

// ParentPID is pid's parent, from /proc/PID/stat (0 when unknown).
func ParentPID(pid int) int {
	s, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(s[i+1:]))
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// IsWrapper reports whether this process is the wrapper Start runs:
// main calls RunWrapper first thing when it is.
func IsWrapper() bool { return len(os.Args) > 1 && os.Args[1] == wrapperArg }

// RunWrapper is the wrapper's body, already in its own mount (and user)
// namespace: it makes the mounts private, makes SOURCE (with every mount
// below it) read-only for ro, gives virtiofsd a private /run, sets umask
// 077 and execs virtiofsd. It returns only on failure.
func RunWrapper() int {
	if err := runWrapper(os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "virtiofsd wrapper:", err)
		return 1
	}
	return 0 // not reached: runWrapper execs
}

func runWrapper(args []string) error {
	if len(args) < 4 || (args[0] != "ro" && args[0] != "rw") {
		return fmt.Errorf("want ro|rw SOURCE SOCKET VIRTIOFSD [ARGS...], got %q", args)
	}
	mode, src, sock, argv := args[0], args[1], args[2], args[3:]
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	if mode == "ro" {
		if err := readOnly(src); err != nil {
			return err
		}
	}
	if err := privateRun(src, filepath.Dir(sock)); err != nil {
		return err
	}
	unix.Umask(0o077)
	err := syscall.Exec(argv[0], argv, os.Environ())
	return fmt.Errorf("exec %s: %w", argv[0], err)
}

// readOnly bind-mounts dir on itself and makes it read-only with every
// mount below it (mount_setattr, AT_RECURSIVE), which leaves the flags a
// user namespace may not change alone. A kernel without mount_setattr
// (before 5.12) gets a remount of dir itself, keeping those flags (nosuid,
// nodev, noexec, atime) from statfs.
func readOnly(dir string) error {
	if err := unix.Mount(dir, dir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting %s: %w", dir, err)
	}
	err := unix.MountSetattr(unix.AT_FDCWD, dir, unix.AT_RECURSIVE, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY})
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("making %s read-only: %w", dir, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return err
	}
	flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY)
	for _, f := range []struct{ st, ms uintptr }{
		{unix.ST_NOSUID, unix.MS_NOSUID}, {unix.ST_NODEV, unix.MS_NODEV}, {unix.ST_NOEXEC, unix.MS_NOEXEC},
		{unix.ST_NOATIME, unix.MS_NOATIME}, {unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME},
	} {
		if uintptr(st.Flags)&f.st != 0 {
			flags |= f.ms
		}
	}
	if err := unix.Mount("", dir, "", flags, ""); err != nil {
		return fmt.Errorf("making %s read-only: %w", dir, err)
	}
	return nil
}

// privateRun covers /var/run (/run) with a tmpfs of this namespace's own:
// virtiofsd keeps its pid file in /var/run/virtiofsd, which then leaves
// nothing on the host and is writable in a user namespace. The paths in
// keep (the shared folder, the socket's directory) that lie under it are
// cloned first (open_tree) and put back at the same place in the tmpfs, so
// a folder such as /run/media/USER/stick is still shared.
func privateRun(keep ...string) error {
	run, err := filepath.EvalSymlinks("/var/run")
	if err != nil {
		run = "/run"
	}
	type clone struct {
		path string
		fd   int
	}
	var clones []clone
	defer func() {
		for _, c := range clones {
			unix.Close(c.fd)
		}
	}()
	for _, p := range keep {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		if !strings.HasPrefix(p, run+"/") {
			if p == run {
				return fmt.Errorf("%s cannot be shared or hold the socket: virtiofsd gets a private one", run)
			}
			continue
		}
		fd, err := unix.OpenTree(unix.AT_FDCWD, p, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
		if err != nil {
			return fmt.Errorf("keeping %s past the private %s: %w", p, run, err)
		}
		clones = append(clones, clone{p, fd})
	}
	if err := unix.Mount("tmpfs", run, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=1m"); err != nil {
		return fmt.Errorf("a private %s: %w", run, err)
	}
	for _, c := range clones {
		if err := os.MkdirAll(c.path, 0o755); err != nil {
			return err
		}
		if err := unix.MoveMount(c.fd, "", unix.AT_FDCWD, c.path, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("putting %s back: %w", c.path, err)
		}
	}
	return nil
}
