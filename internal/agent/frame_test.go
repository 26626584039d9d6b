package agent

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	payloads := map[byte][]byte{
		KindMsg:    []byte(`{"op":"hello"}`),
		KindStdin:  nil,
		KindStdout: bytes.Repeat([]byte("x"), 40<<10), // over the one-write size
		KindStderr: []byte("e"),
		KindTar:    bytes.Repeat([]byte{0, 1, 2}, MaxPayload/3),
	}
	order := []byte{KindMsg, KindStdin, KindStdout, KindStderr, KindTar}
	for _, k := range order {
		if err := WriteFrame(&buf, k, payloads[k]); err != nil {
			t.Fatal(err)
		}
	}
	small := make([]byte, 16)
	for _, want := range order {
		k, p, err := ReadFrame(&buf, small)
		if err != nil {
			t.Fatal(err)
		}
		if k != want || !bytes.Equal(p, payloads[want]) {
			t.Errorf("frame %q: got kind %q, %d bytes, want %d", want, k, len(p), len(payloads[want]))
		}
	}
	if _, _, err := ReadFrame(&buf, nil); err != io.EOF {
		t.Errorf("at the end: %v, want io.EOF", err)
	}
	// The buffer is used when the payload fits.
	WriteFrame(&buf, KindStderr, []byte("abc"))
	_, p, _ := ReadFrame(&buf, small)
	if &p[0] != &small[0] {
		t.Error("a payload that fits was not read into buf")
	}
}

func TestFrameRefusals(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteFrame(&buf, KindTar, make([]byte, MaxPayload+1)); !errors.Is(err, ErrBadFrame) || buf.Len() != 0 {
		t.Errorf("oversized write: %v, %d bytes written", err, buf.Len())
	}
	if err := WriteFrame(&buf, 'X', nil); !errors.Is(err, ErrBadFrame) || buf.Len() != 0 {
		t.Errorf("unknown kind written: %v", err)
	}
	// A header announcing 1 MiB + 1: refused without reading (or
	// allocating) the payload.
	hdr := []byte{'T', 0x00, 0x10, 0x00, 0x01}
	if _, _, err := ReadFrame(bytes.NewReader(hdr), nil); !errors.Is(err, ErrBadFrame) {
		t.Errorf("oversized frame: %v", err)
	}
	if _, _, err := ReadFrame(bytes.NewReader([]byte{'Q', 0, 0, 0, 0}), nil); !errors.Is(err, ErrBadFrame) {
		t.Errorf("unknown kind: %v", err)
	}
	for _, cut := range [][]byte{{'M'}, {'M', 0, 0}, {'M', 0, 0, 0, 5, 'a', 'b'}} {
		if _, _, err := ReadFrame(bytes.NewReader(cut), nil); err != io.ErrUnexpectedEOF {
			t.Errorf("truncated %v: %v, want io.ErrUnexpectedEOF", cut, err)
		}
	}
}

func TestFrameReaderWriter(t *testing.T) {
	var buf bytes.Buffer
	fw := FrameWriter(&buf, KindTar)
	data := bytes.Repeat([]byte("0123456789"), 250_000) // 2.5 MB: three frames
	if n, err := fw.Write(data); err != nil || n != len(data) {
		t.Fatal(n, err)
	}
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	WriteFrame(&buf, KindMsg, []byte(`{"ok":true}`)) // what follows the tar
	got, err := io.ReadAll(FrameReader(&buf, KindTar))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
	if k, p, err := ReadFrame(&buf, nil); err != nil || k != KindMsg || string(p) != `{"ok":true}` {
		t.Errorf("the frame after the tar: %q %q %v", k, p, err)
	}

	// A stream cut before the empty frame is not a clean end.
	buf.Reset()
	WriteFrame(&buf, KindTar, []byte("partial"))
	if _, err := io.ReadAll(FrameReader(&buf, KindTar)); err != io.ErrUnexpectedEOF {
		t.Errorf("cut stream: %v", err)
	}
	// Another kind inside the stream is an error.
	buf.Reset()
	WriteFrame(&buf, KindTar, []byte("a"))
	WriteFrame(&buf, KindStdout, []byte("b"))
	if _, err := io.ReadAll(FrameReader(&buf, KindTar)); !errors.Is(err, ErrBadFrame) {
		t.Errorf("mixed kinds: %v", err)
	}
}

