package agent

import (
	"bytes"
	"encoding/json"
	"io"
	"reflect"
	"testing"
)

// FuzzDecode feeds arbitrary bytes to what reads the wire: frames, then
// each M frame as a request, an exec control message and an answer. None
// may panic, a frame is never over MaxPayload, and a request that decodes
// encodes to one that decodes the same. The seed corpus is in
// testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			k, p, err := ReadFrame(r, nil)
			if err != nil {
				break
			}
			if len(p) > MaxPayload || !validKind(k) {
				t.Fatalf("frame %q of %d bytes accepted", k, len(p))
			}
			if k != KindMsg {
				continue
			}
			if req, err := DecodeRequest(p); err == nil {
				b, err := json.Marshal(req)
				if err != nil {
					t.Fatal(err)
				}
				again, err := DecodeRequest(b)
				if err != nil {
					t.Fatalf("%s decoded, its encoding %s does not: %v", p, b, err)
				}
				if !reflect.DeepEqual(normal(req), normal(again)) {
					t.Fatalf("%s: %+v then %+v", p, req, again)
				}
			} else if ErrorCode(err) != "bad_request" {
				t.Fatalf("%s: refused with %v, not bad_request", p, err)
			}
			if c, err := DecodeControl(p); err == nil && (c.Resize == nil) == (c.Signal == 0) {
				t.Fatalf("%s: control %+v is not exactly one thing", p, c)
			}
			var b bytes.Buffer
			WriteFrame(&b, KindMsg, p)
			readReply(&b)
		}
		// The same bytes as a tar stream's frames.
		io.Copy(io.Discard, FrameReader(bytes.NewReader(data), KindTar))
		// And as a handshake.
		ClientHandshake(&rw{in: bytes.NewReader(data)})
		ServerHandshake(&rw{in: bytes.NewReader(data)}, "fuzz")
	})
}

// normal makes empty and nil slices equal.
func normal(r Request) Request {
	if len(r.Argv) == 0 {
		r.Argv = nil
	}
	if len(r.Env) == 0 {
		r.Env = nil
	}
	return r
}

func frame(kind byte, payload string) []byte {
	var b bytes.Buffer
	WriteFrame(&b, kind, []byte(payload))
	return b.Bytes()
}

func fuzzSeeds() [][]byte {
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	return [][]byte{
		frame(KindMsg, `{"op":"hello"}`),
		frame(KindMsg, `{"op":"exec","argv":["sh","-c","echo hi"],"env":["A=1"],"dir":"/tmp","user":"nobody","stdin":true,"tty":{"rows":24,"cols":80,"term":"xterm"},"timeout_ms":1000}`),
		cat(frame(KindMsg, `{"op":"exec","argv":["cat"],"stdin":true}`), frame(KindStdin, "input"), frame(KindStdin, ""),
			frame(KindMsg, `{"signal":2}`), frame(KindMsg, `{"resize":{"rows":10,"cols":20}}`)),
		frame(KindMsg, `{"op":"stat","path":"/etc/passwd"}`),
		cat(frame(KindMsg, `{"op":"put","dir":"/tmp","name":"x"}`), frame(KindTar, "x\x00\x00\x00"), frame(KindTar, "")),
		frame(KindMsg, `{"op":"get","path":"/etc"}`),
		frame(KindMsg, `{"op":"connect","port":22}`),
		frame(KindMsg, `{"op":"set_time","unix_nano":1700000000000000000}`),
		frame(KindMsg, `{"op":"shutdown","reboot":false}`),
		frame(KindMsg, `{"op":"identity","hostname":"clone-1","mac":"02:00:0a:01:00:05","address":"10.1.0.5/16","gateway":"10.1.0.1",`+
			`"dns":"10.1.0.1","machine_id":"0123456789abcdef0123456789abcdef","entropy":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","unix_nano":1}`),
		cat(frame(KindMsg, `{"started":{"pid":42}}`), frame(KindStdout, "out"), frame(KindStdout, ""), frame(KindStderr, ""),
			frame(KindMsg, `{"exit":{"code":7}}`)),
		frame(KindMsg, `{"ok":true,"exists":true,"dir":true,"mode":493,"size":4096}`),
		frame(KindMsg, `{"error":{"code":"not_found","message":"no such file"}}`),
		frame(KindMsg, `{"op":"exec","argv":["x"],"tty":{"rows":99999}}`),
		frame(KindMsg, `{"op":"hello","op":"exec"}`),
		[]byte("BANGER-AGENT 1 v1\nBANGER-AGENT 1\n"),
		{'M', 0xff, 0xff, 0xff, 0xff},
		{'T', 0, 0, 0, 3, 'a'},
	}
}
