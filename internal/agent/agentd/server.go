// Package agentd is banger-agent's server, the guest end of docs/agent.md:
// the handshake and a yamux server on each host connection, one goroutine
// per stream, and the operations (exec, stat, put, get, connect, set_time,
// shutdown, hello, identity).
//
// Transports: ServePort runs the serial loop on qemu's virtio-serial port
// (a session per host connection, the port kept open across them); Serve
// accepts connections (vsock under Firecracker, a unix socket in tests),
// one session each; ServeConn serves one connection. FindPort and
// ListenVsock find the transports; cmd/banger-agent picks one.
package agentd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/rpc"
)

// Server serves the agent protocol. The zero value works; the fields
// replace its defaults.
type Server struct {
	// Release is announced in the handshake and hello (default "unknown").
	Release string
	// Log receives one line per operation and per session (default:
	// discard).
	Log *slog.Logger
	// SetClock sets the guest's clock (default: clock_settime of
	// CLOCK_REALTIME). Tests replace it so as not to touch the host's.
	SetClock func(time.Time) error
	// WaitSSHDReload makes the host key step wait for sshd's re-exec
	// after its SIGHUP and fail when sshd does not come back, instead of
	// waiting in the background and logging the outcome (the default:
	// identity's answer is on a restored VM's critical path).
	WaitSSHDReload bool
	// PowerOff syncs and powers off or reboots (default: sync, then
	// reboot(2)). It runs after shutdown's answer went out.
	PowerOff func(reboot bool) error
	// Root is the directory under which identity finds the guest's files
	// (etc/hostname, etc/hosts, etc/machine-id, etc/resolv.conf, etc/ssh,
	// run/sshd.pid) and the processes (proc); default "/". Tests use a
	// temporary one.
	Root string
	// SetHostname sets the kernel's host name (default: sethostname(2)).
	SetHostname func(string) error
	// AddEntropy feeds the kernel's RNG and reseeds it (default:
	// RNDADDENTROPY with every bit credited, then RNDRESEEDCRNG, on
	// /dev/urandom).
	AddEntropy func([]byte) error

	// announce is identity's announcement waiting for a carrier, if any
	// (identityMu guards it).
	announce *pendingAnnounce
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

func (s *Server) release() string {
	if s.Release == "" {
		return "unknown"
	}
	return s.Release
}

// yamuxLogger sends yamux's own messages to the debug level: a host going
// away is routine.
type yamuxLogger struct{ l *slog.Logger }

func (y yamuxLogger) Print(v ...any) { y.l.Debug(strings.TrimSpace(fmt.Sprint(v...))) }
func (y yamuxLogger) Printf(format string, v ...any) {
	y.l.Debug(strings.TrimSpace(fmt.Sprintf(format, v...)))
}
func (y yamuxLogger) Println(v ...any) { y.l.Debug(strings.TrimSpace(fmt.Sprintln(v...))) }

// ServeConn serves one session on conn (a vsock or unix connection): the
// handshake, then yamux until the host goes away, the session fails or
// ctx ends. It closes conn. The operations of the session's streams may
// outlive it briefly (an exec kills its process group on the way out).
func (s *Server) ServeConn(ctx context.Context, conn io.ReadWriteCloser) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := agent.ServerHandshake(conn, s.release()); err != nil {
		conn.Close()
		return err
	}
	return s.serveMux(ctx, conn)
}

// serveMux runs a yamux server on conn until the session ends.
func (s *Server) serveMux(ctx context.Context, conn io.ReadWriteCloser) error {
	cfg := agent.YamuxConfig(false, nil)
	cfg.LogOutput = nil
	cfg.Logger = yamuxLogger{s.log()}
	mux, err := yamux.Server(conn, cfg)
	if err != nil {
		conn.Close()
		return err
	}
	s.log().Info("agent session started")
	stop := context.AfterFunc(ctx, func() { mux.Close() })
	defer stop()
	defer mux.Close()
	for {
		st, err := mux.AcceptStream()
		if err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			return nil // the session ended: the host went away or broke it
		}
		go s.serveStream(ctx, st)
	}
}

