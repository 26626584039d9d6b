package agent

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"syscall"
	"time"
)

// The host side of each operation, over one stream: a yamux stream from
// Session.Open, or a connection bangerd splices onto one. When ctx ends
// first, the operation returns ctx's cause and aborts rw (a deadline in the
// past if rw has SetDeadline, then Close if it is an io.Closer): the
// stream is unusable then, and the agent abandons the operation when it
// sees the stream close (an exec's process group is killed).

// watch aborts rw when ctx ends; stop undoes it once the operation ended.
func watch(ctx context.Context, rw io.ReadWriter) (stop func() bool) {
	return context.AfterFunc(ctx, func() {
		if d, ok := rw.(interface{ SetDeadline(time.Time) error }); ok {
			d.SetDeadline(time.Unix(1, 0))
		}
		if c, ok := rw.(io.Closer); ok {
			c.Close()
		}
	})
}

// ctxErr prefers ctx's cause to err once ctx has ended (err is then the
// consequence of the abort).
func ctxErr(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", context.Cause(ctx), err)
	}
	return err
}

// closeWrite half-closes rw: CloseWrite if it has one (a unix or TCP
// connection), else Close (a yamux stream's Close is a half-close).
func closeWrite(rw io.ReadWriter) error {
	if c, ok := rw.(interface{ CloseWrite() error }); ok {
		return c.CloseWrite()
	}
	if c, ok := rw.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// call sends req and reads an answer that ends the operation into result.
func call(ctx context.Context, rw io.ReadWriter, req Request, result any) error {
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	stop := watch(ctx, rw)
	defer stop()
	if err := WriteMsg(rw, req); err != nil {
		return ctxErr(ctx, fmt.Errorf("sending %s to the agent: %w", req.Op, err))
	}
	return ctxErr(ctx, readOK(rw, result))
}

// Hello asks the agent who it is: its protocol version, release, boot id
// and uptime.
func Hello(ctx context.Context, rw io.ReadWriter) (HelloResult, error) {
	var r HelloResult
	err := call(ctx, rw, Request{Op: OpHello}, &r)
	return r, err
}

// Stat describes path in the guest (absolute; symlinks followed). A
// missing path is Exists false, not an error.
func Stat(ctx context.Context, rw io.ReadWriter, path string) (StatResult, error) {
	var r StatResult
	err := call(ctx, rw, Request{Op: OpStat, Path: path}, &r)
	return r, err
}

// SetTime sets the guest's clock (CLOCK_REALTIME) to t.
func SetTime(ctx context.Context, rw io.ReadWriter, t time.Time) error {
	return call(ctx, rw, Request{Op: OpSetTime, UnixNano: t.UnixNano()}, nil)
}

// Shutdown asks the agent to power the guest off (reboot: restart it). It
// returns once the agent accepted; the guest goes down right after.
func Shutdown(ctx context.Context, rw io.ReadWriter, reboot bool) error {
	return call(ctx, rw, Request{Op: OpShutdown, Reboot: reboot}, nil)
}

// Connect has the agent connect to 127.0.0.1:port in the guest. On
// success rw carries that TCP connection's bytes raw, both ways; half-
// closing rw's write side half-closes the TCP connection. A port nothing
// listens on is a *RemoteError with code not_found.
func Connect(ctx context.Context, rw io.ReadWriter, port int) error {
	return call(ctx, rw, Request{Op: OpConnect, Port: port}, nil)
}

// ConnectUDP has the agent relay UDP to 127.0.0.1:port in the guest. On
// success each datagram crosses rw framed by WriteDatagram, both ways,
// until rw closes.
func ConnectUDP(ctx context.Context, rw io.ReadWriter, port int) error {
	return call(ctx, rw, Request{Op: OpConnectUDP, Port: port}, nil)
}

// MaxDatagram is the largest datagram ConnectUDP relays.
const MaxDatagram = 65535

// WriteDatagram writes one datagram on a connect_udp stream: its length
// (2 bytes, big-endian), then its bytes.
func WriteDatagram(w io.Writer, b []byte) error {
	if len(b) > MaxDatagram {
		return fmt.Errorf("datagram of %d bytes: at most %d", len(b), MaxDatagram)
	}
	buf := make([]byte, 2+len(b))
	binary.BigEndian.PutUint16(buf, uint16(len(b)))
	copy(buf[2:], b)
	_, err := w.Write(buf)
	return err
}

// ReadDatagram reads one datagram written by WriteDatagram into buf
// (MaxDatagram bytes hold any) and returns its length.
func ReadDatagram(r io.Reader, buf []byte) (int, error) {
	var n [2]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return 0, err
	}
	l := int(binary.BigEndian.Uint16(n[:]))
	if l > len(buf) {
		return 0, fmt.Errorf("datagram of %d bytes for a %d-byte buffer", l, len(buf))
	}
	_, err := io.ReadFull(r, buf[:l])
	return l, err
}

