package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/rpc"
)

// What a CLI following an operation does when bangerd goes away under it
// (kill -9, a crash, a stop). Operations live in the daemon's memory: a
// daemon started afterwards knows the old one's objects (their rows, which
// it reconciled before answering: VMs whose VMM runs adopted, interrupted
// creates failed, a finished image build registered) but not its
// operations. So the CLI waits for a daemon to answer again (awaitDaemon:
// starting one, for at most daemonReturnTimeout), asks it for the
// operation once (the same daemon still has it when only a connection
// broke: following goes on), and otherwise asks it for the object the
// operation was about and reports where that ended: success in the shape
// the operation would have had, or the object's failure as the error.
// Every line it prints and every error names the op id.

// maxDaemonDeaths bounds how many times one follow waits for a daemon to
// come back.
const maxDaemonDeaths = 5

// endPoll is the pause between two looks at an object still on its way.
const endPoll = 250 * time.Millisecond

// agentAttemptTimeout bounds one look at a VM's guest agent (the daemon's
// own handshake wait is 5 s).
const agentAttemptTimeout = 15 * time.Second

// endFinders finds, for an operation kind, where the object of an
// operation whose daemon died ended. A fork's object is the new VM, made
// by a create from the fork's snapshot: it ends as a create does. A kind
// not listed is reported unavailable once a daemon is back, naming the op
// and its target: an operation's end is only claimed where it can be
// read. vm.restore is one: its VM runs before the restore as after it, so
// a running VM does not tell whether the restore happened; image.warm's
// template cannot be told from one made earlier either.
var endFinders = map[string]func(a *app, ctx context.Context, c *rpc.Client, o api.Operation) (api.Operation, error){
	"vm.create":   (*app).vmEnd,
	"vm.start":    (*app).vmEnd,
	"vm.fork":     (*app).vmEnd,
	"image.build": (*app).imageEnd,
}

// note prints one line about the daemon's absence on stderr, whatever the
// output format (stdout stays the command's result).
func (a *app) note(format string, args ...any) {
	fmt.Fprintf(a.stderr, format+"\n", args...)
}

// outliveDaemon is follow's answer to cause, a status call that found no
// daemon. It returns the operation to go on following (resumed), or the
// operation's final state or error.
func (a *app) outliveDaemon(ctx context.Context, c *rpc.Client, method string, o api.Operation, cause error) (api.Operation, bool, error) {
	for deaths := 1; ; deaths++ {
		a.note("bangerd went away during %s; waiting for it to come back (at most %s)", o.ID, reconnect.timeout)
		start := time.Now()
		pid, err := a.awaitDaemon(ctx, c)
		if err != nil {
			if refused(err) || ctx.Err() != nil {
				return o, false, err
			}
			return o, false, rpc.WithHint(fmt.Errorf("bangerd went away during %s (%v) and did not come back: %w", o.ID, cause, err),
				fmt.Sprintf("start it and read what it says: banger daemon status, banger daemon logs (the log file %s); then see where %s ended: %s",
					a.layout.DaemonLog(), describeTarget(o), showCommand(o)))
		}
		took := humanDuration(time.Since(start))
		var again api.Operation
		err = c.Call(ctx, method, api.OperationStatusParams{OpID: o.ID}, &again)
		switch {
		case err == nil:
			a.note("bangerd answers again (pid %d, after %s) and still has %s: following it", pid, took, o.ID)
			return again, true, nil
		case errors.Is(err, rpc.ErrNotFound): // a new daemon
		case daemonWentAway(ctx, err) && deaths < maxDaemonDeaths:
			cause = err
			continue
		default:
			return o, false, err
		}
		find := endFinders[o.Kind]
		if find == nil {
			return o, false, rpc.WithHint(fmt.Errorf("bangerd went away during %s (%s of %s); the daemon now running (pid %d) does not know the operation, and banger cannot tell how a %s ended: %w",
				o.ID, o.Kind, o.Target, pid, o.Kind, rpc.ErrUnavailable),
				fmt.Sprintf("see what became of %s (%s) and what the old daemon logged: banger daemon logs --op %s", describeTarget(o), showCommand(o), o.ID))
		}
		a.note("a new bangerd answers (pid %d, after %s) and does not know %s: asking it where %s ended", pid, took, o.ID, describeTarget(o))
		final, err := find(a, ctx, c, o)
		var gone *goneAgain
		if errors.As(err, &gone) {
			if deaths < maxDaemonDeaths {
				cause = gone.err
				continue
			}
			err = gone.err
		}
		return final, false, err
	}
}

// goneAgain is a finder's call that found no daemon: the new one went
// away too, and outliveDaemon waits again.
type goneAgain struct{ err error }