// Serve accepts connections on l, one session each, until ctx ends (then
// it closes l) or l is closed; other accept errors are logged and retried.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// ECONNABORTED, EMFILE and the like pass: the agent must not
			// stop serving over one failed accept.
			s.log().Warn("agent accept failed", "error", err.Error())
			sleepCtx(ctx, 100*time.Millisecond)
			continue
		}
		go func() {
			start := time.Now()
			err := s.ServeConn(ctx, c)
			s.logSession(err, start)
		}()
	}
}

func (s *Server) logSession(err error, start time.Time) {
	ms := time.Since(start).Milliseconds()
	var ve *agent.VersionError
	switch {
	case errors.As(err, &ve):
		s.log().Warn("agent handshake refused", "error", err.Error())
	case err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, context.Canceled):
		s.log().Info("agent session failed", "error", err.Error(), "duration_ms", ms)
	default:
		s.log().Info("agent session ended", "duration_ms", ms)
	}
}

// ServePort runs the serial loop on port (qemu's virtio-serial port): it
// writes agent.BootLine once, then forever waits for a host's handshake,
// serves that session until the port reads EOF (the host disconnected) or
// a protocol error, drops it, and starts over. A read of EOF while no
// session runs means that no host is connected; it waits (port's
// WaitReadable if it has one, else 100 ms) and reads again. It returns
// when ctx ends. yamux is given a view of port whose Close does not close
// it (deadlines in the past unblock pending reads and writes if port has
// SetDeadline or SetReadDeadline).
func (s *Server) ServePort(ctx context.Context, port io.ReadWriter) error {
	// When ctx ends, deadlines in the past end a pending read or write.
	stop := context.AfterFunc(ctx, func() { setDeadline(port, time.Unix(1, 0)) })
	defer stop()
	if _, err := io.WriteString(port, agent.BootLine); err != nil {
		s.log().Warn("writing the boot line to the agent port", "error", err.Error())
	}
	for {
		setDeadline(port, time.Time{})
		if ctx.Err() != nil {
			break
		}
		err := agent.ServerHandshake(&eofWaiter{ctx: ctx, port: port}, s.release())
		if ctx.Err() != nil {
			break
		}
		if err != nil {
			var ve *agent.VersionError
			if errors.As(err, &ve) {
				s.log().Warn("agent handshake refused", "error", err.Error())
			} else {
				s.log().Warn("agent port", "error", err.Error())
				sleepCtx(ctx, time.Second)
			}
			continue
		}
		start := time.Now()
		pc := &portConn{ReadWriter: port}
		serr := s.serveMux(ctx, pc)
		s.logSession(serr, start)
	}
	return context.Cause(ctx)
}

// eofWaiter reads port, waiting through EOFs (no host connected).
type eofWaiter struct {
	ctx  context.Context
	port io.ReadWriter
}

func (e *eofWaiter) Read(p []byte) (int, error) {
	for {
		n, err := e.port.Read(p)
		if n > 0 || err == nil {
			return n, nil
		}
		if err != io.EOF {
			return 0, err
		}
		if w, ok := e.port.(interface{ WaitReadable(context.Context) }); ok {
			w.WaitReadable(e.ctx)
		} else {
			sleepCtx(e.ctx, 100*time.Millisecond)
		}
		if err := e.ctx.Err(); err != nil {
			return 0, err
		}
	}
}

func (e *eofWaiter) Write(p []byte) (int, error) { return e.port.Write(p) }

// portConn is the port as yamux sees it: Close ends the session's use of
// it but leaves the port open for the next host.
type portConn struct {
	io.ReadWriter
	once sync.Once
}

func (p *portConn) Close() error {
	p.once.Do(func() { setDeadline(p.ReadWriter, time.Unix(1, 0)) })
	return nil
}

