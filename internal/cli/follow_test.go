package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/rpc"
)

// The CLI following an operation through its daemon's death, against a
// fake bangerd served in this process over the real unix socket the CLI
// uses (rpc.Server, the CLI's client with its peer check). Killing the fake
// closes its listener and every connection at once and leaves the socket
// file behind, as a kill -9 does; a restarted fake keeps the objects (the
// store) and forgets the operations (memory), as a new bangerd does.

// fakeWorld is what outlives a fake daemon: its VMs and images.
type fakeWorld struct {
	mu     sync.Mutex
	vms    map[string][]api.VMInfo // vm.show answers in turn; the last one stays
	images map[string]api.ImageInfo
	// agentRefusals is how many vm.agent calls are refused (a guest still
	// booting) before the agent answers; -1 refuses them all.
	agentRefusals int
	agentCalls    int
}

// refuseAgent sets agentRefusals; calls is agentCalls. The fakes' server
// goroutines read and write both under mu: the socket between the CLI
// and a fake orders nothing the race detector sees.
func (w *fakeWorld) refuseAgent(n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.agentRefusals = n
}

func (w *fakeWorld) calls() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.agentCalls
}

func (w *fakeWorld) setVM(name string, infos ...api.VMInfo) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.vms[name] = infos
}

func (w *fakeWorld) showVM(name string) (api.VMInfo, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	seq := w.vms[name]
	if len(seq) == 0 {
		return api.VMInfo{}, false
	}
	if len(seq) > 1 {
		w.vms[name] = seq[1:]
	}
	return seq[0], true
}

// dyingDaemon is one incarnation of a fake bangerd.
type dyingDaemon struct {
	pid       int
	world     *fakeWorld
	mu        sync.Mutex
	ops       map[string]api.Operation
	conns     map[net.Conn]bool
	ln        *net.UnixListener
	cancel    context.CancelFunc
	done      chan struct{}
	following chan string // an op id, each time a status call waits
	// finishOn, when set, is the status answer after a broken connection
	// (breakConns): the same daemon, still knowing the operation.
	finishOn func(api.Operation) api.Operation
	broken   bool
}

func vmInfo(name string, state model.VMState, alive, withAgent bool, lastErr string) api.VMInfo {
	return api.VMInfo{VM: model.VM{ID: "0123456789abcdef", Name: name, Image: "default", VMM: "qemu",
		Spec:    model.VMSpec{VCPUs: 1, MemoryMiB: 256, DiskSizeBytes: 1 << 30},
		Runtime: model.VMRuntime{State: state, GuestIP: "10.0.0.2", ConsolePath: "/state/vms/x/console.log", LastError: lastErr}},
		Alive: alive, Agent: withAgent}
}