// ExecRequest is what to run in the guest.
type ExecRequest struct {
	Argv    []string      // the command; argv[0] is looked up in the clean PATH
	Env     []string      // K=V added to the clean environment (PATH, HOME, USER, LOGNAME, TERM)
	Dir     string        // working directory (absolute); default the user's home
	User    string        // user name or uid; default root (the agent's user)
	TTY     *TTY          // a pseudo-terminal of this size, or nil for pipes
	Timeout time.Duration // SIGKILL to the process group after this; 0 for none
}

// ExecIO connects an exec to the host. All fields are optional.
type ExecIO struct {
	// Stdin, when set, is copied to the process (then its EOF: the end of
	// a pipe, or ^D on a tty). Without it the process reads /dev/null (or
	// its tty). Exec returns at exit without waiting for Stdin; a Read
	// still blocked then completes later and its bytes are dropped.
	Stdin io.Reader
	// Stdout and Stderr receive the outputs (a tty has Stdout only); nil
	// discards.
	Stdout, Stderr io.Writer
	// Resize changes the tty's size.
	Resize <-chan WinSize
	// Signals are sent to the process group (with a tty, the foreground
	// group).
	Signals <-chan syscall.Signal
}

// Exec runs a command in the guest and returns how it ended, after both
// of its outputs reached EOF. An error means it did not run (a
// *RemoteError: not_found for a missing command, user or directory, ...)
// or the stream failed.
func Exec(ctx context.Context, rw io.ReadWriter, req ExecRequest, eio ExecIO) (ExitStatus, error) {
	if err := ctx.Err(); err != nil {
		return ExitStatus{}, context.Cause(ctx)
	}
	stop := watch(ctx, rw)
	defer stop()
	w := &lockedWriter{w: rw}
	msg := Request{Op: OpExec, Argv: req.Argv, Env: req.Env, Dir: req.Dir, User: req.User,
		Stdin: eio.Stdin != nil, TTY: req.TTY, TimeoutMS: req.Timeout.Milliseconds()}
	if req.Timeout > 0 && msg.TimeoutMS == 0 {
		msg.TimeoutMS = 1
	}
	if err := WriteMsg(rw, msg); err != nil {
		return ExitStatus{}, ctxErr(ctx, fmt.Errorf("sending exec to the agent: %w", err))
	}
	m, payload, err := readReply(rw)
	if err != nil {
		return ExitStatus{}, ctxErr(ctx, err)
	}
	if m.Started == nil {
		return ExitStatus{}, fmt.Errorf("the agent's answer to exec %.200s is not started", payload)
	}

	done := make(chan struct{})
	defer close(done)
	// After done, nothing more is written to rw.
	send := func(kind byte, payload []byte) error {
		w.mu.Lock()
		defer w.mu.Unlock()
		select {
		case <-done:
			return errors.New("exec ended")
		default:
		}
		return WriteFrame(rw, kind, payload)
	}
	sendMsg := func(v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		return send(KindMsg, b)
	}
	if eio.Stdin != nil {
		go func() {
			buf := make([]byte, 64<<10)
			for {
				n, err := eio.Stdin.Read(buf)
				if n > 0 {
					if send(KindStdin, buf[:n]) != nil {
						return
					}
				}
				if err != nil {
					send(KindStdin, nil)
					return
				}
			}
		}()
	}
	if eio.Resize != nil || eio.Signals != nil {
		go func() {
			for {
				select {
				case <-done:
					return
				case ws, ok := <-eio.Resize:
					if !ok {
						eio.Resize = nil
						continue
					}
					if sendMsg(Control{Resize: &ws}) != nil {
						return
					}
				case sig, ok := <-eio.Signals:
					if !ok {
						eio.Signals = nil
						continue
					}
					if sendMsg(Control{Signal: int(sig)}) != nil {
						return
					}
				}
			}
		}()
	}

	stdout, stderr := eio.Stdout, eio.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	outEOF, errEOF := false, req.TTY != nil
	buf := make([]byte, 32<<10)
	for {
		k, payload, err := ReadFrame(rw, buf)
		if cap(payload) > cap(buf) {
			buf = payload[:0]
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return ExitStatus{}, ctxErr(ctx, fmt.Errorf("exec: reading from the agent: %w", err))
		}
		switch k {
		case KindStdout, KindStderr:
			dst, eof := stdout, &outEOF
			if k == KindStderr {
				dst, eof = stderr, &errEOF
			}
			if *eof {
				return ExitStatus{}, fmt.Errorf("exec: output %q after its EOF: %w", k, ErrBadFrame)
			}
			if len(payload) == 0 {
				*eof = true
				continue
			}
			if _, err := dst.Write(payload); err != nil {
				return ExitStatus{}, fmt.Errorf("exec: writing the command's output: %w", err)
			}
		case KindMsg:
			var ev reply
			if err := json.Unmarshal(payload, &ev); err != nil {
				return ExitStatus{}, fmt.Errorf("exec: the agent's message is not JSON: %w", err)
			}
			if ev.Error != nil {
				return ExitStatus{}, ev.Error
			}
			if ev.Exit == nil {
				return ExitStatus{}, fmt.Errorf("exec: unexpected message %.200s from the agent", payload)
			}
			if !outEOF || !errEOF {
				return ExitStatus{}, fmt.Errorf("exec: exit before the outputs' EOF: %w", ErrBadFrame)
			}
			return *ev.Exit, nil
		default:
			return ExitStatus{}, fmt.Errorf("exec: a %q frame from the agent: %w", k, ErrBadFrame)
		}
	}
}