func TestDecodeRequest(t *testing.T) {
	good := map[string]Request{
		`{"op":"hello"}`: {Op: OpHello},
		`{"op":"exec","argv":["true"],"env":["A=1"],"dir":"/tmp","user":"nobody","stdin":true,"tty":{"rows":24,"cols":80,"term":"xterm"},"timeout_ms":5}`: {
			Op: OpExec, Argv: []string{"true"}, Env: []string{"A=1"}, Dir: "/tmp", User: "nobody", Stdin: true,
			TTY: &TTY{Rows: 24, Cols: 80, Term: "xterm"}, TimeoutMS: 5},
		`{"op":"stat","path":"/etc"}`:                 {Op: OpStat, Path: "/etc"},
		`{"op":"put","dir":"/tmp","name":"x"}`:        {Op: OpPut, Dir: "/tmp", Name: "x"},
		`{"op":"get","path":"/etc/hostname"}`:         {Op: OpGet, Path: "/etc/hostname"},
		`{"op":"connect","port":8080}`:                {Op: OpConnect, Port: 8080},
		`{"op":"set_time","unix_nano":1700000000000}`: {Op: OpSetTime, UnixNano: 1700000000000},
		`{"op":"shutdown","reboot":true}`:             {Op: OpShutdown, Reboot: true},
	}
	for in, want := range good {
		got, err := DecodeRequest([]byte(in))
		if err != nil {
			t.Errorf("%s: %v", in, err)
			continue
		}
		if a, b := mustJSON(t, got), mustJSON(t, want); a != b {
			t.Errorf("%s: decoded %s, want %s", in, a, b)
		}
	}
	bad := []string{
		``, `null`, `[]`, `{}`, `{"op":5}`, `{"op":"frobnicate"}`,
		`{"op":"hello","path":"/"}`,     // a field of another op
		`{"op":"hello","color":"blue"}`, // an unknown field
		`{"op":"exec"}`, `{"op":"exec","argv":[]}`, `{"op":"exec","argv":[""]}`,
		`{"op":"exec","argv":["a\u0000b"]}`,
		`{"op":"exec","argv":["true"],"env":["NOEQUALS"]}`,
		`{"op":"exec","argv":["true"],"env":["=v"]}`,
		`{"op":"exec","argv":["true"],"dir":"relative"}`,
		`{"op":"exec","argv":["true"],"timeout_ms":-1}`,
		`{"op":"exec","argv":["true"],"tty":{"rows":70000,"cols":1}}`,
		`{"op":"exec","argv":["true"],"tty":{"rows":1,"cols":1,"shape":"round"}}`,
		`{"op":"stat"}`, `{"op":"stat","path":"etc"}`,
		`{"op":"get","path":"/"}`, `{"op":"get","path":"//"}`,
		`{"op":"put","dir":"/tmp"}`, `{"op":"put","dir":"/tmp","name":"a/b"}`, `{"op":"put","dir":"/tmp","name":".."}`,
		`{"op":"put","dir":"tmp","name":"x"}`,
		`{"op":"connect","port":0}`, `{"op":"connect","port":65536}`,
		`{"op":"set_time"}`, `{"op":"set_time","unix_nano":-5}`,
		`{"op":"shutdown","reboot":"yes"}`,
		`{"op":"hello"} trailing`,
	}
	for _, in := range bad {
		if _, err := DecodeRequest([]byte(in)); ErrorCode(err) != "bad_request" {
			t.Errorf("%q: %v, want bad_request", in, err)
		}
	}
}

func TestDecodeControl(t *testing.T) {
	if c, err := DecodeControl([]byte(`{"signal":2}`)); err != nil || c.Signal != 2 {
		t.Errorf("signal: %+v %v", c, err)
	}
	if c, err := DecodeControl([]byte(`{"resize":{"rows":3,"cols":4}}`)); err != nil || *c.Resize != (WinSize{3, 4}) {
		t.Errorf("resize: %+v %v", c, err)
	}
	for _, in := range []string{`{}`, `{"signal":65}`, `{"signal":-1}`, `{"signal":2,"resize":{"rows":1,"cols":1}}`,
		`{"signal":2,"extra":1}`, `{"signal":2}{}`, `not json`} {
		if _, err := DecodeControl([]byte(in)); ErrorCode(err) != "bad_request" {
			t.Errorf("%q: %v, want bad_request", in, err)
		}
	}
}

func TestReplies(t *testing.T) {
	var buf bytes.Buffer
	WriteOK(&buf, StatResult{Exists: true, Mode: 0o755})
	WriteOK(&buf, nil)
	WriteError(&buf, badRequest("no such thing"))
	WriteMsg(&buf, Event{Exit: &ExitStatus{Code: 0}})
	WriteMsg(&buf, Event{Exit: &ExitStatus{Signal: 9, TimedOut: true}})
	var lines []string
	for {
		_, p, err := ReadFrame(&buf, nil)
		if err != nil {
			break
		}
		lines = append(lines, string(p))
	}
	want := []string{
		`{"ok":true,"exists":true,"dir":false,"mode":493,"size":0}`,
		`{"ok":true}`,
		`{"error":{"code":"bad_request","message":"no such thing: bad request"}}`,
		`{"exit":{"code":0}}`,
		`{"exit":{"signal":9,"timed_out":true}}`,
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("replies:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}