// startFake serves a fake bangerd with pid on the CLI's socket, replacing
// a stale socket file as bangerd does.
func startFake(t *testing.T, world *fakeWorld, pid int) *dyingDaemon {
	t.Helper()
	l, err := paths.Default()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.EnsureRuntime(); err != nil {
		t.Fatal(err)
	}
	sock := l.DaemonSocket()
	os.Remove(sock)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false) // a killed daemon leaves its socket file
	f := &dyingDaemon{pid: pid, world: world, ops: map[string]api.Operation{}, conns: map[net.Conn]bool{},
		ln: ln, done: make(chan struct{}), following: make(chan string, 64)}
	srv := rpc.NewServer("", slog.New(slog.NewTextHandler(io.Discard, nil)))
	rpc.Register(srv, api.MethodDaemonPing, func(context.Context, struct{}) (api.Ping, error) { return api.Ping{PID: pid}, nil })
	begin := func(kind string) func(ctx context.Context, target, logPath string) (api.Operation, error) {
		return func(ctx context.Context, target, logPath string) (api.Operation, error) {
			o := api.Operation{ID: op.From(ctx), Kind: kind, Target: target, State: api.OpRunning, LogPath: logPath,
				StartedAt: time.Now().UTC(), Stages: []api.Stage{{Name: "allocate", State: api.StageDone, DurationMS: 3}, {Name: "vmm start", State: api.StageRunning}}}
			f.mu.Lock()
			f.ops[o.ID] = o
			f.mu.Unlock()
			return o, nil
		}
	}
	rpc.Register(srv, api.MethodVMCreateBegin, func(ctx context.Context, p api.VMCreateParams) (api.Operation, error) {
		return begin("vm.create")(ctx, p.Name, "")
	})
	rpc.Register(srv, api.MethodVMStartBegin, func(ctx context.Context, p api.VMRef) (api.Operation, error) {
		return begin("vm.start")(ctx, p.Name, "")
	})
	rpc.Register(srv, api.MethodVMForkBegin, func(ctx context.Context, p api.VMForkParams) (api.Operation, error) {
		return begin("vm.fork")(ctx, p.New, "")
	})
	rpc.Register(srv, api.MethodVMRestoreBegin, func(ctx context.Context, p api.VMRestoreParams) (api.Operation, error) {
		return begin("vm.restore")(ctx, p.Name, "")
	})
	rpc.Register(srv, api.MethodImageBuildBegin, func(ctx context.Context, p api.ImageBuildParams) (api.Operation, error) {
		return begin("image.build")(ctx, p.Name, "/state/images/"+p.Name+"/build.log")
	})
	status := func(ctx context.Context, p api.OperationStatusParams) (api.Operation, error) {
		f.mu.Lock()
		o, ok := f.ops[p.OpID]
		broken, finish := f.broken, f.finishOn
		f.mu.Unlock()
		if !ok {
			return o, rpc.WithHint(rpc.Errorf(rpc.ErrNotFound, "operation %s", p.OpID), "not across daemon restarts")
		}
		if broken && finish != nil {
			return finish(o), nil
		}
		f.following <- o.ID
		<-ctx.Done() // until the fake dies, or its connection breaks
		return o, nil
	}
	rpc.Register(srv, api.MethodVMCreateStatus, status)
	rpc.Register(srv, api.MethodVMStartStatus, status)
	rpc.Register(srv, api.MethodImageBuildStatus, status)
	rpc.Register(srv, api.MethodVMShow, func(_ context.Context, p api.VMRef) (api.VMInfo, error) {
		if info, ok := world.showVM(p.Name); ok {
			return info, nil
		}
		return api.VMInfo{}, rpc.Errorf(rpc.ErrNotFound, "vm %q", p.Name)
	})
	rpc.Register(srv, api.MethodImageShow, func(_ context.Context, p api.ImageRef) (api.ImageInfo, error) {
		world.mu.Lock()
		defer world.mu.Unlock()
		if img, ok := world.images[p.Name]; ok {
			return img, nil
		}
		return api.ImageInfo{}, rpc.Errorf(rpc.ErrNotFound, "image %q", p.Name)
	})
	rpc.Register(srv, api.MethodVMAgent, func(ctx context.Context, p api.VMAgentParams) (api.VMAgentResult, error) {
		world.mu.Lock()
		world.agentCalls++
		refuse := world.agentRefusals != 0
		if world.agentRefusals > 0 {
			world.agentRefusals--
		}
		world.mu.Unlock()
		if refuse {
			return api.VMAgentResult{}, rpc.Errorf(rpc.ErrUnavailable, "connecting to the agent of %s: the guest is booting", p.Name)
		}
		err := rpc.Upgrade(ctx, func(conn net.Conn) {
			if conn == nil {
				return
			}
			_, payload, err := agent.ReadFrame(conn, nil)
			if err != nil {
				return
			}
			if req, err := agent.DecodeRequest(payload); err == nil && req.Op == agent.OpHello {
				agent.WriteOK(conn, agent.HelloResult{Version: 1, Release: "fake"})
			}
		})
		return api.VMAgentResult{Name: p.Name}, err
	})
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	go func() {
		defer close(f.done)
		_ = srv.Serve(ctx, trackingListener{f})
	}()
	t.Cleanup(f.kill)
	return f
}

// trackingListener records every connection, so kill can drop them.
type trackingListener struct{ f *dyingDaemon }

