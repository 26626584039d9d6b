package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// Frame kinds (docs/agent.md, "Streams and frames").
const (
	KindMsg    byte = 'M' // one JSON object
	KindStdin  byte = '0' // stdin bytes, host to agent; empty: stdin closed
	KindStdout byte = '1' // stdout bytes, agent to host; empty: its EOF
	KindStderr byte = '2' // stderr bytes, agent to host; empty: its EOF
	KindTar    byte = 'T' // a tar stream, either way; empty: its end
)

// MaxPayload is the largest payload a frame may carry.
const MaxPayload = 1 << 20

// frameHeader is kind plus the big-endian payload length.
const frameHeader = 5

// ErrBadFrame is a frame that is not one: an unknown kind or a length over
// MaxPayload. The stream it came from is unusable.
var ErrBadFrame = errors.New("bad frame")

func validKind(k byte) bool {
	switch k {
	case KindMsg, KindStdin, KindStdout, KindStderr, KindTar:
		return true
	}
	return false
}

// WriteFrame writes one frame. A payload over MaxPayload or an unknown kind
// is refused before anything is written. Small payloads go out in one
// Write, so that concurrent writers that serialise their calls never
// interleave a frame.
func WriteFrame(w io.Writer, kind byte, payload []byte) error {
	if !validKind(kind) {
		return fmt.Errorf("writing a frame of kind %q: %w", kind, ErrBadFrame)
	}
	if len(payload) > MaxPayload {
		return fmt.Errorf("writing a frame of %d bytes (limit %d): %w", len(payload), MaxPayload, ErrBadFrame)
	}
	if len(payload) <= 32<<10 {
		buf := make([]byte, frameHeader+len(payload))
		buf[0] = kind
		binary.BigEndian.PutUint32(buf[1:], uint32(len(payload)))
		copy(buf[frameHeader:], payload)
		_, err := w.Write(buf)
		return err
	}
	var hdr [frameHeader]byte
	hdr[0] = kind
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// ReadFrame reads one frame. The payload is read into buf when it fits,
// otherwise into a new slice. It returns io.EOF when r ends cleanly before
// a frame, io.ErrUnexpectedEOF when it ends inside one, and an error
// wrapping ErrBadFrame for an unknown kind or a length over MaxPayload
// (without reading the payload).
func ReadFrame(r io.Reader, buf []byte) (kind byte, payload []byte, err error) {
	var hdr [frameHeader]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	kind = hdr[0]
	n := binary.BigEndian.Uint32(hdr[1:])
	if !validKind(kind) {
		return 0, nil, fmt.Errorf("frame of kind %q: %w", kind, ErrBadFrame)
	}
	if n > MaxPayload {
		return 0, nil, fmt.Errorf("frame of %d bytes (limit %d): %w", n, MaxPayload, ErrBadFrame)
	}
	if int(n) <= cap(buf) {
		payload = buf[:n]
	} else {
		payload = make([]byte, n)
	}
	if _, err := io.ReadFull(r, payload); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	return kind, payload, nil
}

// lockedWriter serialises frames written by several goroutines onto one
// stream.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) frame(kind byte, payload []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return WriteFrame(l.w, kind, payload)
}

// FrameReader returns a reader of the bytes carried by consecutive frames
// of kind on r, which reads io.EOF at the first empty frame of that kind.
// Any other frame, or r ending before the empty frame, is an error
// (io.ErrUnexpectedEOF for the latter), so that a consumer never mistakes a
// cut stream for a complete one.
func FrameReader(r io.Reader, kind byte) io.Reader {
	return &frameReader{r: r, kind: kind}
}

type frameReader struct {
	r     io.Reader
	kind  byte
	buf   []byte // payload not yet returned
	store []byte // reused for payloads
	err   error
}

func (f *frameReader) Read(p []byte) (int, error) {
	for len(f.buf) == 0 {
		if f.err != nil {
			return 0, f.err
		}
		k, payload, err := ReadFrame(f.r, f.store)
		if cap(payload) > cap(f.store) {
			f.store = payload[:0]
		}
		switch {
		case err == io.EOF:
			f.err = io.ErrUnexpectedEOF
		case err != nil:
			f.err = err
		case k != f.kind:
			f.err = fmt.Errorf("a frame of kind %q inside a %q stream: %w", k, f.kind, ErrBadFrame)
		case len(payload) == 0:
			f.err = io.EOF
		default:
			f.buf = payload
		}
	}
	n := copy(p, f.buf)
	f.buf = f.buf[n:]
	return n, nil
}

// FrameWriter returns a writer that sends what is written to it as frames
// of kind on w (each at most MaxPayload), and whose Close sends the empty
// frame that ends them. It does not close w.
func FrameWriter(w io.Writer, kind byte) io.WriteCloser {
	return &frameWriter{w: w, kind: kind}
}

type frameWriter struct {
	w      io.Writer
	kind   byte
	closed bool
}

func (f *frameWriter) Write(p []byte) (int, error) {
	if f.closed {
		return 0, errors.New("write after close")
	}
	n := 0
	for len(p) > 0 {
		c := min(len(p), MaxPayload)
		if err := WriteFrame(f.w, f.kind, p[:c]); err != nil {
			return n, err
		}
		n += c
		p = p[c:]
	}
	return n, nil
}

func (f *frameWriter) Close() error {
	if f.closed {
		return nil
	}
	f.closed = true
	return WriteFrame(f.w, f.kind, nil)
}
