package agentd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/rpc"
)

// execUser is who an exec runs as.
type execUser struct {
	name, home string
	uid, gid   uint32
	groups     []uint32
}

// lookupUser finds name (a user name or a uid) in the guest's /etc/passwd
// and /etc/group; "" is the agent's own user (root in the guest).
func lookupUser(name string) (execUser, error) {
	var u *user.User
	var err error
	if name == "" {
		u, err = user.Current()
	} else if u, err = user.Lookup(name); err != nil {
		if _, nerr := strconv.ParseUint(name, 10, 32); nerr == nil {
			u, err = user.LookupId(name)
		}
	}
	if err != nil {
		var unknown user.UnknownUserError
		var unknownID user.UnknownUserIdError
		if errors.As(err, &unknown) || errors.As(err, &unknownID) {
			return execUser{}, rpc.Errorf(rpc.ErrNotFound, "no user %q in the guest", name)
		}
		return execUser{}, fmt.Errorf("looking up user %q: %w", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return execUser{}, fmt.Errorf("user %q has uid %q and gid %q", name, u.Uid, u.Gid)
	}
	eu := execUser{name: u.Username, home: u.HomeDir, uid: uint32(uid), gid: uint32(gid)}
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil {
				eu.groups = append(eu.groups, uint32(g))
			}
		}
	}
	return eu, nil
}

// lookPath finds file in the directories of path (the command's PATH, not
// the agent's).
func lookPath(file, path string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" || !filepath.IsAbs(dir) {
			continue
		}
		p := filepath.Join(dir, file)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", rpc.Errorf(rpc.ErrNotFound, "%s: command not found (PATH %s)", file, path)
}

// buildCmd turns an exec request into a command: the user, a clean
// environment, the working directory and argv[0] looked up in the
// command's PATH.
func buildCmd(req agent.Request) (*exec.Cmd, error) {
	u, err := lookupUser(req.User)
	if err != nil {
		return nil, err
	}
	path := "/usr/local/bin:/usr/bin:/bin"
	if u.uid == 0 {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	term := "dumb"
	if req.TTY != nil {
		term = req.TTY.Term
		if term == "" {
			term = "xterm-256color"
		}
	}
	env := append([]string{"PATH=" + path, "HOME=" + u.home, "USER=" + u.name, "LOGNAME=" + u.name, "TERM=" + term}, req.Env...)
	for _, e := range req.Env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			path = v
		}
	}
	dir := req.Dir
	if dir == "" {
		dir = "/"
		if fi, err := os.Stat(u.home); err == nil && fi.IsDir() {
			dir = u.home
		}
	} else if fi, err := os.Stat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, rpc.Errorf(rpc.ErrNotFound, "directory %s does not exist in the guest", dir)
		}
		return nil, err
	} else if !fi.IsDir() {
		return nil, rpc.Errorf(rpc.ErrBadRequest, "%s is not a directory", dir)
	}
	bin, err := lookPath(req.Argv[0], path)
	if err != nil {
		return nil, err
	}
	attr := &syscall.SysProcAttr{Setsid: true}
	if self := uint32(os.Getuid()); u.uid != self || u.gid != uint32(os.Getgid()) || self == 0 {
		if self != 0 {
			return nil, rpc.Errorf(rpc.ErrForbidden, "the agent runs as uid %d and cannot run commands as %s", self, u.name)
		}
		attr.Credential = &syscall.Credential{Uid: u.uid, Gid: u.gid, Groups: u.groups}
	}
	return &exec.Cmd{Path: bin, Args: req.Argv, Env: env, Dir: dir, SysProcAttr: attr}, nil
}

// startErr classifies a failure to start the command.
func startErr(err error, argv0 string) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return rpc.Errorf(rpc.ErrNotFound, "starting %s: %v", argv0, err)
	case errors.Is(err, fs.ErrPermission):
		return rpc.Errorf(rpc.ErrForbidden, "starting %s: %v", argv0, err)
	}
	return fmt.Errorf("starting %s: %w", argv0, err)
}

