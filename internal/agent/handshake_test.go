package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/banger-dev/banger/internal/rpc"
)

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// socketpair returns the two ends of a unix stream socketpair.
func socketpair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		t.Cleanup(func() { c.Close() })
	}
	return conns[0], conns[1]
}

// rw is a scripted peer: reads come from in, writes go to out.
type rw struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func (r *rw) Read(p []byte) (int, error)  { return r.in.Read(p) }
func (r *rw) Write(p []byte) (int, error) { return r.out.Write(p) }

func TestServerHandshakeResyncs(t *testing.T) {
	junk := "\x00\xff stale yamux bytes\nBANGER-AGENT-BOOT\nBANGER-AGENBANGER-AGENT x\nBANGER-AGENT " +
		strings.Repeat("y", 300) + "\nhalf a line BANGER-AGENT 1\r\nAFTER"
	p := &rw{in: bytes.NewReader([]byte(junk))}
	if err := ServerHandshake(p, "v1.2.3 dirty"); err != nil {
		t.Fatal(err)
	}
	if got := p.out.String(); got != "BANGER-AGENT 1 v1.2.3_dirty\n" {
		t.Errorf("answer %q", got)
	}
	// Nothing past the line was consumed: it belongs to yamux.
	rest, _ := io.ReadAll(p.in)
	if string(rest) != "AFTER" {
		t.Errorf("left %q, want AFTER", rest)
	}
}

func TestClientHandshakeResyncs(t *testing.T) {
	p := &rw{in: bytes.NewReader([]byte("BANGER-AGENT-BOOT\n\x01\x02garbageBANGER-AGENT 1 v0.9.0-12-gabc\nYAMUX"))}
	info, err := ClientHandshake(p)
	if err != nil {
		t.Fatal(err)
	}
	if info != (Info{Version: 1, Release: "v0.9.0-12-gabc"}) {
		t.Errorf("info %+v", info)
	}
	if p.out.String() != "BANGER-AGENT 1\n" {
		t.Errorf("sent %q", p.out.String())
	}
	if rest, _ := io.ReadAll(p.in); string(rest) != "YAMUX" {
		t.Errorf("left %q", rest)
	}
	// A stream that ends before any answer.
	if _, err := ClientHandshake(&rw{in: bytes.NewReader([]byte("BANGER-AGENT-BOOT\n"))}); !errors.Is(err, io.EOF) {
		t.Errorf("no answer: %v", err)
	}
}

func TestHandshakeVersionMismatch(t *testing.T) {
	// The host meets a newer agent.
	_, err := ClientHandshake(&rw{in: bytes.NewReader([]byte("BANGER-AGENT 2 v2.0.0\n"))})
	var ve *VersionError
	if !errors.As(err, &ve) || ve.Host != 1 || ve.Agent != 2 || ve.Release != "v2.0.0" {
		t.Fatalf("got %v", err)
	}
	msg := err.Error()
	for _, want := range []string{"protocol 2", "protocol 1", "v2.0.0", "rebuild the image: banger image build"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	// The agent meets an older host: it still answers with its own version.
	p := &rw{in: bytes.NewReader([]byte("BANGER-AGENT 0\n"))}
	err = ServerHandshake(p, "v1")
	if !errors.As(err, &ve) || ve.Host != 0 || ve.Agent != 1 {
		t.Fatalf("got %v", err)
	}
	if p.out.String() != "BANGER-AGENT 1 v1\n" {
		t.Errorf("answer %q", p.out.String())
	}
}

func TestHandshakeOverSocket(t *testing.T) {
	host, guest := socketpair(t)
	done := make(chan error, 1)
	go func() {
		guest.Write([]byte("left over from an earlier session\x00\x00"))
		done <- ServerHandshake(guest, "test-release")
	}()
	host.Write([]byte("junk the agent skips "))
	info, err := ClientHandshake(host)
	if err != nil || info.Release != "test-release" || info.Version != ProtocolVersion {
		t.Fatalf("%+v %v", info, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A host holding a session when the agent restarts (BootLine on the port)
// sees the session end at once instead of waiting for keepalives.
func TestBootLineEndsLiveSession(t *testing.T) {
	host, guest := socketpair(t)
	agentErr := make(chan error, 1)
	go func() {
		if err := ServerHandshake(guest, "r"); err != nil {
			agentErr <- err
			return
		}
		mux, err := yamux.Server(guest, YamuxConfig(false, io.Discard))
		if err != nil {
			agentErr <- err
			return
		}
		st, err := mux.AcceptStream()
		if err != nil {
			agentErr <- err
			return
		}
		io.Copy(st, st) // echo until the host closes
		st.Close()
		agentErr <- nil
	}()
	s, err := Dial(host)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// The session works.
	st, err := s.Open(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("ping"))
	buf := make([]byte, 4)
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q %v", buf, err)
	}
	st.Close()
	if err := <-agentErr; err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
		t.Fatal("the session ended before the boot line")
	default:
	}
	// The agent restarts: its first words on the port.
	if _, err := guest.Write([]byte(BootLine)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the session outlived the agent's boot line")
	}
	if _, err := s.Open(t.Context()); err == nil {
		t.Error("a stream opened on an ended session")
	}
}

func TestRemoteErrorIs(t *testing.T) {
	for code, sentinel := range map[rpc.Code]error{
		rpc.CodeBadRequest: rpc.ErrBadRequest, rpc.CodeNotFound: rpc.ErrNotFound,
		rpc.CodeConflict: rpc.ErrConflict, rpc.CodeForbidden: rpc.ErrForbidden,
	} {
		err := fmt.Errorf("wrapped: %w", &RemoteError{Code: code, Message: "m"})
		if !errors.Is(err, sentinel) || rpc.CodeOf(err) != code {
			t.Errorf("%s: Is %v, CodeOf %s", code, errors.Is(err, sentinel), rpc.CodeOf(err))
		}
		if errors.Is(err, rpc.ErrUnavailable) {
			t.Errorf("%s matches unavailable", code)
		}
	}
	internal := &RemoteError{Code: rpc.CodeInternal, Message: "boom"}
	if errors.Is(internal, rpc.ErrNotFound) || rpc.CodeOf(internal) != rpc.CodeInternal || internal.Error() != "boom" {
		t.Errorf("internal: %v", internal)
	}
	// What the agent answers for Go errors.
	for err, want := range map[error]rpc.Code{
		os.ErrNotExist: rpc.CodeNotFound, os.ErrPermission: rpc.CodeForbidden, os.ErrExist: rpc.CodeConflict,
		rpc.Errorf(rpc.ErrBadRequest, "x"): rpc.CodeBadRequest, errors.New("other"): rpc.CodeInternal,
		&RemoteError{Code: rpc.CodeConflict}: rpc.CodeConflict,
	} {
		if got := ErrorCode(err); got != want {
			t.Errorf("ErrorCode(%v) = %s, want %s", err, got, want)
		}
	}
}