func (e *goneAgain) Error() string { return e.err.Error() }
func (e *goneAgain) Unwrap() error { return e.err }

// findErr is err from a finder's call to the daemon, marked goneAgain when
// no daemon answered it.
func findErr(ctx context.Context, err error) error {
	if daemonWentAway(ctx, err) {
		return &goneAgain{err}
	}
	return err
}

// targetKind is what an operation is about, from its kind ("vm.create",
// "image.build"): "vm", "image", or "" for a kind of neither family.
func targetKind(o api.Operation) string {
	switch {
	case strings.HasPrefix(o.Kind, "vm."):
		return "vm"
	case strings.HasPrefix(o.Kind, "image."):
		return "image"
	}
	return ""
}

// describeTarget names an operation's object: "vm NAME", "image NAME".
func describeTarget(o api.Operation) string {
	if k := targetKind(o); k != "" {
		return k + " " + o.Target
	}
	return o.Target
}

// showCommand is the command that shows an operation's object.
func showCommand(o api.Operation) string {
	if k := targetKind(o); k != "" {
		return "banger " + k + " show " + o.Target
	}
	return "banger vm list; banger image list"
}

// succeeded is o ended well with result, as the daemon would have ended it.
func succeeded(o api.Operation, result any, ended time.Time) (api.Operation, error) {
	raw, err := json.Marshal(result)
	if err != nil {
		return o, err
	}
	o.State, o.Error, o.Progress, o.Result = api.OpSucceeded, nil, "", raw
	o.EndedAt = &ended
	return o, nil
}

// vmEnd finds where the VM of a create or start ended. Running means its
// VMM runs and, for an image with the guest agent, that the agent answers
// through the daemon (the create's own last stage): a VM the daemon
// re-adopted mid-boot shows running before its guest is up, so the CLI
// asks the agent until it answers, for at most the VM's boot timeout
// (vm.boot_timeout). A VM still creating, or recorded running while its
// VMM is gone (the daemon's monitor stops it within a second), is on its
// way: looked at again. Any other state (stopped, failed, paused, or one
// this banger does not know) is an end: returned as the error, with the
// VM's last error and the next step (vmEndedError).
func (a *app) vmEnd(ctx context.Context, c *rpc.Client, o api.Operation) (api.Operation, error) {
	name := o.Target
	wait := a.bootTimeout()
	deadline := time.Now().Add(wait)
	for {
		var info api.VMInfo
		if err := c.Call(ctx, api.MethodVMShow, api.VMRef{Name: name}, &info); err != nil {
			if errors.Is(err, rpc.ErrNotFound) {
				again := "create it again: banger vm create --name " + name
				if o.Kind == "vm.fork" {
					again = "fork it again: banger vm fork SOURCE --name " + name
				}
				return o, rpc.WithHint(fmt.Errorf("vm %s is gone: bangerd went away during %s and the daemon now running has no such vm: %w", name, o.ID, err), again)
			}
			return o, findErr(ctx, err)
		}
		var waiting string
		switch st := info.Runtime.State; {
		case st == model.StateRunning && info.Alive && !info.Agent:
			a.note("vm %s is running: its VMM runs (its image has no guest agent to ask further) (%s)", name, o.ID)
			return succeeded(o, info, time.Now().UTC())
		case st == model.StateRunning && info.Alive:
			err := a.agentAnswers(ctx, c, name)
			var nr *agentNotReady
			switch {
			case err == nil:
				a.note("vm %s is running: its guest agent answers (%s)", name, o.ID)
				return succeeded(o, info, time.Now().UTC())
			case errors.As(err, &nr):
			case daemonWentAway(ctx, err):
				return o, findErr(ctx, err)
			}
			waiting = fmt.Sprintf("its guest agent to answer (last: %v)", err)
		case st == model.StateRunning:
			waiting = "the daemon to stop it: its VMM is gone"
		case st == model.StateCreating:
			waiting = "its create to end"
		default:
			return o, a.vmEndedError(o, info)
		}
		if time.Now().After(deadline) {
			return o, rpc.WithHint(fmt.Errorf("vm %s is still %s after bangerd went away during %s: waited %s (vm.boot_timeout) for %s: %w",
				name, info.Runtime.State, o.ID, wait, waiting, rpc.ErrTimeout),
				fmt.Sprintf("see its console log %s (banger vm logs %s); banger vm show %s says where it is now", info.Runtime.ConsolePath, name, name))
		}
		select {
		case <-ctx.Done():
			return o, ctx.Err()
		case <-time.After(endPoll):
		}
	}
}

