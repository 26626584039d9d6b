package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/rpc"
)

// The guest agent (docs/agent.md). bangerd keeps one session per running
// VM of guest contract 3, over the VM's agent channel: qemu's unix socket
// for the virtio-serial port, or Firecracker's vsock socket. Every exec,
// copy and port forward is one stream of that session; the CLI reaches its
// stream through vm.agent, which upgrades the CLI's connection and splices
// it onto the stream. A session that died (the guest rebooted, the VMM
// went away) is made again on the next use; a restarted bangerd makes its
// sessions anew the same way.

// vmFileAgent is qemu's socket for the agent's port in the VM directory.
const vmFileAgent = "agent.sock"

// agentDialTimeout bounds connecting and the handshake of one attempt.
const agentDialTimeout = 5 * time.Second

type agentSessions struct {
	mu sync.Mutex
	m  map[string]*agentEntry // VM id
}

// agentEntry serialises dialing one VM's agent, so two callers never
// connect at once (qemu's socket takes one client).
type agentEntry struct {
	mu sync.Mutex
	s  *agent.Session
}

func (a *agentSessions) entry(id string) *agentEntry {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		a.m = map[string]*agentEntry{}
	}
	e, ok := a.m[id]
	if !ok {
		e = &agentEntry{}
		a.m[id] = e
	}
	return e
}

// drop closes and forgets a VM's session (the VM stopped or is gone).
func (a *agentSessions) drop(id string) {
	a.mu.Lock()
	e := a.m[id]
	delete(a.m, id)
	a.mu.Unlock()
	if e != nil {
		e.mu.Lock()
		if e.s != nil {
			e.s.Close()
			e.s = nil
		}
		e.mu.Unlock()
	}
}

// hasAgent reports whether VMs of img have the guest agent.
func hasAgent(img model.Image) bool { return img.GuestContract >= guest.ContractAgent }

// agentSocketPath is the host end of vm's agent channel.
func agentSocketPath(vm model.VM) string {
	if vm.VMM == "firecracker" {
		return vm.Runtime.VSockPath
	}
	return filepath.Join(vm.Runtime.VMDir, vmFileAgent)
}

// dialAgentConn connects to vm's agent channel.
func dialAgentConn(ctx context.Context, vm model.VM) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, agentDialTimeout)
	defer cancel()
	if vm.VMM == "firecracker" {
		return agent.DialVsockUDS(ctx, vm.Runtime.VSockPath, agent.VsockPort)
	}
	var d net.Dialer
	return d.DialContext(ctx, "unix", agentSocketPath(vm))
}

// agentSession returns vm's live session, making one when there is none.
func (d *Daemon) agentSession(ctx context.Context, vm model.VM) (*agent.Session, error) {
	e := d.agents.entry(vm.ID)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.s != nil {
		select {
		case <-e.s.Done():
			e.s = nil
		default:
			return e.s, nil
		}
	}
	// The handshake waits for a guest that may still be booting: bound it
	// by the caller's deadline too (a create's boot timeout). A guest agent
	// still in a session of a bangerd that died (or of the snapshot it was
	// restored from) may take the first handshake for that session's
	// frames and drop it: so the first attempts are short, and a new
	// connection sends the handshake again.
	dl := time.Now().Add(agentDialTimeout)
	if cdl, ok := ctx.Deadline(); ok && cdl.Before(dl) {
		dl = cdl
	}
	var s *agent.Session
	var err error
	for try := 750 * time.Millisecond; ; try *= 2 {
		var conn net.Conn
		conn, err = dialAgentConn(ctx, vm)
		if err != nil {
			return nil, fmt.Errorf("connecting to the agent of %s at %s: %w", vm.Name, agentSocketPath(vm), err)
		}
		adl := time.Now().Add(try)
		if adl.After(dl) {
			adl = dl
		}
		_ = conn.SetDeadline(adl)
		s, err = agent.Dial(conn)
		if err == nil {
			_ = conn.SetDeadline(time.Time{})
			// A handshake answered may be a stale answer: one the guest
			// wrote to an earlier connection that gave up, delivered to
			// this one, while the guest takes this connection's line for
			// junk. A hello proves the session.
			hdl := time.Now().Add(try)
			if hdl.After(dl) {
				hdl = dl
			}
			if err = helloBy(ctx, s, hdl); err == nil {
				break
			}
			s.Close()
			if !errors.Is(err, context.DeadlineExceeded) || !hdl.Before(dl) {
				break
			}
			continue
		}
		conn.Close()
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || !adl.Before(dl) {
			break
		}
	}
	if err != nil {
		var ve *agent.VersionError
		if errors.As(err, &ve) {
			return nil, rpc.WithHint(fmt.Errorf("vm %s: %w: %w", vm.Name, err, rpc.ErrUnavailable),
				"rebuild the VM's image with this banger (banger image build --name NEW), then create the VM from it")
		}
		return nil, fmt.Errorf("the agent of %s: %w", vm.Name, err)
	}
	e.s = s
	d.log.DebugContext(ctx, "agent session", "vm", vm.Name, "agent_release", s.Info().Release)
	return s, nil
}

// agentStream opens a stream to vm's agent; a session found dead is made
// again once (the guest rebooted).
func (d *Daemon) agentStream(ctx context.Context, vm model.VM) (net.Conn, error) {
	for attempt := 0; ; attempt++ {
		s, err := d.agentSession(ctx, vm)
		if err != nil {
			return nil, err
		}
		st, err := s.Open(ctx)
		if err == nil {
			return st, nil
		}
		s.Close()
		if attempt > 0 || ctx.Err() != nil {
			return nil, fmt.Errorf("opening a stream to the agent of %s: %w", vm.Name, err)
		}
	}
}

