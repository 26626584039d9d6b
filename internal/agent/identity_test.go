package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/testutil"
)

// sshKeygen makes a key pair with ssh-keygen (as bangerd makes host keys)
// and returns the private and public files' contents.
func sshKeygen(t *testing.T, args ...string) (priv, pub []byte) {
	t.Helper()
	bin := testutil.RequireTool(t, "ssh-keygen")
	key := filepath.Join(t.TempDir(), "key")
	args = append([]string{"-q", "-C", "banger-test", "-f", key}, args...)
	if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen %q: %v\n%s", args, err, out)
	}
	priv, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	pub, err = os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return priv, pub
}

func identityJSON(t *testing.T, fields map[string]any) []byte {
	t.Helper()
	msg := map[string]any{"op": OpIdentity}
	for k, v := range fields {
		msg[k] = v
	}
	b, err := json.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeIdentity(t *testing.T) {
	priv, pub := sshKeygen(t, "-t", "ed25519", "-N", "")
	entropy := bytes.Repeat([]byte{7}, 32)
	full := map[string]any{
		"hostname": "clone-1", "mac": "02:00:0a:01:00:05", "address": "10.1.0.5/16", "gateway": "10.1.0.1",
		"dns": "10.1.0.1", "machine_id": "0123456789abcdef0123456789abcdef", "host_key": string(priv),
		"host_key_pub": string(pub), "entropy": entropy, "unix_nano": 1700000000000000000,
	}
	req, err := DecodeRequest(identityJSON(t, full))
	if err != nil {
		t.Fatal(err)
	}
	want := Request{Op: OpIdentity, Hostname: "clone-1", MAC: "02:00:0a:01:00:05", Address: "10.1.0.5/16", Gateway: "10.1.0.1",
		DNS: "10.1.0.1", MachineID: "0123456789abcdef0123456789abcdef", HostKey: string(priv), HostKeyPub: string(pub),
		Entropy: entropy, UnixNano: 1700000000000000000}
	if a, b := mustJSON(t, req), mustJSON(t, want); a != b {
		t.Errorf("decoded %s, want %s", a, b)
	}
	// Each field alone is a request.
	for k, v := range full {
		one := map[string]any{k: v}
		if k == "gateway" {
			one["address"] = full["address"]
		}
		if k == "host_key" || k == "host_key_pub" {
			one["host_key"], one["host_key_pub"] = full["host_key"], full["host_key_pub"]
		}
		if _, err := DecodeRequest(identityJSON(t, one)); err != nil {
			t.Errorf("%s alone: %v", k, err)
		}
	}
	// A public key without its newline, and IPv6 DNS, are fine.
	for _, extra := range []map[string]any{
		{"host_key": string(priv), "host_key_pub": strings.TrimSuffix(string(pub), "\n")},
		{"dns": "fd00::1"}, {"address": "10.1.0.5/32"}, {"address": "192.168.7.9/31"},
	} {
		if _, err := DecodeRequest(identityJSON(t, extra)); err != nil {
			t.Errorf("%v: %v", extra, err)
		}
	}

	otherPriv, otherPub := sshKeygen(t, "-t", "ed25519", "-N", "")
	rsaPriv, rsaPub := sshKeygen(t, "-t", "rsa", "-b", "1024", "-N", "")
	encPriv, encPub := sshKeygen(t, "-t", "ed25519", "-N", "secret")
	bad := map[string]map[string]any{
		"nothing":              {},
		"unknown field":        {"hostname": "a", "colour": "blue"},
		"another op's field":   {"hostname": "a", "path": "/etc"},
		"uppercase hostname":   {"hostname": "Clone"},
		"hostname with a dot":  {"hostname": "a.b"},
		"hostname too long":    {"hostname": strings.Repeat("a", 64)},
		"hostname with dash":   {"hostname": "-a"},
		"hostname newline":     {"hostname": "a\nb"},
		"hostname not string":  {"hostname": 5},
		"mac garbage":          {"mac": "zz:00:00:00:00:01"},
		"mac uppercase":        {"mac": "02:00:0A:01:00:05"},
		"mac dashes":           {"mac": "02-00-0a-01-00-05"},
		"mac short":            {"mac": "02:00:0a:01:00"},
		"mac eui64":            {"mac": "02:00:0a:01:00:05:06:07"},
		"mac multicast":        {"mac": "01:00:5e:00:00:01"},
		"mac broadcast":        {"mac": "ff:ff:ff:ff:ff:ff"},
		"mac zero":             {"mac": "00:00:00:00:00:00"},
		"address no prefix":    {"address": "10.1.0.5"},
		"address bad cidr":     {"address": "10.1.0.5/33"},
		"address ipv6":         {"address": "fd00::5/64"},
		"address garbage":      {"address": "ten/8"},
		"address network":      {"address": "10.1.0.0/16"},
		"address broadcast":    {"address": "10.1.255.255/16"},
		"address loopback":     {"address": "127.0.0.5/8"},
		"address zero bits":    {"address": "10.1.0.5/0"},
		"address spaces":       {"address": " 10.1.0.5/16"},
		"gateway alone":        {"gateway": "10.1.0.1"},
		"gateway outside":      {"address": "10.1.0.5/16", "gateway": "10.2.0.1"},
		"gateway is address":   {"address": "10.1.0.5/16", "gateway": "10.1.0.5"},
		"gateway ipv6":         {"address": "10.1.0.5/16", "gateway": "fd00::1"},
		"gateway garbage":      {"address": "10.1.0.5/16", "gateway": "gw"},
		"dns garbage":          {"dns": "10.1.0.1; rm -rf /"},
		"dns newline":          {"dns": "10.1.0.1\nnameserver 6.6.6.6"},
		"dns zone":             {"dns": "fe80::1%eth0"},
		"dns unspecified":      {"dns": "0.0.0.0"},
		"machine_id short":     {"machine_id": "0123456789abcdef"},
		"machine_id upper":     {"machine_id": "0123456789ABCDEF0123456789ABCDEF"},
		"machine_id zero":      {"machine_id": strings.Repeat("0", 32)},
		"machine_id newline":   {"machine_id": "0123456789abcdef0123456789abcde\n"},
		"host key alone":       {"host_key": string(priv)},
		"host pub alone":       {"host_key_pub": string(pub)},
		"host key mismatch":    {"host_key": string(priv), "host_key_pub": string(otherPub)},
		"host key mismatch 2":  {"host_key": string(otherPriv), "host_key_pub": string(pub)},
		"host key rsa":         {"host_key": string(rsaPriv), "host_key_pub": string(rsaPub)},
		"host key encrypted":   {"host_key": string(encPriv), "host_key_pub": string(encPub)},
		"host key garbage":     {"host_key": "hello", "host_key_pub": string(pub)},
		"host pub two lines":   {"host_key": string(priv), "host_key_pub": string(pub) + string(pub)},
		"host key twice":       {"host_key": string(priv) + string(priv), "host_key_pub": string(pub)},
		"entropy short":        {"entropy": bytes.Repeat([]byte{1}, 31)},
		"entropy empty":        {"entropy": ""},
		"entropy huge":         {"entropy": make([]byte, MaxEntropy+1)},
		"entropy not base64":   {"entropy": "!!!"},
		"unix_nano negative":   {"unix_nano": -1},
		"unix_nano not number": {"unix_nano": "now"},
	}
	for name, fields := range bad {
		if _, err := DecodeRequest(identityJSON(t, fields)); ErrorCode(err) != rpc.CodeBadRequest {
			t.Errorf("%s: %v, want bad_request", name, err)
		}
	}
}

// A private key whose inner public key or seed was tampered with is
// refused even when its outer public blob matches.
func TestCheckHostKeyTampered(t *testing.T) {
	priv, pub := sshKeygen(t, "-t", "ed25519", "-N", "")
	if err := CheckHostKey(priv, pub); err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(priv)
	// The private section ends with the 64-byte key (seed, public), the
	// comment "banger-test" and padding; flip a byte of the seed.
	i := bytes.LastIndex(block.Bytes, []byte("banger-test")) - 4 - 64
	for _, off := range []int{i, i + 40} { // seed, then the key's copy of the public half
		b := bytes.Clone(block.Bytes)
		b[off] ^= 1
		tampered := pem.EncodeToMemory(&pem.Block{Type: block.Type, Bytes: b})
		if err := CheckHostKey(tampered, pub); err == nil || !strings.Contains(err.Error(), "does not make host_key_pub") {
			t.Errorf("a key with byte %d flipped: %v", off, err)
		}
	}
	// The public key's blob must be ed25519's.
	f := strings.Fields(string(pub))
	blob, _ := base64.StdEncoding.DecodeString(f[1])
	short := f[0] + " " + base64.StdEncoding.EncodeToString(blob[:len(blob)-1]) + "\n"
	if err := CheckHostKey(priv, []byte(short)); err == nil {
		t.Error("a truncated public key passes")
	}
}

// Identity checks the request before it sends anything.
func TestIdentityChecksFirst(t *testing.T) {
	var sent bytes.Buffer
	rw := struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(nil), &sent}
	for _, req := range []IdentityRequest{
		{},
		{Hostname: "Bad_Name"},
		{MAC: net.HardwareAddr{1, 2, 3, 4, 5, 6}},
		{Gateway: netip.MustParseAddr("10.0.0.1")},
		{Entropy: []byte("short")},
		{HostKey: []byte("x")},
	} {
		if _, err := Identity(context.Background(), rw, req); ErrorCode(err) != rpc.CodeBadRequest {
			t.Errorf("%+v: %v, want bad_request", req, err)
		}
	}
	if sent.Len() != 0 {
		t.Errorf("sent %q", sent.Bytes())
	}
}