// openPTY opens a pseudo-terminal of the requested size. The master is
// made non-blocking (creack/pty leaves it blocking), so that closing it
// ends a pending read.
func openPTY(t *agent.TTY) (master, tty *os.File, err error) {
	m, tty, err := pty.Open()
	if err != nil {
		return nil, nil, err
	}
	if t.Rows > 0 && t.Cols > 0 {
		if err := pty.Setsize(tty, &pty.Winsize{Rows: t.Rows, Cols: t.Cols}); err != nil {
			m.Close()
			tty.Close()
			return nil, nil, err
		}
	}
	fd, err := unix.FcntlInt(m.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	m.Close()
	if err == nil {
		err = unix.SetNonblock(fd, true)
	}
	if err != nil {
		tty.Close()
		return nil, nil, fmt.Errorf("pty master: %w", err)
	}
	return os.NewFile(uintptr(fd), "/dev/ptmx"), tty, nil
}

func setWinsize(master *os.File, rows, cols uint16) error {
	rc, err := master.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	}); err != nil {
		return err
	}
	return ierr
}

// foreground is the tty's foreground process group, or 0.
func foreground(master *os.File) int {
	rc, err := master.SyscallConn()
	if err != nil {
		return 0
	}
	pgrp := 0
	rc.Control(func(fd uintptr) {
		if p, err := unix.IoctlGetInt(int(fd), unix.TIOCGPGRP); err == nil {
			pgrp = p
		}
	})
	return pgrp
}

// growPipe raises a pipe's buffer to 1 MiB (best effort) for throughput.
func growPipe(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 1<<20) })
	}
}

// stdinChunk is stdin from the host; eof closes the process's stdin.
type stdinChunk struct {
	data []byte
	eof  bool
}

