package cli

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/rpc"
)

// follow polls an operation until it ends, printing each stage as it
// completes and, on a terminal, a live line with the running stage, its
// elapsed time and the latest progress note. It returns the final state;
// a failed operation is returned as its error.
//
// When the daemon goes away under it (killed, crashed, stopped), follow
// outlives it (outliveDaemon): it waits for a daemon to answer again and
// returns where the operation's object really ended, as a final state of
// the same shape (a succeeded operation with the object as its result) or
// as the error that ended it.
func (a *app) follow(ctx context.Context, c *rpc.Client, method string, o api.Operation) (api.Operation, error) {
	tty := a.output == "text" && isTerminal(a.stderr)
	printed := map[string]bool{}
	spin := []string{"|", "/", "-", "\\"}
	n := 0
	clearLine := func() {
		if tty {
			fmt.Fprint(a.stderr, "\r\033[K")
		}
	}
	for {
		for _, s := range o.Stages {
			if printed[s.Name] || (s.State != api.StageDone && s.State != api.StageFailed) {
				continue
			}
			printed[s.Name] = true
			if a.output != "text" {
				continue
			}
			clearLine()
			mark := "ok  "
			if s.State == api.StageFailed {
				mark = "FAIL"
			}
			line := fmt.Sprintf("  %s %-16s %8s", mark, s.Name, humanDuration(time.Duration(s.DurationMS)*time.Millisecond))
			if s.Detail != "" {
				line += "  " + s.Detail
			}
			fmt.Fprintln(a.stderr, line)
		}
		if o.State != api.OpRunning {
			clearLine()
			if o.Error != nil {
				return o, o.Error
			}
			return o, nil
		}
		if tty {
			running := ""
			for _, s := range o.Stages {
				if s.State == api.StageRunning {
					running = s.Name
				}
			}
			note := o.Progress
			if len(note) > 70 {
				note = note[:70] + "..."
			}
			clearLine()
			fmt.Fprintf(a.stderr, "  %s %-16s %8s  %s", spin[n%len(spin)], running, humanDuration(time.Since(o.StartedAt)), strings.ReplaceAll(note, "\r", ""))
			n++
		}
		var next api.Operation
		err := c.Call(ctx, method, api.OperationStatusParams{OpID: o.ID, WaitMS: 500}, &next)
		if err != nil {
			clearLine()
			if !daemonWentAway(ctx, err) {
				return o, err
			}
			var resumed bool
			if next, resumed, err = a.outliveDaemon(ctx, c, method, o, err); !resumed {
				return next, err
			}
		}
		o = next
	}
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
