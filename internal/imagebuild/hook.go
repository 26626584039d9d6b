package imagebuild

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/runner"
)

// The hook is the program mmdebstrap runs as its customize hook: a copy of
// the binary that called Build (bangerd, or a test binary), recognised by
// EnvHook in its environment before anything else runs (IsHook, RunHook).
// mmdebstrap execs it directly, with the chroot's path as its only
// argument, as the namespace's root (the user's first subordinate uid for
// a build as a user, root for a build as root), on the host's file system.
//
// It runs in two processes: the first re-executes itself in a new mount
// namespace (CLONE_NEWNS, which needs no privilege beyond the namespace's
// root) and waits; the second does the work there, so that what it mounts
// and unmounts to pack the tree never reaches mmdebstrap's namespace.

// EnvHook carries a build's parameters (hookParams, JSON) to the hook.
const EnvHook = "BANGER_IMAGEBUILD_HOOK"

// envHookInner marks the hook's second process.
const envHookInner = "BANGER_IMAGEBUILD_HOOK_INNER"

// hookProtocol is the version of hookParams and of the status lines; the
// hook refuses another (a stale copy cannot misread a newer build).
const hookProtocol = 2

// The hook inherits no descriptor beyond its standard ones (mmdebstrap
// runs dash with fixed descriptor numbers below 10, which more inherited
// descriptors would push past). It connects to Build's socket instead
// (hookParams.Socket), proves it is the hook with hookParams.Token, and
// receives the five output files there (SCM_RIGHTS, in outNames' order);
// its status lines go back on the same connection.

// hookTimeout bounds the hook's own work (configure and pack take seconds).
const hookTimeout = 30 * time.Minute

// hookParams is what the hook is told, in EnvHook.
type hookParams struct {
	Protocol       int    `json:"protocol"`
	Suite          string `json:"suite"`
	Mirror         string `json:"mirror"`
	SecurityMirror string `json:"security_mirror,omitempty"`
	Variant        string `json:"variant,omitempty"`
	RootfsSize     int64  `json:"rootfs_size,omitempty"`
	// Socket is Build's socket (in its work directory); Token the secret
	// that opens it.
	Socket string `json:"socket"`
	Token  string `json:"token"`
	// Agent is the copy of banger-agent in the work directory.
	Agent string `json:"agent"`
	// Scratch is where the hook makes the file systems before it copies
	// them into the output files (Build's temp dir: every uid may write
	// there, the namespace's root included).
	Scratch string `json:"scratch"`
}

// validate checks the parameters as Spec.Validate does.
func (p hookParams) validate() error {
	if p.Protocol != hookProtocol {
		return fmt.Errorf("hook protocol %d, want %d (a stale hook binary?)", p.Protocol, hookProtocol)
	}
	if err := checkConfPath("socket", p.Socket); err != nil {
		return err
	}
	if err := checkConfPath("agent", p.Agent); err != nil {
		return err
	}
	if err := checkConfPath("scratch", p.Scratch); err != nil {
		return err
	}
	if len(p.Token) != 32 {
		return errors.New("no token")
	}
	return Spec{Suite: p.Suite, Mirror: p.Mirror, SecurityMirror: p.SecurityMirror, Variant: p.Variant, RootfsSize: p.RootfsSize}.Validate()
}

// status is one line of the status pipe, hook to Build: a stage that
// begins, the end, or the failure of a stage.
type status struct {
	Stage         string `json:"stage,omitempty"`
	KernelVersion string `json:"kernel_version,omitempty"`
	Initrd        string `json:"initrd,omitempty"`
	Done          bool   `json:"done,omitempty"`
	RootfsSize    int64  `json:"rootfs_size,omitempty"`
	WorkSeedSize  int64  `json:"work_seed_size,omitempty"`
	Error         string `json:"error,omitempty"`
}

// IsHook reports whether this process was started as a build's customize
// hook. cmd/bangerd calls it before parsing flags.
func IsHook() bool { return os.Getenv(EnvHook) != "" }

// RunHook runs the hook and returns the exit status for os.Exit. Its
// output (the build log: mmdebstrap's stderr) says what it did and, on
// failure, why.
func RunHook() int {
	if err := runHook(); err != nil {
		fmt.Fprintf(os.Stderr, "==> hook: FAILED: %v\n", err)
		return 1
	}
	return 0
}

func runHook() error {
	var p hookParams
	if err := json.Unmarshal([]byte(os.Getenv(EnvHook)), &p); err != nil {
		return fmt.Errorf("reading %s: %w", EnvHook, err)
	}
	if err := p.validate(); err != nil {
		return err
	}
	if len(os.Args) != 2 || !filepath.IsAbs(os.Args[1]) || filepath.Clean(os.Args[1]) != os.Args[1] {
		return fmt.Errorf("want the chroot's absolute path as the only argument, got %q", os.Args[1:])
	}
	tree := os.Args[1]
	if os.Getenv(envHookInner) == "" {
		return reexecInMountNS(tree)
	}
	conn, files, err := dialBuild(p.Socket, p.Token)
	if err != nil {
		return err
	}
	defer conn.Close()
	h := &hook{
		path:   tree,
		params: p,
		run:    &runner.Exec{Log: os.Stderr, Env: hookEnv()},
		mnt:    sysMounter{},
		log:    os.Stderr,
		out:    outputs{rootfs: files[0], seed: files[1], kernel: files[2], initrd: files[3], config: files[4]},
	}
	ctx, cancel := context.WithTimeout(context.Background(), hookTimeout)
	defer cancel()
	return h.runSteps(ctx, &statusWriter{w: conn})
}

