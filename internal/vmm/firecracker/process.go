package firecracker

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/runner"
)

// process is a launched Firecracker.
type process struct {
	pid  int
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // how it exited; set before done is closed
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// status describes how the process exited; call it once done is closed.
func (p *process) status() string {
	if p.err == nil {
		return "exit status 0"
	}
	return p.err.Error()
}

// kill kills the process unless it has exited already, and waits a little
// for it to be reaped. The pid cannot have been reused meanwhile: the
// process is our child and is only reaped by its own Wait.
func (p *process) kill() {
	if p.exited() {
		return
	}
	_ = syscall.Kill(p.pid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(2 * time.Second):
	}
}

// launch starts argv in dir, in its own session (so it outlives bangerd), stdin
// from /dev/null, stdout and stderr appended to logPath after a line
// naming the command. A goroutine reaps it if it exits while bangerd runs.
func launch(argv []string, dir, logPath string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	fmt.Fprintf(logf, "==> %s %s\n", time.Now().UTC().Format(time.RFC3339), runner.Argv(argv[0], argv[1:]...))

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}