// vmEndedError is the error of a VM that ended anywhere but running after
// its daemon died: the VM's own last error, unavailable (the operation did
// not complete because its daemon went away; the old daemon's code, had it
// failed the operation itself, went with it), and the next step for the
// state it is in. A state this banger does not know (a daemon newer than
// the CLI) is named as such, with where to look, never guessed at.
func (a *app) vmEndedError(o api.Operation, info api.VMInfo) error {
	st, name := info.Runtime.State, info.Name
	msg := fmt.Sprintf("vm %s ended %s after bangerd went away during %s", name, st, o.ID)
	if !st.Valid() {
		msg = fmt.Sprintf("vm %s is in state %q after bangerd went away during %s, a state this banger does not know", name, st, o.ID)
	}
	if info.Runtime.LastError != "" {
		msg += ": " + info.Runtime.LastError
	}
	var hint string
	switch {
	case st == model.StateFailed && (o.Kind == "vm.create" || o.Kind == "vm.fork"):
		again := "banger vm create --name " + name
		if o.Kind == "vm.fork" {
			again = "banger vm fork SOURCE --name " + name
		}
		hint = fmt.Sprintf("see its console log %s; then delete it and create it again: banger vm delete %s, then %s",
			info.Runtime.ConsolePath, name, again)
	case st == model.StateFailed || st == model.StateStopped:
		hint = fmt.Sprintf("see its console log %s; then start it again: banger vm start %s", info.Runtime.ConsolePath, name)
	case st == model.StatePaused:
		hint = fmt.Sprintf("its VMM runs with the guest's vCPUs stopped: resume it with banger vm resume %s (or remove it: banger vm delete %s)", name, name)
	default:
		hint = fmt.Sprintf("banger vm show %s says where it is now and banger daemon logs --op %s what happened to it; a state banger does not know comes from a bangerd newer than this banger (compare banger version with banger daemon status)",
			name, o.ID)
	}
	return rpc.WithHint(fmt.Errorf("%s: %w", msg, rpc.ErrUnavailable), hint)
}

// agentNotReady is a guest agent that took the stream but did not answer
// hello: a guest still on its way up.
type agentNotReady struct{ err error }

func (e *agentNotReady) Error() string { return "its agent did not answer hello: " + e.err.Error() }
func (e *agentNotReady) Unwrap() error { return e.err }

// agentAnswers asks VM name's guest agent hello through the daemon
// (vm.agent), as the create's last stage does. A refusal of the call is
// the daemon's answer (its error); a stream that took no answer is
// *agentNotReady.
func (a *app) agentAnswers(ctx context.Context, c *rpc.Client, name string) error {
	hctx, cancel := context.WithTimeout(ctx, agentAttemptTimeout)
	defer cancel()
	conn, err := c.CallStream(hctx, api.MethodVMAgent, api.VMAgentParams{Name: name, What: "ready"}, nil)
	if err != nil {
		if hctx.Err() != nil && ctx.Err() == nil {
			return &agentNotReady{err}
		}
		return err
	}
	defer conn.Close()
	if _, err := agent.Hello(hctx, conn); err != nil {
		return &agentNotReady{err}
	}
	return nil
}

// bootTimeout is the config's vm.boot_timeout (the default when the file
// does not load: the daemon would have refused to start on it anyway).
func (a *app) bootTimeout() time.Duration {
	if cfg, err := config.Load(a.layout.ConfigFile); err == nil {
		return cfg.VM.BootTimeout.D()
	}
	return config.Defaults().VM.BootTimeout.D()
}

// imageEnd finds where an image build ended: an image registered under
// its name is the build's (a name being built cannot be taken otherwise;
// the new daemon registers a build that wrote all its files before the
// old one died). None means the build died with its daemon (mmdebstrap
// gets a parent-death signal), which a new build redoes.
func (a *app) imageEnd(ctx context.Context, c *rpc.Client, o api.Operation) (api.Operation, error) {
	var info api.ImageInfo
	err := c.Call(ctx, api.MethodImageShow, api.ImageRef{Name: o.Target}, &info)
	switch {
	case err == nil:
		a.note("image %s is registered: its build ended (%s)", o.Target, o.ID)
		ended := info.CreatedAt
		if ended.Before(o.StartedAt) {
			ended = time.Now().UTC()
		}
		return succeeded(o, info.Image, ended)
	case errors.Is(err, rpc.ErrNotFound):
		hint := "build it again: banger image build --name " + o.Target
		if o.LogPath != "" {
			hint += " (what the old build did is in " + o.LogPath + ")"
		}
		return o, rpc.WithHint(fmt.Errorf("the build of image %s ended with bangerd, which went away during %s: the daemon now running has no such image: %w",
			o.Target, o.ID, rpc.ErrUnavailable), hint)
	}
	return o, findErr(ctx, err)
}