// dialBuild connects to Build's socket, sends the token and receives the
// output files, each checked to be an empty regular file.
func dialBuild(socket, token string) (*net.UnixConn, []*os.File, error) {
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to the build's socket: %w", err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	fail := func(err error) (*net.UnixConn, []*os.File, error) {
		conn.Close()
		return nil, nil, err
	}
	if _, err := conn.Write([]byte(token + "\n")); err != nil {
		return fail(fmt.Errorf("sending the token: %w", err))
	}
	buf := make([]byte, 16)
	oob := make([]byte, unix.CmsgSpace(4*len(outNames)))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return fail(fmt.Errorf("receiving the output files: %w", err))
	}
	var fds []int
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			if got, err := unix.ParseUnixRights(&m); err == nil {
				fds = append(fds, got...)
			}
		}
	}
	var files []*os.File
	for i, fd := range fds {
		name := fmt.Sprint("fd", fd)
		if i < len(outNames) {
			name = outNames[i]
		}
		files = append(files, os.NewFile(uintptr(fd), name))
	}
	if string(buf[:n]) != "files\n" || len(files) != len(outNames) {
		for _, f := range files {
			f.Close()
		}
		return fail(fmt.Errorf("the build answered %q with %d descriptors, want %d files", buf[:n], len(files), len(outNames)))
	}
	for _, f := range files {
		fi, err := f.Stat()
		if err != nil || !fi.Mode().IsRegular() || fi.Size() != 0 {
			return fail(fmt.Errorf("%s from the build is not an empty regular file", f.Name()))
		}
	}
	conn.SetDeadline(time.Time{})
	return conn, files, nil
}

// reexecInMountNS runs this binary again with the same argument in a new
// mount namespace.
func reexecInMountNS(tree string) error {
	cmd := exec.Command("/proc/self/exe", tree)
	cmd.Env = append(os.Environ(), envHookInner+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return fmt.Errorf("the hook's work failed (%v; its output is above)", err)
		}
		return fmt.Errorf("starting the hook in a new mount namespace: %w", err)
	}
	return nil
}

// hookEnv is the environment of the commands the hook runs: nothing of
// the build's own (its parameters, mmdebstrap's variables).
func hookEnv() []string {
	return []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"LC_ALL=C.UTF-8", "LANG=C.UTF-8", "HOME=/root", "DEBIAN_FRONTEND=noninteractive",
	}
}

// outputs are the files the hook fills, opened by Build.
type outputs struct {
	rootfs, seed, kernel, initrd, config *os.File
}

// hook is the hook's work on one tree.
type hook struct {
	path   string
	tree   *tree
	params hookParams
	run    runner.Runner
	mnt    mounter
	log    io.Writer
	out    outputs
	stage  string
}

// runSteps is configure then pack, each announced on the status pipe
// before it begins; a failure is reported there too. A status line that
// cannot be written (Build gone: bangerd died) stops the hook, and with
// it mmdebstrap, which then removes its temporary chroot.
func (h *hook) runSteps(ctx context.Context, st *statusWriter) error {
	if err := h.mnt.makePrivate(); err != nil {
		return err
	}
	t, err := openTree(h.path)
	if err != nil {
		return err
	}
	defer t.Close()
	h.tree = t

	h.stage = "configure"
	if err := st.send(status{Stage: "configure"}); err != nil {
		return err
	}
	c, err := h.configure(ctx)
	if err != nil {
		return st.fail("configure", err)
	}
	h.stage = "pack"
	if err := st.send(status{Stage: "pack", KernelVersion: c.KernelVersion, Initrd: c.Initrd}); err != nil {
		return err
	}
	p, err := h.pack(ctx, c)
	if err != nil {
		return st.fail("pack", err)
	}
	h.logf("done")
	return st.send(status{Done: true, KernelVersion: c.KernelVersion, Initrd: c.Initrd, RootfsSize: p.RootfsSize, WorkSeedSize: p.WorkSeedSize})
}

// logf writes one "==> stage: ..." header line to the build log.
func (h *hook) logf(format string, args ...any) {
	fmt.Fprintf(h.log, "==> %s: %s\n", h.stage, fmt.Sprintf(format, args...))
}

// cmd runs argv (after a header line; runner.Exec copies the argv and the
// output into the log) and says what failed.
func (h *hook) cmd(ctx context.Context, what string, argv ...string) error {
	h.logf("%s", what)
	if _, err := h.run.Run(ctx, argv[0], argv[1:]...); err != nil {
		h.logf("FAILED: %s: %v", what, err)
		return fmt.Errorf("%s failed: %w", what, err)
	}
	return nil
}

// statusWriter writes status lines.
type statusWriter struct {
	w io.Writer
}

func (s *statusWriter) send(st status) error {
	raw, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if _, err := s.w.Write(append(raw, '\n')); err != nil {
		return fmt.Errorf("reporting to the build (bangerd gone?): %w", err)
	}
	return nil
}

// fail reports err as the failure of stage and returns it.
func (s *statusWriter) fail(stage string, err error) error {
	s.send(status{Stage: stage, Error: err.Error()})
	return fmt.Errorf("%s: %w", stage, err)
}