// waitAgent waits for vm's agent to answer hello (the "agent ready" stage
// of a create or start), watching the VMM and the deadline meanwhile.
func (d *Daemon) waitAgent(ctx context.Context, vm model.VM, pid int, deadline time.Time) (agent.HelloResult, error) {
	for {
		hctx, cancel := context.WithTimeout(ctx, agentDialTimeout)
		res, err := d.agentHello(hctx, vm)
		cancel()
		if err == nil {
			return res, nil
		}
		var ve *agent.VersionError
		if errors.As(err, &ve) {
			return res, err
		}
		if berr := d.checkBooting(ctx, vm, pid, deadline); berr != nil {
			return res, fmt.Errorf("%w (the agent's last answer: %v)", berr, err)
		}
		d.agents.drop(vm.ID)
		time.Sleep(50 * time.Millisecond)
	}
}

// agentShutdown asks vm's agent to power the guest off (the guest's own
// orderly poweroff): unlike the ACPI button, it is not lost when it comes
// before the guest has started listening for the button, as a stop right
// after an agent-ready create can. It waits for the agent's answer, not
// for the VMM to exit.
func (d *Daemon) agentShutdown(ctx context.Context, vm model.VM) error {
	ctx, cancel := context.WithTimeout(ctx, agentDialTimeout)
	defer cancel()
	st, err := d.agentStream(ctx, vm)
	if err != nil {
		return err
	}
	defer st.Close()
	return agent.Shutdown(ctx, st, false)
}

func (d *Daemon) agentHello(ctx context.Context, vm model.VM) (agent.HelloResult, error) {
	st, err := d.agentStream(ctx, vm)
	if err != nil {
		return agent.HelloResult{}, err
	}
	defer st.Close()
	return agent.Hello(ctx, st)
}

// vmAgent is vm.agent: after its reply, the CLI's connection is one stream
// to the VM's agent, spliced byte for byte; the CLI speaks the agent's
// frames over it (vm exec, vm cp, vm port-forward).
func (d *Daemon) vmAgent(ctx context.Context, p api.VMAgentParams) (api.VMAgentResult, error) {
	vm, err := d.lookupVM(ctx, p.Name)
	if err != nil {
		return api.VMAgentResult{}, err
	}
	if !d.vmAlive(vm) {
		return api.VMAgentResult{}, rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "vm %s is not running (state %s)", vm.Name, vm.Runtime.State),
			"start it: banger vm start "+vm.Name)
	}
	if vm.Runtime.State == model.StatePaused {
		return api.VMAgentResult{}, rpc.WithHint(rpc.Errorf(rpc.ErrConflict, "vm %s is paused: its agent cannot answer", vm.Name),
			"resume it: banger vm resume "+vm.Name)
	}
	img, err := d.store.GetImage(ctx, vm.Image)
	if err != nil {
		return api.VMAgentResult{}, err
	}
	if !hasAgent(img) {
		return api.VMAgentResult{}, rpc.WithHint(rpc.Errorf(rpc.ErrUnavailable,
			"vm %s runs image %s of guest contract %d, which has no guest agent (contract %d has)", vm.Name, img.Name, img.GuestContract, guest.ContractAgent),
			"use banger vm ssh "+vm.Name+" -- CMD for now; images built by this banger carry the agent (banger image build --name NEW)")
	}
	st, err := d.agentStream(ctx, vm)
	if err != nil {
		return api.VMAgentResult{}, rpc.WithHint(fmt.Errorf("%w: %w", err, rpc.ErrUnavailable), "see the VM's console: banger vm logs "+vm.Name)
	}
	s, _ := d.agentSession(ctx, vm)
	res := api.VMAgentResult{Name: vm.Name}
	if s != nil {
		res.AgentRelease = s.Info().Release
	}
	id, what := op.From(ctx), p.What
	if err := rpc.Upgrade(ctx, func(conn net.Conn) {
		defer st.Close()
		if conn == nil {
			return
		}
		start := time.Now()
		up, down := splice(conn, st)
		d.log.InfoContext(op.With(context.Background(), id), "agent stream ended", "vm", vm.Name, "what", what,
			"bytes_in", up, "bytes_out", down, "duration_ms", time.Since(start).Milliseconds())
	}); err != nil {
		st.Close()
		return api.VMAgentResult{}, err
	}
	return res, nil
}

// splice copies a to b and b to a until both directions end, passing each
// end of input on as a half-close (the agent takes an end of its stream
// before an operation's own end as its client gone); a failure either way
// closes both. It returns the bytes each way.
func splice(a, b net.Conn) (ab, ba int64) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var err error
		if ab, err = io.Copy(b, a); err != nil {
			a.Close()
			b.Close()
			return
		}
		closeWrite(b)
	}()
	var err error
	if ba, err = io.Copy(a, b); err != nil {
		a.Close()
		b.Close()
	} else {
		closeWrite(a)
	}
	wg.Wait()
	return ab, ba
}

// closeWrite half-closes c where it can (unix sockets; a yamux stream's
// Close is a half-close), else closes it.
func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}

// helloBy runs a hello on a new stream of s by deadline dl.
func helloBy(ctx context.Context, s *agent.Session, dl time.Time) error {
	hctx, cancel := context.WithDeadline(ctx, dl)
	defer cancel()
	st, err := s.Open(hctx)
	if err != nil {
		return err
	}
	defer st.Close()
	_, err = agent.Hello(hctx, st)
	if err != nil && hctx.Err() != nil {
		return fmt.Errorf("the agent's session does not answer: %w", context.DeadlineExceeded)
	}
	return err
}