// Put writes the tar stream tr (entries all under name/, or name itself,
// as WriteTar makes) into the guest directory dir, where the agent
// extracts it as ExtractTar does: nothing is left unless all of it
// arrived and extracted. An early refusal (dir missing: not_found; dir/name
// an existing directory: conflict) ends Put before tr is read to its end
// (a read of tr and a write to rw may still be under way then: close rw).
// If reading tr fails, Put half-closes rw (the agent discards what it got)
// and returns that error.
func Put(ctx context.Context, rw io.ReadWriter, dir, name string, tr io.Reader) (PutResult, error) {
	if err := ctx.Err(); err != nil {
		return PutResult{}, context.Cause(ctx)
	}
	stop := watch(ctx, rw)
	defer stop()
	if err := WriteMsg(rw, Request{Op: OpPut, Dir: dir, Name: name}); err != nil {
		return PutResult{}, ctxErr(ctx, fmt.Errorf("sending put to the agent: %w", err))
	}
	type answer struct {
		r   PutResult
		err error
	}
	answered := make(chan answer, 1)
	go func() {
		var r PutResult
		err := readOK(rw, &r)
		answered <- answer{r, err}
	}()

	var stopped atomic.Bool // set once Put returns: the writer writes no more
	wrote := make(chan error, 1)
	go func() {
		buf := make([]byte, 256<<10)
		for {
			n, rerr := io.ReadFull(tr, buf)
			if stopped.Load() {
				return
			}
			var werr error
			if n > 0 {
				werr = WriteFrame(rw, KindTar, buf[:n])
			}
			if werr == nil && (rerr == io.EOF || rerr == io.ErrUnexpectedEOF) {
				wrote <- WriteFrame(rw, KindTar, nil)
				return
			}
			if werr != nil {
				wrote <- fmt.Errorf("put: sending the tar: %w", werr)
				return
			}
			if rerr != nil {
				wrote <- &localError{fmt.Errorf("put: reading the tar: %w", rerr)}
				return
			}
		}
	}()
	halt := func() { stopped.Store(true) }
	select {
	case a := <-answered: // an early answer is a refusal
		halt()
		if a.err == nil {
			return PutResult{}, errors.New("put: the agent answered ok before the end of the tar")
		}
		return PutResult{}, ctxErr(ctx, a.err)
	case err := <-wrote:
		var le *localError
		if errors.As(err, &le) {
			closeWrite(rw)
			return PutResult{}, le.err
		}
		if err != nil {
			// The agent may have refused meanwhile; its answer says why.
			select {
			case a := <-answered:
				if a.err != nil {
					return PutResult{}, ctxErr(ctx, a.err)
				}
			case <-time.After(time.Second):
			}
			return PutResult{}, ctxErr(ctx, err)
		}
	}
	a := <-answered
	return a.r, ctxErr(ctx, a.err)
}

// localError is a failure on the host's side of a copy.
type localError struct{ err error }

func (e *localError) Error() string { return e.err.Error() }
func (e *localError) Unwrap() error { return e.err }

// Get reads path from the guest (absolute; a symlink at the top is
// followed) as a tar whose top entry is path's base name, as WriteTar
// makes it. After the agent's first answer Get calls out with it; out
// returns where the tar goes. Get returns nil only after the agent
// confirmed the whole tar: a caller that extracts it (ExtractTar through an
// io.Pipe) must commit only then, closing the pipe with Get's error. A
// missing path is a *RemoteError with code not_found (out is not called).
func Get(ctx context.Context, rw io.ReadWriter, path string, out func(GetResult) (io.Writer, error)) error {
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	stop := watch(ctx, rw)
	defer stop()
	if err := WriteMsg(rw, Request{Op: OpGet, Path: path}); err != nil {
		return ctxErr(ctx, fmt.Errorf("sending get to the agent: %w", err))
	}
	var r GetResult
	if err := readOK(rw, &r); err != nil {
		return ctxErr(ctx, err)
	}
	w, err := out(r)
	if err != nil {
		return err
	}
	buf := make([]byte, 256<<10)
	if _, err := io.CopyBuffer(onlyWriter{w}, onlyReader{FrameReader(rw, KindTar)}, buf); err != nil {
		return ctxErr(ctx, fmt.Errorf("get %s: %w", path, err))
	}
	return ctxErr(ctx, readOK(rw, nil))
}

// onlyReader and onlyWriter hide ReadFrom and WriteTo, so that io.Copy
// uses its buffer.
type onlyReader struct{ io.Reader }
type onlyWriter struct{ io.Writer }