func (l trackingListener) Accept() (net.Conn, error) {
	c, err := l.f.ln.AcceptUnix()
	if err != nil {
		return nil, err
	}
	l.f.mu.Lock()
	l.f.conns[c] = true
	l.f.mu.Unlock()
	return c, nil
}
func (l trackingListener) Close() error   { return l.f.ln.Close() }
func (l trackingListener) Addr() net.Addr { return l.f.ln.Addr() }

// breakConns closes every open connection, the daemon serving on: a
// connection lost, not a daemon.
func (f *dyingDaemon) breakConns() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.broken = true
	for c := range f.conns {
		c.Close()
		delete(f.conns, c)
	}
}

// kill is a kill -9: the listener and every connection closed at once,
// the socket file left behind.
func (f *dyingDaemon) kill() {
	f.mu.Lock()
	select {
	case <-f.done:
		f.mu.Unlock()
		return
	default:
	}
	f.ln.Close()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.cancel()
	<-f.done
}

// followRun is one in-process run of the real CLI whose daemon dies while
// it follows its operation. die is called, with the first daemon, once a
// status call is waiting; restart says what the CLI's start of a daemon
// does (nil: the real start).
type followRun struct {
	args    []string
	world   *fakeWorld
	die     func(t *testing.T, f *dyingDaemon)
	restart func(t *testing.T, world *fakeWorld) error
}

type followResult struct {
	code           int
	stdout, stderr string
	opID           string
	starts         int
	took           time.Duration
}

func (r followResult) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

func runFollow(t *testing.T, fr followRun) followResult {
	t.Helper()
	var res followResult
	saved := reconnect
	t.Cleanup(func() { reconnect = saved })
	if fr.restart != nil {
		reconnect.start = func(*app, context.Context, *rpc.Client) error {
			res.starts++
			return fr.restart(t, fr.world)
		}
	}
	f := startFake(t, fr.world, 1001)
	var out, errb bytes.Buffer
	a := &app{stdout: &out, stderr: &errb, opID: op.New()}
	res.opID = a.opID
	done := make(chan int, 1)
	start := time.Now()
	go func() { done <- a.execute(a.rootCommand(), fr.args) }()
	select {
	case id := <-f.following:
		if id != a.opID {
			t.Errorf("following %s, want the invocation's %s", id, a.opID)
		}
	case code := <-done:
		t.Fatalf("the CLI ended (exit %d) before following: %s %s", code, out.String(), errb.String())
	case <-time.After(10 * time.Second):
		t.Fatal("the CLI never followed its operation")
	}
	fr.die(t, f)
	select {
	case res.code = <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the CLI did not end 30s after its daemon died")
	}
	res.took = time.Since(start)
	res.stdout, res.stderr = out.String(), errb.String()
	t.Logf("%s", res)
	// One death, one wait: the CLI never takes its own verdict for the
	// daemon gone again.
	if n := strings.Count(res.stderr, "bangerd went away during "+res.opID+"; waiting"); n != 1 {
		t.Errorf("%d waits for the daemon, want 1:\n%s", n, res.stderr)
	}
	return res
}