// What Identity sends for each field, and what it makes of the answer.
func TestIdentityRequest(t *testing.T) {
	when := time.Unix(1700000000, 5)
	req := IdentityRequest{Hostname: "clone-1", MAC: net.HardwareAddr{2, 0, 0xa, 1, 0, 5},
		Address: netip.MustParsePrefix("10.1.0.5/16"), Gateway: netip.MustParseAddr("10.1.0.1"),
		DNS: netip.MustParseAddr("10.1.0.1"), MachineID: strings.Repeat("ab", 16), Entropy: make([]byte, 32), Time: when}
	got := req.request()
	want := Request{Op: OpIdentity, Hostname: "clone-1", MAC: "02:00:0a:01:00:05", Address: "10.1.0.5/16", Gateway: "10.1.0.1",
		DNS: "10.1.0.1", MachineID: strings.Repeat("ab", 16), Entropy: make([]byte, 32), UnixNano: when.UnixNano()}
	if a, b := mustJSON(t, got), mustJSON(t, want); a != b {
		t.Errorf("sent %s, want %s", a, b)
	}
	if mustJSON(t, IdentityRequest{Hostname: "a"}.request()) != `{"op":"identity","hostname":"a"}` {
		t.Errorf("unset fields travel: %s", mustJSON(t, IdentityRequest{Hostname: "a"}.request()))
	}

	var answer bytes.Buffer
	WriteOK(&answer, IdentityResult{Applied: []IdentityStep{{StepClock, 3}, {StepHostname, 40}}, DurationUS: 1500,
		Interface: "eth0", SSHDReloaded: true})
	var sent bytes.Buffer
	rw := struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(answer.Bytes()), &sent}
	res, err := Identity(context.Background(), rw, IdentityRequest{Hostname: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(res.Steps(), ",") != "clock,hostname" || res.Duration() != 1500*time.Microsecond ||
		res.Interface != "eth0" || !res.SSHDReloaded {
		t.Errorf("%+v", res)
	}
}
