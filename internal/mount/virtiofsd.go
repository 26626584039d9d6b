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

// envWrap marks the wrapper process (RunWrapper).
const envWrap = "BANGER_VIRTIOFSD_WRAPPER"

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
	cmd := exec.Command(o.Self, append([]string{mode, o.Spec.HostDir}, o.Argv()...)...)
	cmd.Env = append(os.Environ(), envWrap+"=1")
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
	for _, p := range procs {
		_ = syscall.Kill(p, syscall.SIGTERM)
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if !Alive(pid, socket) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, p := range procs {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	time.Sleep(50 * time.Millisecond)
	if Alive(pid, socket) {
		return fmt.Errorf("virtiofsd pid %d survived SIGKILL", pid)
	}
	return nil
}

// children are the processes whose parent is pid.
func children(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		s, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(s[i+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, p)
		}
	}
	return out
}

// IsWrapper reports whether this process is the wrapper Start runs:
// main calls RunWrapper first thing when it is.
func IsWrapper() bool { return os.Getenv(envWrap) == "1" }

// RunWrapper is the wrapper's body (args: ro|rw SOURCE VIRTIOFSD ARGS...),
// already in its own mount (and user) namespace: it makes the mounts
// private, makes SOURCE read-only for ro, and execs virtiofsd. It returns
// only on failure.
func RunWrapper() int {
	args := os.Args[1:]
	if len(args) < 3 {
		fmt.Fprintln(os.Stderr, "virtiofsd wrapper: want ro|rw SOURCE VIRTIOFSD [ARGS...]")
		return 2
	}
	mode, src, argv := args[0], args[1], args[2:]
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fmt.Fprintln(os.Stderr, "virtiofsd wrapper: making mounts private:", err)
		return 1
	}
	// virtiofsd keeps its pid file in /run/virtiofsd: a tmpfs of this
	// namespace's own, so nothing is left on the host and an unprivileged
	// user can write it.
	if err := unix.Mount("tmpfs", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=1m"); err != nil {
		fmt.Fprintln(os.Stderr, "virtiofsd wrapper: a private /run:", err)
		return 1
	}
	if mode == "ro" {
		if err := readOnly(src); err != nil {
			fmt.Fprintln(os.Stderr, "virtiofsd wrapper:", err)
			return 1
		}
	}
	unix.Umask(0o077)
	os.Unsetenv(envWrap)
	err := syscall.Exec(argv[0], argv, os.Environ())
	fmt.Fprintln(os.Stderr, "virtiofsd wrapper: exec", argv[0]+":", err)
	return 1
}

// readOnly bind-mounts dir on itself read-only, keeping the flags a user
// namespace may not drop (nosuid, nodev, noexec, atime).
func readOnly(dir string) error {
	if err := unix.Mount(dir, dir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting %s: %w", dir, err)
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
