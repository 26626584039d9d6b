// Package runner is the one door through which banger runs external
// commands (losetup, dmsetup, mke2fs, e2fsck, resize2fs, debootstrap, ...).
// Commands are argv only: there is no shell anywhere. Tests swap in a Fake
// that records every call and fails on any it was not told to expect.
package runner

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
)

// Runner runs a command and returns its standard output.
type Runner interface {
	// Run runs name with args. Standard output is returned; on failure the
	// error carries the argv, the exit status and the tail of stderr.
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// Exec is the real Runner. When Log is set, the combined stdout and stderr
// of each command, preceded by its argv, are also copied there (an image's
// build.log, say).
type Exec struct {
	Log io.Writer
	// Env, when set, replaces the environment of commands.
	Env []string
}

var _ Runner = (*Exec)(nil)

// Run implements Runner.
func (e *Exec) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if e.Env != nil {
		cmd.Env = e.Env
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if e.Log != nil {
		fmt.Fprintf(e.Log, "$ %s\n", Argv(name, args...))
		cmd.Stdout = io.MultiWriter(&stdout, e.Log)
		cmd.Stderr = io.MultiWriter(&stderr, e.Log)
	}
	err := cmd.Run()
	if err != nil {
		return stdout.Bytes(), &Error{Argv: append([]string{name}, args...), Err: err, Stderr: tail(stderr.String(), 2048)}
	}
	return stdout.Bytes(), nil
}

// Error is a failed command.
type Error struct {
	Argv   []string
	Err    error
	Stderr string
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("%s: %v", Argv(e.Argv[0], e.Argv[1:]...), e.Err)
	if s := strings.TrimSpace(e.Stderr); s != "" {
		msg += ": " + s
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// Argv renders a command for logs and errors, quoting arguments that need it.
// It is for humans only: nothing ever feeds it to a shell.
func Argv(name string, args ...string) string {
	parts := make([]string, 0, len(args)+1)
	for _, a := range append([]string{name}, args...) {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`") {
			a = fmt.Sprintf("%q", a)
		}
		parts = append(parts, a)
	}
	return strings.Join(parts, " ")
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
