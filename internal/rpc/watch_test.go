package rpc

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// blockingHandlers registers "wait", which blocks until its context is
// done (and fails, reporting the cause), "waitok", which does the same but
// succeeds, and "hold", which returns "held" when release is closed.
// started gets a value when either begins; causes gets the cause "wait" or
// "waitok" saw, or nil when nothing cancelled it within a minute.
func blockingHandlers(s *Server, started chan<- struct{}, causes chan<- error, release <-chan struct{}) {
	wait := func(ok bool) HandlerFunc {
		return func(ctx context.Context, _ json.RawMessage) (any, error) {
			started <- struct{}{}
			select {
			case <-ctx.Done():
				causes <- context.Cause(ctx)
				if ok {
					return "done anyway", nil
				}
				return nil, ctx.Err()
			case <-time.After(time.Minute):
				causes <- nil
				return nil, errors.New("never cancelled")
			}
		}
	}
	s.Handle("wait", wait(false))
	s.Handle("waitok", wait(true))
	s.Handle("hold", func(ctx context.Context, _ json.RawMessage) (any, error) {
		started <- struct{}{}
		select {
		case <-release:
			return "held", nil
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	})
}

func recvWithin[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func TestCallCancelledWhenClientGoesAway(t *testing.T) {
	started := make(chan struct{}, 1)
	causes := make(chan error, 1)
	ts := startServer(t, func(s *Server) { blockingHandlers(s, started, causes, nil) })
	for _, tc := range []struct {
		method, opID, msg, errText string
	}{
		{"wait", "op-90e0e1", "rpc failed", "client went away; the handler returned: context canceled"},
		{"waitok", "op-90e0e2", "rpc completed", ""},
	} {
		t.Run(tc.method, func(t *testing.T) {
			c, err := net.Dial("unix", ts.socket)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write([]byte(`{"version":1,"method":"` + tc.method + `","op_id":"` + tc.opID + `"}` + "\n")); err != nil {
				t.Fatal(err)
			}
			recvWithin(t, started, "the handler to start")
			c.Close()
			if cause := recvWithin(t, causes, "the handler to return"); !errors.Is(cause, ErrClientGone) {
				t.Fatalf("handler's context cause = %v, want ErrClientGone", cause)
			}
			var line map[string]any
			eventually(t, "the call's log line", func() bool {
				for _, l := range logLinesFor(t, ts, tc.opID) {
					if l["msg"] == tc.msg {
						line = l
						return true
					}
				}
				return false
			})
			if line["cancel_cause"] != "client went away" {
				t.Fatalf("log line has no cancel_cause: %v", line)
			}
			if tc.errText != "" && (line["code"] != "unavailable" || line["error"] != tc.errText) {
				t.Fatalf("want code unavailable, error %q; got %v", tc.errText, line)
			}
		})
	}
}

func TestHalfClosedClientIsNotGone(t *testing.T) {
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	type check struct {
		revents int16
		gone    bool
	}
	checks := make(chan check, 64)
	ts := startServer(t, func(s *Server) {
		blockingHandlers(s, started, nil, release)
		s.watchObserved = func(revents int16, gone bool) {
			select {
			case checks <- check{revents, gone}:
			default:
			}
		}
	})
	conn, err := net.Dial("unix", ts.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := conn.(*net.UnixConn)
	if _, err := c.Write([]byte(`{"version":1,"method":"hold","op_id":"op-4a1fc0"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	recvWithin(t, started, "the handler to start")
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// The watch sees the half-close (the socket reads EOF) and lets the call
	// go on.
	for {
		ch := recvWithin(t, checks, "the watch to see the half-close")
		if ch.revents&unix.POLLRDHUP == 0 {
			continue
		}
		if ch.gone {
			t.Fatalf("a half-closed client was taken for gone (revents %#x)", ch.revents)
		}
		break
	}
	close(release)
	r := readReply(t, c)
	if r.Error != nil || string(r.Result) != `"held"` {
		t.Fatalf("half-closed client: got result %s error %+v", r.Result, r.Error)
	}
	for _, l := range logLinesFor(t, ts, "op-4a1fc0") {
		if l["msg"] != "rpc completed" || l["cancel_cause"] != nil {
			t.Fatalf("log line %v", l)
		}
	}
}

// Replies with files go out as before while calls are watched, also to a
// client that half-closed its side.
func TestFilesTravelWithWatchedCalls(t *testing.T) {
	ts := startServer(t, func(s *Server) {
		s.Handle("pipe", func(ctx context.Context, _ json.RawMessage) (any, error) {
			r, w, err := os.Pipe()
			if err != nil {
				return nil, err
			}
			defer w.Close()
			if _, err := w.WriteString("through the pipe"); err != nil {
				r.Close()
				return nil, err
			}
			if err := AttachFiles(ctx, r); err != nil {
				r.Close()
				return nil, err
			}
			return "sent", nil
		})
	})
	readAll := func(t *testing.T, files []*os.File) {
		t.Helper()
		if len(files) != 1 {
			t.Fatalf("got %d files, want 1", len(files))
		}
		defer files[0].Close()
		b, err := io.ReadAll(files[0])
		if err != nil || string(b) != "through the pipe" {
			t.Fatalf("read %q, %v", b, err)
		}
	}

	t.Run("CallFiles", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var res string
		files, err := ts.client.CallFiles(ctx, "pipe", nil, &res)
		if err != nil || res != "sent" {
			t.Fatalf("CallFiles: %q, %v", res, err)
		}
		readAll(t, files)
	})

	t.Run("half-closed", func(t *testing.T) {
		conn, err := net.Dial("unix", ts.socket)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		c := conn.(*net.UnixConn)
		if _, err := c.Write([]byte(`{"version":1,"method":"pipe"}` + "\n")); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(replyTimeout))
		buf := make([]byte, 4096)
		oob := make([]byte, syscall.CmsgSpace(MaxFiles*4))
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil {
			t.Fatal(err)
		}
		files, err := parseRights(oob[:oobn])
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(buf[:n]), `"result":"sent"`) {
			t.Fatalf("reply %q", buf[:n])
		}
		readAll(t, files)
	})
}