// isolateFollow is isolateCLI with a runtime directory of a short path (a
// socket path has 108 bytes); it returns the marker the CLI's real start
// of a daemon leaves.
func isolateFollow(t *testing.T) string {
	t.Helper()
	marker := isolateCLI(t)
	rt, err := os.MkdirTemp("", "bgf-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(rt) })
	t.Setenv("BANGER_RUNTIME_DIR", filepath.Join(rt, "run"))
	return marker
}

func newWorld() *fakeWorld {
	return &fakeWorld{vms: map[string][]api.VMInfo{}, images: map[string]api.ImageInfo{}}
}

// restartFake is the CLI's start of a daemon answered by a new fake.
func restartFake(t *testing.T, world *fakeWorld) error {
	startFake(t, world, 2002)
	return nil
}

// wantLines checks that stderr holds each line fragment, each on a line
// that names the op id.
func wantLines(t *testing.T, r followResult, frags ...string) {
	t.Helper()
	for _, frag := range frags {
		found := false
		for _, line := range strings.Split(r.stderr, "\n") {
			if strings.Contains(line, frag) {
				found = true
				if !strings.Contains(line, r.opID) {
					t.Errorf("line without the op id %s: %q", r.opID, line)
				}
			}
		}
		if !found {
			t.Errorf("stderr lacks %q:\n%s", frag, r.stderr)
		}
	}
}

var stateRunning = regexp.MustCompile(`(?m)^state\s+running$`)

// A create whose daemon is killed mid-boot: the CLI says so, starts a
// daemon, finds the VM re-adopted as running but its guest still booting
// (the VMM gone from view once, the agent refusing twice) and waits, then
// exits 0 printing the VM as create does.
func TestFollowOutlivesDaemonVMRunning(t *testing.T) {
	isolateFollow(t)
	world := newWorld()
	r := runFollow(t, followRun{
		args:  []string{"vm", "create", "--name", "k1"},
		world: world,
		die: func(t *testing.T, f *dyingDaemon) {
			world.setVM("k1",
				vmInfo("k1", model.StateRunning, false, true, ""), // the monitor's second: on its way
				vmInfo("k1", model.StateRunning, true, true, ""))
			world.refuseAgent(2)
			f.kill()
		},
		restart: restartFake,
	})
	if r.code != ExitOK {
		t.Fatalf("%s", r)
	}
	if !stateRunning.MatchString(r.stdout) || !regexp.MustCompile(`(?m)^name\s+k1$`).MatchString(r.stdout) {
		t.Errorf("stdout is not the VM shown running:\n%s", r.stdout)
	}
	if r.starts != 1 {
		t.Errorf("%d daemon starts, want 1", r.starts)
	}
	if world.calls() != 3 {
		t.Errorf("%d agent calls, want 3 (two refused while booting, then hello)", world.calls())
	}
	wantLines(t, r,
		"bangerd went away during "+r.opID+"; waiting for it to come back (at most "+daemonReturnTimeout.String()+")",
		"a new bangerd answers (pid 2002, after ",
		"asking it where vm k1 ended",
		"vm k1 is running: its guest agent answers ("+r.opID+")")
}

// A create whose VM the new daemon's reconcile failed: the VM's error, the
// code unavailable (exit 5), the op id and the next step.
func TestFollowOutlivesDaemonVMFailed(t *testing.T) {
	isolateFollow(t)
	world := newWorld()
	r := runFollow(t, followRun{
		args:  []string{"vm", "create", "--name", "k1"},
		world: world,
		die: func(t *testing.T, f *dyingDaemon) {
			world.setVM("k1", vmInfo("k1", model.StateFailed, false, true, "create interrupted by a bangerd restart; delete it and create it again"))
			f.kill()
		},
		restart: restartFake,
	})
	if r.code != ExitUnavailable {
		t.Fatalf("exit %d, want %d:\n%s", r.code, ExitUnavailable, r)
	}
	for _, want := range []string{
		"banger: vm k1 ended failed after bangerd went away during " + r.opID + ": create interrupted by a bangerd restart",
		"code:  unavailable",
		"op id: " + r.opID,
		"hint:  see its console log /state/vms/x/console.log; then delete it and create it again: banger vm delete k1",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	if r.stdout != "" {
		t.Errorf("stdout: %q", r.stdout)
	}
	if world.calls() != 0 {
		t.Errorf("asked a failed VM's agent %d times", world.calls())
	}
}

// A start whose VM the new daemon stopped (its VMM died meanwhile), and a
// start that came through on an image without the agent.
func TestFollowOutlivesDaemonVMStart(t *testing.T) {
	isolateFollow(t)
	world := newWorld()
	r := runFollow(t, followRun{
		args:  []string{"vm", "start", "k2"},
		world: world,
		die: func(t *testing.T, f *dyingDaemon) {
			world.setVM("k2", vmInfo("k2", model.StateStopped, false, true, "the VMM exited while bangerd was not running"))
			f.kill()
		},
		restart: restartFake,
	})
	if r.code != ExitUnavailable || !strings.Contains(r.stderr, "vm k2 ended stopped after bangerd went away during "+r.opID+": the VMM exited") ||
		!strings.Contains(r.stderr, "banger vm start k2") {
		t.Fatalf("stopped: %s", r)
	}

	world = newWorld()
	r = runFollow(t, followRun{
		args:  []string{"vm", "start", "k3"},
		world: world,
		die: func(t *testing.T, f *dyingDaemon) {
			world.setVM("k3", vmInfo("k3", model.StateRunning, true, false, ""))
			f.kill()
		},
		restart: restartFake,
	})
	if r.code != ExitOK || !stateRunning.MatchString(r.stdout) || world.calls() != 0 {
		t.Fatalf("running without an agent: %s (agent calls %d)", r, world.calls())
	}
	wantLines(t, r, "vm k3 is running: its VMM runs")
}

// No daemon comes back: the real start runs (BANGERD, a script that only
// leaves a marker), the wait ends at its bound, and the CLI exits 5 with
// the op id and what to do.
func TestFollowOutlivesDaemonNeverBack(t *testing.T) {
	marker := isolateFollow(t)
	saved := reconnect
	t.Cleanup(func() { reconnect = saved })
	reconnect.timeout = 1500 * time.Millisecond
	r := runFollow(t, followRun{
		args:  []string{"vm", "create", "--name", "k1"},
		world: newWorld(),
		die:   func(t *testing.T, f *dyingDaemon) { f.kill() },
	})
	if r.code != ExitUnavailable {
		t.Fatalf("exit %d, want %d:\n%s", r.code, ExitUnavailable, r)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the CLI did not try to start a daemon: %v", err)
	}
	l, _ := paths.Default()
	for _, want := range []string{
		"bangerd went away during " + r.opID + "; waiting for it to come back (at most 1.5s)",
		"banger: bangerd went away during " + r.opID,
		"and did not come back: no daemon answered on " + l.DaemonSocket() + " within 1.5s",
		"code:  unavailable",
		"op id: " + r.opID,
		"hint:  start it and read what it says: banger daemon status",
		"then see where vm k1 ended: banger vm show k1",
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
	if r.took > 8*time.Second {
		t.Errorf("took %s: the wait is not bounded by 1.5s", r.took)
	}
}

// A create whose VM ended in a state that is neither running, stopped nor
// failed: paused (its VMM runs, the vCPUs stopped) and a state this banger
// does not know (a newer daemon's). Each is an error naming the VM, the op
// id and the state, with the next step for it; nothing on stdout, and no
// agent asked.
func TestFollowOutlivesDaemonVMOtherEnds(t *testing.T) {
	for _, c := range []struct {
		state model.VMState
		want  []string
	}{
		{model.StatePaused, []string{
			"banger: vm k1 ended paused after bangerd went away during OP: paused by someone",
			"hint:  its VMM runs with the guest's vCPUs stopped: resume it with banger vm resume k1 (or remove it: banger vm delete k1)",
		}},
		{"hibernating", []string{
			`banger: vm k1 is in state "hibernating" after bangerd went away during OP, a state this banger does not know: paused by someone`,
			"hint:  banger vm show k1 says where it is now and banger daemon logs --op OP what happened to it; a state banger does not know comes from a bangerd newer than this banger (compare banger version with banger daemon status)",
		}},
	} {
		t.Run(string(c.state), func(t *testing.T) {
			isolateFollow(t)
			world := newWorld()
			r := runFollow(t, followRun{
				args:  []string{"vm", "create", "--name", "k1"},
				world: world,
				die: func(t *testing.T, f *dyingDaemon) {
					world.setVM("k1", vmInfo("k1", c.state, true, true, "paused by someone"))
					f.kill()
				},
				restart: restartFake,
			})
			if r.code != ExitUnavailable {
				t.Fatalf("exit %d, want %d:\n%s", r.code, ExitUnavailable, r)
			}
			for _, want := range append(c.want, "code:  unavailable", "op id: OP") {
				want = strings.ReplaceAll(want, "OP", r.opID)
				if !strings.Contains(r.stderr, want) {
					t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
				}
			}
			if r.stdout != "" || world.calls() != 0 {
				t.Errorf("stdout %q, %d agent calls", r.stdout, world.calls())
			}
		})
	}
}

// -o json: the create that outlived its daemon prints what a create
// prints, the VM as JSON on stdout (running), and its notes on stderr only.
func TestFollowOutlivesDaemonJSON(t *testing.T) {
	isolateFollow(t)
	world := newWorld()
	r := runFollow(t, followRun{
		args:  []string{"vm", "create", "--name", "k1", "-o", "json"},
		world: world,
		die: func(t *testing.T, f *dyingDaemon) {
			world.setVM("k1", vmInfo("k1", model.StateRunning, true, true, ""))
			f.kill()
		},
		restart: restartFake,
	})
	if r.code != ExitOK {
		t.Fatalf("%s", r)
	}
	var info api.VMInfo
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&info); err != nil {
		t.Fatalf("stdout is not one VM as JSON: %v\n%s", err, r.stdout)
	}
	if dec.More() {
		t.Errorf("more than the VM on stdout:\n%s", r.stdout)
	}
	if info.Name != "k1" || info.Runtime.State != model.StateRunning || !info.Alive || info.Runtime.GuestIP != "10.0.0.2" {
		t.Errorf("stdout's VM: %+v", info)
	}
	wantLines(t, r, "vm k1 is running: its guest agent answers")
}

// A fork whose new VM the new daemon does not have: gone, fork it again.
// A restore: its VM runs before as after, so the CLI claims no end for it
// and says where to look.
func TestFollowOutlivesDaemonForkRestore(t *testing.T) {
	isolateFollow(t)
	r := runFollow(t, followRun{
		args:    []string{"vm", "fork", "src", "--name", "k4"},
		world:   newWorld(),
		die:     func(t *testing.T, f *dyingDaemon) { f.kill() },
		restart: restartFake,
	})
	if r.code != ExitNotFound || !strings.Contains(r.stderr, "vm k4 is gone: bangerd went away during "+r.opID) ||
		!strings.Contains(r.stderr, "hint:  fork it again: banger vm fork SOURCE --name k4") {
		t.Fatalf("fork: %s", r)
	}

	world := newWorld()
	r = runFollow(t, followRun{
		args:  []string{"vm", "restore", "k5", "snap1"},
		world: world,
		die: func(t *testing.T, f *dyingDaemon) {
			world.setVM("k5", vmInfo("k5", model.StateRunning, true, true, ""))
			f.kill()
		},
		restart: restartFake,
	})
	if r.code != ExitUnavailable || r.stdout != "" ||
		!strings.Contains(r.stderr, "bangerd went away during "+r.opID+" (vm.restore of k5); the daemon now running (pid 2002) does not know the operation, and banger cannot tell how a vm.restore ended") ||
		!strings.Contains(r.stderr, "hint:  see what became of vm k5 (banger vm show k5) and what the old daemon logged: banger daemon logs --op "+r.opID) {
		t.Fatalf("restore: %s", r)
	}
}

// A guest that never answers: the wait ends at vm.boot_timeout, exit 6.
func TestFollowOutlivesDaemonAgentNeverAnswers(t *testing.T) {
	isolateFollow(t)
	l, _ := paths.Default()
	if err := os.WriteFile(l.ConfigFile, []byte("[vm]\nboot_timeout = \"1s\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	world := newWorld()
	r := runFollow(t, followRun{
		args:  []string{"vm", "create", "--name", "k1"},
		world: world,
		die: func(t *testing.T, f *dyingDaemon) {
			world.setVM("k1", vmInfo("k1", model.StateRunning, true, true, ""))
			world.refuseAgent(-1)
			f.kill()
		},
		restart: restartFake,
	})
	if r.code != ExitTimeout || !strings.Contains(r.stderr, "vm k1 is still running after bangerd went away during "+r.opID+": waited 1s (vm.boot_timeout) for its guest agent to answer") {
		t.Fatalf("%s", r)
	}
}

// Only a connection broke: the same daemon still has the operation, and
// following goes on to its own end; no daemon is started.
func TestFollowConnectionLostSameDaemon(t *testing.T) {
	isolateFollow(t)
	world := newWorld()
	r := runFollow(t, followRun{
		args:  []string{"vm", "create", "--name", "k1"},
		world: world,
		die: func(t *testing.T, f *dyingDaemon) {
			f.mu.Lock()
			f.finishOn = func(o api.Operation) api.Operation {
				o, _ = succeeded(o, vmInfo("k1", model.StateRunning, true, true, ""), time.Now())
				o.Stages[1].State = api.StageDone
				return o
			}
			f.mu.Unlock()
			f.breakConns()
		},
		restart: func(*testing.T, *fakeWorld) error { return errors.New("no start expected") },
	})
	if r.code != ExitOK || !stateRunning.MatchString(r.stdout) || r.starts != 0 {
		t.Fatalf("%s (starts %d)", r, r.starts)
	}
	wantLines(t, r, "bangerd answers again (pid 1001, after ", "still has "+r.opID+": following it")
	if !strings.Contains(r.stderr, "ok   vmm start") {
		t.Errorf("the resumed follow did not print the stage that ended:\n%s", r.stderr)
	}
}

// An image build: registered by the new daemon (exit 0, built), or gone
// with the old one (exit 5, build it again, its log).
func TestFollowOutlivesDaemonImageBuild(t *testing.T) {
	isolateFollow(t)
	world := newWorld()
	r := runFollow(t, followRun{
		args:  []string{"image", "build", "--name", "img1"},
		world: world,
		die: func(t *testing.T, f *dyingDaemon) {
			world.mu.Lock()
			world.images["img1"] = api.ImageInfo{Image: model.Image{Name: "img1", KernelVersion: "6.1.0-fake", CreatedAt: time.Now().UTC()}}
			world.mu.Unlock()
			f.kill()
		},
		restart: restartFake,
	})
	if r.code != ExitOK || !strings.Contains(r.stdout, "image img1 built in ") || !strings.Contains(r.stdout, "(kernel 6.1.0-fake)") {
		t.Fatalf("registered: %s", r)
	}
	wantLines(t, r, "image img1 is registered: its build ended")

	r = runFollow(t, followRun{
		args:    []string{"image", "build", "--name", "img2"},
		world:   world,
		die:     func(t *testing.T, f *dyingDaemon) { f.kill() },
		restart: restartFake,
	})
	if r.code != ExitUnavailable || !strings.Contains(r.stderr, "the build of image img2 ended with bangerd, which went away during "+r.opID) ||
		!strings.Contains(r.stderr, "hint:  build it again: banger image build --name img2 (what the old build did is in /state/images/img2/build.log)") {
		t.Fatalf("gone: %s", r)
	}
}

// What counts as the daemon gone: no answer at all; never an answer, a
// refusal, a reply that does not decode, or the CLI's own end.
func TestDaemonWentAway(t *testing.T) {
	ctx := context.Background()
	var n int
	undecodable := json.Unmarshal([]byte("{not json"), &n)
	dead, cancel := context.WithCancel(ctx)
	cancel()
	for _, c := range []struct {
		err  error
		ctx  context.Context
		gone bool
	}{
		{&rpc.UnreachableError{Socket: "/s", Err: errors.New("connection refused")}, ctx, true},
		{errors.New("reading reply to vm.create.status from /s: connection closed without a reply"), ctx, true},
		{fmt.Errorf("reading reply: %w", &net.OpError{Op: "read", Err: errors.New("connection reset by peer")}), ctx, true},
		{&rpc.ErrorResponse{Code: rpc.CodeNotFound, Message: "operation op-1"}, ctx, false},
		{&rpc.PeerError{Socket: "/s", Err: errors.New("not yours")}, ctx, false},
		{fmt.Errorf("decoding reply: %w", undecodable), ctx, false},
		{&rpc.UnreachableError{Socket: "/s", Err: errors.New("connection refused")}, dead, false},
		{nil, ctx, false},
	} {
		if got := daemonWentAway(c.ctx, c.err); got != c.gone {
			t.Errorf("daemonWentAway(%v) = %v, want %v", c.err, got, c.gone)
		}
	}
}
