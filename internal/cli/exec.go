package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
)

type execOptions struct {
	stdin, tty bool
	env        []string
	dir, user  string
	timeout    time.Duration
}

func (a *app) vmExecCommand() *cobra.Command {
	var o execOptions
	cmd := &cobra.Command{
		Use:   "exec NAME [-i] [-t] [-e K=V]... [-w DIR] [-u USER] [--timeout D] -- COMMAND [ARGS...]",
		Short: "Run a command in a running VM through its guest agent, exit with its status",
		Long: `Runs COMMAND (argv, no shell: use sh -c for one) in the VM through its
guest agent, without SSH: stdout and stderr arrive apart, and banger exits
with the command's status (128+N when a signal N ended it). Ctrl-C and the
other terminal signals reach the command. -i passes this stdin; -t gives the
command a terminal of this one's size (resized with it), in raw mode when
stdin is a terminal. The environment is clean (PATH, HOME, USER, LOGNAME,
TERM) plus -e; the directory is the user's home unless -w. Needs an image
of guest contract 3 (built by this banger): older ones say so, use vm ssh.`,
		Example: `  banger vm exec demo -- uname -a
  banger vm exec demo -e GOFLAGS=-mod=mod -w /root/src -- go test ./...
  echo hi | banger vm exec demo -i -- tr a-z A-Z
  banger vm exec demo -it -- bash`,
		Args: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			switch {
			case len(args) == 0:
				return usageErrorf("name the VM: banger vm exec NAME -- COMMAND")
			case dash < 0 && len(args) > 1:
				return usageErrorf("put the command after --: banger vm exec %s -- %s (%q came without it)", args[0], strings.Join(args[1:], " "), args[1:])
			case dash > 1:
				return usageErrorf("unexpected %q before --: banger vm exec NAME -- COMMAND", args[1:dash])
			case len(args) < 2:
				return usageErrorf("give the command after --: banger vm exec %s -- COMMAND", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, kv := range o.env {
				if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
					return usageErrorf("-e %q: want KEY=VALUE", kv)
				}
			}
			code, err := a.agentExec(cmd.Context(), args[0], args[1:], o)
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitError{code: code}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.BoolVarP(&o.stdin, "interactive", "i", false, "pass this process's stdin to the command")
	fl.BoolVarP(&o.tty, "tty", "t", false, "give the command a terminal")
	fl.StringArrayVarP(&o.env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	fl.StringVarP(&o.dir, "workdir", "w", "", "working directory in the guest (default: the user's home)")
	fl.StringVarP(&o.user, "user", "u", "", "user to run as, a name or uid (default: root)")
	fl.DurationVar(&o.timeout, "timeout", 0, "kill the command after this long, e.g. 30s (default: none)")
	return cmd
}

// agentStream opens a stream to the agent of VM name through bangerd (for
// what: exec, cp, port-forward); the caller speaks the agent's frames over
// it and closes it.
func (a *app) agentStream(ctx context.Context, name, what string) (net.Conn, error) {
	c, err := a.client(ctx)
	if err != nil {
		return nil, err
	}
	return c.CallStream(ctx, api.MethodVMAgent, api.VMAgentParams{Name: name, What: what}, nil)
}

// agentExec runs argv in VM name and returns the exit status banger exits
// with.
func (a *app) agentExec(ctx context.Context, name string, argv []string, o execOptions) (int, error) {
	conn, err := a.agentStream(ctx, name, "exec")
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	req := agent.ExecRequest{Argv: argv, Env: o.env, Dir: o.dir, User: o.user, Timeout: o.timeout}
	eio := agent.ExecIO{Stdout: a.stdout, Stderr: a.stderr}
	if o.stdin {
		eio.Stdin = os.Stdin
	}
	signals := make(chan syscall.Signal, 4)
	eio.Signals = signals
	relay := make(chan os.Signal, 4)
	notified := []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT}
	if o.tty {
		rows, cols := termSize(os.Stdout)
		term := os.Getenv("TERM")
		if term == "" {
			term = "xterm"
		}
		req.TTY = &agent.TTY{Rows: rows, Cols: cols, Term: term}
		resize := make(chan agent.WinSize, 1)
		eio.Resize = resize
		notified = append(notified, syscall.SIGWINCH)
		if restore, err := makeRaw(os.Stdin); err == nil {
			// Ctrl-C is a byte to the guest's terminal now.
			defer restore()
		}
		go func() {
			for s := range relay {
				if s == syscall.SIGWINCH {
					r, c := termSize(os.Stdout)
					select {
					case resize <- agent.WinSize{Rows: r, Cols: c}:
					default:
					}
					continue
				}
				signals <- s.(syscall.Signal)
			}
		}()
	} else {
		go func() {
			for s := range relay {
				signals <- s.(syscall.Signal)
			}
		}()
	}
	signal.Notify(relay, notified...)
	defer signal.Stop(relay)

	st, err := a.execIn(ctx, conn, name, req, eio)
	if err != nil {
		return 0, err
	}
	switch {
	case st.TimedOut:
		fmt.Fprintf(a.stderr, "banger: %s in %s killed after --timeout %s\n", argv[0], name, o.timeout)
		return 128 + st.Signal, nil
	case st.Signal != 0:
		return 128 + st.Signal, nil
	}
	return st.Code, nil
}

// execIn runs req over conn, a stream to VM name's agent, and gives an
// agent's refusal its code and a next step.
func (a *app) execIn(ctx context.Context, conn net.Conn, name string, req agent.ExecRequest, eio agent.ExecIO) (agent.ExitStatus, error) {
	st, err := agent.Exec(ctx, conn, req, eio)
	if err != nil {
		var re *agent.RemoteError
		if errors.As(err, &re) {
			return st, rpc.WithHint(fmt.Errorf("vm %s: running %s: %w", name, req.Argv[0], re), execHint(re, name))
		}
		return st, fmt.Errorf("vm %s: the agent stream failed: %w", name, err)
	}
	return st, nil
}

func execHint(re *agent.RemoteError, name string) string {
	if errors.Is(re, rpc.ErrNotFound) {
		return "check the command, user and directory exist in the guest: banger vm exec " + name + " -- ls -l PATH"
	}
	return "see the VM's console and journal: banger vm logs " + name
}

// termSize is f's terminal size, 24x80 when it is none.
func termSize(f *os.File) (rows, cols uint16) {
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil || ws.Row == 0 || ws.Col == 0 {
		return 24, 80
	}
	return ws.Row, ws.Col
}

// makeRaw puts terminal f in raw mode and returns the function that puts
// it back; an error when f is no terminal.
func makeRaw(f *os.File) (func(), error) {
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &raw); err != nil {
		return nil, err
	}
	return func() { unix.IoctlSetTermios(fd, unix.TCSETS, old) }, nil
}