// setDeadline sets port's read and write deadlines, or its read deadline,
// if it has either.
func setDeadline(port any, t time.Time) {
	switch d := port.(type) {
	case interface{ SetDeadline(time.Time) error }:
		d.SetDeadline(t)
	case interface{ SetReadDeadline(time.Time) error }:
		d.SetReadDeadline(t)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// serveStream runs the operation a stream carries, then closes the stream
// (a yamux half-close: the host closes its side).
func (s *Server) serveStream(ctx context.Context, st net.Conn) {
	defer st.Close()
	start := time.Now()
	var op string
	defer func() {
		if r := recover(); r != nil {
			s.log().Error("agent op panicked", "op", op, "panic", fmt.Sprint(r))
			agent.WriteError(st, fmt.Errorf("the agent failed: %v", r))
		}
	}()
	k, payload, err := agent.ReadFrame(st, nil)
	if err != nil {
		if !errors.Is(err, io.EOF) {
			s.log().Debug("agent stream without a request", "error", err.Error())
		}
		return
	}
	if k != agent.KindMsg {
		err = rpc.Errorf(rpc.ErrBadRequest, "a stream starts with a request, not a %q frame", k)
	}
	var req agent.Request
	if err == nil {
		req, err = agent.DecodeRequest(payload)
	}
	if err != nil {
		agent.WriteError(st, err)
		s.logOp("", start, err, nil)
		// Whatever the host sends next (a put's tar) is dropped until it
		// closes, so that its writes never wait on a stream nobody reads.
		io.Copy(io.Discard, st)
		return
	}
	op = req.Op
	var attrs []any
	switch req.Op {
	case agent.OpHello:
		err = s.hello(st)
	case agent.OpExec:
		attrs, err = s.exec(ctx, st, req)
	case agent.OpStat:
		err = s.stat(st, req.Path)
	case agent.OpPut:
		attrs, err = s.put(st, req)
	case agent.OpGet:
		attrs, err = s.get(st, req.Path)
	case agent.OpConnect:
		err = s.connect(st, req.Port)
	case agent.OpConnectUDP:
		err = s.connectUDP(st, req.Port)
	case agent.OpSetTime:
		err = s.setTime(st, time.Unix(0, req.UnixNano))
	case agent.OpShutdown:
		err = s.shutdown(st, req.Reboot)
	case agent.OpIdentity:
		attrs, err = s.identity(st, req)
	}
	s.logOp(op, start, err, attrs)
}

// logOp writes the operation's one line. Handlers return the error they
// answered with (or the stream's failure).
func (s *Server) logOp(op string, start time.Time, err error, attrs []any) {
	attrs = append(attrs, "op", op, "duration_ms", time.Since(start).Milliseconds())
	if err != nil {
		attrs = append(attrs, "code", string(agent.ErrorCode(err)), "error", err.Error())
		s.log().Info("agent op failed", attrs...)
		return
	}
	s.log().Info("agent op completed", attrs...)
}

// answer writes err as the stream's error answer, or result as its ok
// answer, and returns err.
func answer(w io.Writer, result any, err error) error {
	if err != nil {
		agent.WriteError(w, err)
		return err
	}
	return agent.WriteOK(w, result)
}

func (s *Server) hello(st net.Conn) error {
	r := agent.HelloResult{Version: agent.ProtocolVersion, Release: s.release()}
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		r.BootID = strings.TrimSpace(string(b))
	}
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) == nil {
		r.UptimeMS = ts.Nano() / 1e6
	}
	return answer(st, r, nil)
}

func (s *Server) setTime(st net.Conn, t time.Time) error {
	set := s.SetClock
	if set == nil {
		set = setClock
	}
	err := set(t)
	if err != nil {
		err = fmt.Errorf("setting the clock: %w", err)
	}
	return answer(st, nil, err)
}

func setClock(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
	if errors.Is(err, unix.EPERM) {
		return rpc.Errorf(rpc.ErrForbidden, "clock_settime: %v", err)
	}
	return err
}

func (s *Server) shutdown(st net.Conn, reboot bool) error {
	if err := answer(st, nil, nil); err != nil {
		return err
	}
	st.Close()
	power := s.PowerOff
	if power == nil {
		power = powerOff
	}
	go func() {
		if err := power(reboot); err != nil {
			s.log().Error("agent shutdown failed", "reboot", reboot, "error", err.Error())
		}
	}()
	return nil
}

// powerOff powers off or reboots the machine: through systemd when it is
// the init (an orderly shutdown: services stopped, file systems unmounted),
// else, or if systemctl fails, by syncing and calling reboot(2) itself (the
// agent as init, or a guest without systemd).
func powerOff(reboot bool) error {
	time.Sleep(50 * time.Millisecond) // let the answer leave the port
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		verb := "poweroff"
		if reboot {
			verb = "reboot"
		}
		if err := exec.Command("systemctl", "--no-block", verb).Run(); err == nil {
			return nil
		}
	}
	unix.Sync()
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if reboot {
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	}
	return unix.Reboot(cmd)
}