// exec runs a command for the stream (docs/agent.md, exec).
func (s *Server) exec(ctx context.Context, st net.Conn, req agent.Request) ([]any, error) {
	attrs := []any{"argv0", req.Argv[0]}
	cmd, err := buildCmd(req)
	if err != nil {
		return attrs, answer(st, nil, err)
	}
	var (
		master          *os.File // with a tty
		outR, errR, inW *os.File // without
		childEnds       []*os.File
	)
	closeAll := func(fs ...*os.File) {
		for _, f := range fs {
			if f != nil {
				f.Close()
			}
		}
	}
	if req.TTY != nil {
		var tty *os.File
		if master, tty, err = openPTY(req.TTY); err != nil {
			return attrs, answer(st, nil, fmt.Errorf("opening a pty: %w", err))
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0 // the child's stdin
		childEnds = append(childEnds, tty)
	} else {
		var outW, errW *os.File
		var inR *os.File
		if outR, outW, err = os.Pipe(); err == nil {
			if errR, errW, err = os.Pipe(); err == nil && req.Stdin {
				inR, inW, err = os.Pipe()
			}
		}
		childEnds = append(childEnds, outW, errW, inR)
		if err != nil {
			closeAll(append(childEnds, outR, errR, inW)...)
			return attrs, answer(st, nil, fmt.Errorf("making pipes: %w", err))
		}
		growPipe(outR)
		growPipe(errR)
		cmd.Stdout, cmd.Stderr = outW, errW
		if inR != nil {
			cmd.Stdin = inR
		}
	}
	if err := cmd.Start(); err != nil {
		closeAll(append(childEnds, master, outR, errR, inW)...)
		return attrs, answer(st, nil, startErr(err, req.Argv[0]))
	}
	closeAll(childEnds...)
	pid := cmd.Process.Pid
	out := &frameOut{w: st}
	out.msg(agent.Event{Started: &agent.Started{PID: pid}})

	// Signals go to the group until the process is reaped (its pid, the
	// group's id, stays reserved until then).
	var sigMu sync.Mutex
	reaped := false
	signal := func(sig syscall.Signal, all bool) {
		sigMu.Lock()
		defer sigMu.Unlock()
		if reaped {
			return
		}
		target := pid
		if master != nil {
			if fg := foreground(master); fg > 0 {
				target = fg
				if all && fg != pid {
					syscall.Kill(-fg, sig)
					target = pid
				}
			}
		}
		syscall.Kill(-target, sig)
	}
	var timedOut atomic.Bool
	if req.TimeoutMS > 0 {
		t := time.AfterFunc(time.Duration(req.TimeoutMS)*time.Millisecond, func() {
			timedOut.Store(true)
			signal(syscall.SIGKILL, true)
		})
		defer t.Stop()
	}

	// Outputs.
	var outputs sync.WaitGroup
	pump := func(r *os.File, kind byte) {
		defer outputs.Done()
		buf := make([]byte, 256<<10)
		for {
			n, err := r.Read(buf)
			if n > 0 {
				if out.frame(kind, buf[:n]) != nil {
					r.Close() // the host is gone; the process gets EPIPE
					return
				}
			}
			if err != nil { // EOF, or EIO from a pty whose last slave closed
				out.frame(kind, nil)
				return
			}
		}
	}
	if master != nil {
		outputs.Add(1)
		go pump(master, agent.KindStdout)
	} else {
		outputs.Add(2)
		go pump(outR, agent.KindStdout)
		go pump(errR, agent.KindStderr)
	}

	// Stdin, written by its own goroutine so that a process that does not
	// read it never stops the control messages behind it for long.
	done := make(chan struct{})
	stdin := make(chan stdinChunk, 16)
	var sink io.Writer
	switch {
	case master != nil:
		sink = master
	case inW != nil:
		sink = inW
	}
	go func() {
		for {
			select {
			case <-done:
				return
			case c := <-stdin:
				if sink == nil {
					continue
				}
				if c.eof {
					if master != nil {
						master.Write([]byte{4}) // ^D: the tty's EOF
					} else {
						inW.Close()
					}
					sink = nil
					continue
				}
				if _, err := sink.Write(c.data); err != nil {
					sink = nil // the process closed its stdin
				}
			}
		}
	}()

	// The host's frames. Its stream closing before the exit is the host
	// abandoning the exec.
	protoErr := make(chan error, 1) // the host's first protocol error
	fail := func(err error) {
		select {
		case protoErr <- err:
		default:
		}
		signal(syscall.SIGKILL, true)
	}
	hostGone := make(chan struct{})
	go func() {
		defer close(hostGone)
		buf := make([]byte, 64<<10)
		for {
			k, p, err := agent.ReadFrame(st, buf)
			if err != nil {
				select {
				case <-done:
				default:
					signal(syscall.SIGKILL, true)
					// An escaped process may hold the outputs: stop reading them.
					closeAll(master, outR, errR)
				}
				return
			}
			switch k {
			case agent.KindStdin:
				c := stdinChunk{eof: len(p) == 0}
				if !c.eof {
					c.data = append([]byte(nil), p...)
				}
				select {
				case stdin <- c:
				case <-done:
				}
			case agent.KindMsg:
				c, err := agent.DecodeControl(p)
				if err != nil {
					fail(err)
					continue // read on until the host closes
				}
				if c.Resize != nil && master != nil {
					setWinsize(master, c.Resize.Rows, c.Resize.Cols)
				}
				if c.Signal != 0 {
					signal(syscall.Signal(c.Signal), false)
				}
			default:
				fail(rpc.Errorf(rpc.ErrBadRequest, "exec: a %q frame from the host", k))
			}
		}
	}()

	outputs.Wait()
	werr := cmd.Wait()
	sigMu.Lock()
	reaped = true
	sigMu.Unlock()
	close(done)
	closeAll(master, outR, errR, inW)

	select {
	case <-hostGone:
		return attrs, errors.New("the host closed the stream before the exit")
	default:
	}
	select {
	case err := <-protoErr:
		return attrs, answer(out, nil, err)
	default:
	}
	var ee *exec.ExitError
	if werr != nil && !errors.As(werr, &ee) {
		return attrs, answer(out, nil, fmt.Errorf("waiting for %s: %w", req.Argv[0], werr))
	}
	ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
	status := agent.ExitStatus{Code: ws.ExitStatus()}
	if ws.Signaled() {
		status = agent.ExitStatus{Signal: int(ws.Signal()), TimedOut: timedOut.Load()}
	}
	attrs = append(attrs, "exit_code", status.Code, "exit_signal", status.Signal)
	return attrs, out.msg(agent.Event{Exit: &status})
}

// frameOut serialises the frames of one stream's writers.
type frameOut struct {
	mu sync.Mutex
	w  io.Writer
}

func (f *frameOut) frame(kind byte, p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return agent.WriteFrame(f.w, kind, p)
}

func (f *frameOut) msg(v any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return agent.WriteMsg(f.w, v)
}

// Write lets answer write through the lock.
func (f *frameOut) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.w.Write(p)
}
