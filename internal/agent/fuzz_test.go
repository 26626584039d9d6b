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
				if req.Op == OpIdentity {
					checkIdentityRoundTrip(t, p, req)
				}
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

// checkIdentityRoundTrip checks that an identity request that decodes is
// one the agent can apply (Request.Identity, what the server calls, takes
// it) and that the typed identity travels as the same request.
func checkIdentityRoundTrip(t *testing.T, p []byte, req Request) {
	t.Helper()
	id, err := req.Identity()
	if err != nil {
		t.Fatalf("%s decoded, but its identity does not: %v", p, err)
	}
	if again := id.request(); !reflect.DeepEqual(normal(again), normal(req)) {
		t.Fatalf("%s: identity %+v travels as %+v, not %+v", p, id, again, req)
	}
}

// fuzzHostKey is an ed25519 key pair that ssh-keygen made for the seeds
// (a test key, no host's).
const fuzzHostKey, fuzzHostKeyPub = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACDc/y+mpIEfV19qAtgoMlOSi3FxwTJUoEcEmancK2IqygAAAJA/DzAQPw8w\nEAAAAAtzc2gtZWQyNTUxOQAAACDc/y+mpIEfV19qAtgoMlOSi3FxwTJUoEcEmancK2Iqyg\nAAAECmBYFZ48wxBRBkEtQvmNJ5KyeGTVzPUYlAoRK+AW1sN9z/L6akgR9XX2oC2CgyU5KL\ncXHBMlSgRwSZqdwrYirKAAAACWZ1enotc2VlZAECAwQ=\n-----END OPENSSH PRIVATE KEY-----\n", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINz/L6akgR9XX2oC2CgyU5KLcXHBMlSgRwSZqdwrYirK fuzz-seed\n"

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

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
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
		frame(KindMsg, `{"op":"identity","host_key":`+jsonString(fuzzHostKey)+`,"host_key_pub":`+jsonString(fuzzHostKeyPub)+`}`),
		frame(KindMsg, `{"op":"identity","mac":"02:00:0a:01:00:05"}`),
		frame(KindMsg, `{"op":"identity","address":"192.168.7.9/31","dns":"fd00::1"}`),
		frame(KindMsg, `{"op":"identity","gateway":"10.1.0.1"}`),
		frame(KindMsg, `{"op":"identity","address":"10.1.0.0/16","mac":"01:00:5e:00:00:01","machine_id":"00000000000000000000000000000000"}`),
		frame(KindMsg, `{"op":"identity","host_key":"x","host_key_pub":`+jsonString(fuzzHostKeyPub)+`,"entropy":"AAAA"}`),
		frame(KindMsg, `{"op":"identity"}`),
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

// The seeds reach identity's round trip: the valid ones decode (so the
// fuzzer starts from requests checkIdentityRoundTrip sees), the others
// are refused.
func TestFuzzSeedsIdentity(t *testing.T) {
	ok, refused := 0, 0
	for _, seed := range fuzzSeeds() {
		k, p, err := ReadFrame(bytes.NewReader(seed), nil)
		if err != nil || k != KindMsg || !bytes.Contains(p, []byte(`"op":"identity"`)) {
			continue
		}
		if req, err := DecodeRequest(p); err == nil {
			checkIdentityRoundTrip(t, p, req)
			ok++
		} else {
			refused++
		}
	}
	if ok != 4 || refused != 4 {
		t.Errorf("%d identity seeds decode and %d are refused, want 4 and 4", ok, refused)
	}
}
