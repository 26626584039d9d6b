package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/model"
)

// OpIdentity re-identifies a guest (docs/agent.md, "identity"): a VM made
// from a snapshot comes up with the snapshot's hostname, MAC, address,
// machine id, host key, RNG state and clock.
const OpIdentity = "identity"

// The steps of identity, in the order the agent applies them: the clock
// and the RNG before anything reads them, the host key before anything
// that lets a connection in (the network comes last), the MAC before the
// address.
const (
	StepClock     = "clock"      // unix_nano: clock_settime(CLOCK_REALTIME)
	StepEntropy   = "entropy"    // RNDADDENTROPY (credited), then RNDRESEEDCRNG
	StepMachineID = "machine_id" // /etc/machine-id
	StepHostname  = "hostname"   // sethostname(2), /etc/hostname, /etc/hosts
	StepHostKey   = "host_key"   // /etc/ssh/ssh_host_ed25519_key{,.pub}, sshd re-exec
	StepDNS       = "dns"        // /etc/resolv.conf
	StepMAC       = "mac"        // the interface's MAC (old IPv4 addresses and routes removed first when address is given too)
	StepAddress   = "address"    // IPv4 address, default route, neighbours flushed, gratuitous ARP
)

// Bounds of identity's entropy, in bytes.
const (
	MinEntropy = 32
	MaxEntropy = 4096
)

// maxHostKey bounds each of identity's key texts (an ed25519 key in
// OpenSSH format is about 400 bytes).
const maxHostKey = 16 << 10

// IdentityRequest is the identity a guest takes. Every field is optional:
// its zero value leaves that part of the guest as it is. At least one must
// be set.
type IdentityRequest struct {
	// Hostname, a VM name (model.ValidateName).
	Hostname string
	// MAC of the guest's interface: unicast, EUI-48.
	MAC net.HardwareAddr
	// Address (IPv4, with its prefix length) replaces every IPv4 address
	// and route of the guest's interface.
	Address netip.Prefix
	// Gateway of the default route: inside Address, not Address itself.
	// Only with Address.
	Gateway netip.Addr
	// DNS is the guest's one nameserver.
	DNS netip.Addr
	// MachineID: 32 lowercase hex digits, not all zero.
	MachineID string
	// HostKey and HostKeyPub are an ed25519 key pair in OpenSSH format
	// (what ssh-keygen -t ed25519 -N "" writes), unencrypted, the public
	// key that of the private one. Both or neither.
	HostKey, HostKeyPub []byte
	// Entropy, MinEntropy to MaxEntropy bytes of the host's RNG, is added to
	// the guest kernel's pool and credited, then the kernel's RNG reseeds.
	Entropy []byte
	// Time sets the guest's clock, as SetTime does.
	Time time.Time
}

// request is r as it travels.
func (r IdentityRequest) request() Request {
	req := Request{Op: OpIdentity, Hostname: r.Hostname, MachineID: r.MachineID,
		HostKey: string(r.HostKey), HostKeyPub: string(r.HostKeyPub), Entropy: r.Entropy}
	if r.MAC != nil {
		req.MAC = r.MAC.String()
	}
	if r.Address.IsValid() {
		req.Address = r.Address.String()
	}
	if r.Gateway.IsValid() {
		req.Gateway = r.Gateway.String()
	}
	if r.DNS.IsValid() {
		req.DNS = r.DNS.String()
	}
	if !r.Time.IsZero() {
		req.UnixNano = r.Time.UnixNano()
	}
	return req
}

// Identity is the identity of a decoded identity request, as the agent
// applies it: the inverse of what Identity sends (its request() is r
// again). Its error, for a request DecodeRequest did not accept, wraps
// rpc.ErrBadRequest.
func (r Request) Identity() (IdentityRequest, error) {
	if r.Op != OpIdentity {
		return IdentityRequest{}, badRequest("op %s is not identity", r.Op)
	}
	if err := r.checkIdentity(); err != nil {
		return IdentityRequest{}, err
	}
	id := IdentityRequest{Hostname: r.Hostname, MachineID: r.MachineID, Entropy: r.Entropy}
	if r.MAC != "" {
		id.MAC, _ = ParseMAC(r.MAC) // checked
	}
	if r.Address != "" {
		id.Address = netip.MustParsePrefix(r.Address) // checked
	}
	if r.Gateway != "" {
		id.Gateway = netip.MustParseAddr(r.Gateway) // checked
	}
	if r.DNS != "" {
		id.DNS = netip.MustParseAddr(r.DNS) // checked
	}
	if r.HostKey != "" {
		id.HostKey, id.HostKeyPub = []byte(r.HostKey), []byte(r.HostKeyPub)
	}
	if r.UnixNano != 0 {
		id.Time = time.Unix(0, r.UnixNano)
	}
	return id, nil
}

// IdentityStep is one applied step of identity and how long it took.
type IdentityStep struct {
	Step       string `json:"step"`
	DurationUS int64  `json:"duration_us"`
}

// IdentityResult is identity's answer: the steps applied, in order, the
// whole call's duration inside the agent, the interface the network steps
// changed, whether sshd was made to load the new host key (false when no
// sshd was running), and whether the gratuitous ARPs wait for the link's
// carrier (a restored VM's link is down during identity: the agent sends
// them as it comes up, and logs the outcome).
type IdentityResult struct {
	Applied          []IdentityStep `json:"applied"`
	DurationUS       int64          `json:"duration_us"`
	Interface        string         `json:"interface,omitempty"`
	SSHDReloaded     bool           `json:"sshd_reloaded"`
	AnnounceDeferred bool           `json:"announce_deferred,omitempty"`
}

// Steps lists the names of the applied steps.
func (r IdentityResult) Steps() []string {
	out := make([]string, len(r.Applied))
	for i, s := range r.Applied {
		out[i] = s.Step
	}
	return out
}

// Duration is the call's duration inside the agent.
func (r IdentityResult) Duration() time.Duration {
	return time.Duration(r.DurationUS) * time.Microsecond
}

// Identity gives the guest a new identity (the fields of req that are
// set). The request is checked here first, as the agent checks it (a
// *rpc error wrapping rpc.ErrBadRequest, nothing sent). A failure of the
// agent names the step that failed; the steps before it stay applied.
func Identity(ctx context.Context, rw io.ReadWriter, req IdentityRequest) (IdentityResult, error) {
	msg := req.request()
	if err := msg.check(); err != nil {
		return IdentityResult{}, err
	}
	var r IdentityResult
	err := call(ctx, rw, msg, &r)
	return r, err
}

var machineIDRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

// checkIdentity checks identity's fields; their errors wrap
// rpc.ErrBadRequest.
func (r *Request) checkIdentity() error {
	if r.Hostname == "" && r.MAC == "" && r.Address == "" && r.Gateway == "" && r.DNS == "" &&
		r.MachineID == "" && r.HostKey == "" && r.HostKeyPub == "" && r.Entropy == nil && r.UnixNano == 0 {
		return badRequest("identity: nothing to apply")
	}
	if r.Hostname != "" {
		if err := model.ValidateName("vm", r.Hostname); err != nil {
			return badRequest("identity: hostname: %v", err)
		}
	}
	if r.MAC != "" {
		if _, err := ParseMAC(r.MAC); err != nil {
			return err
		}
	}
	var prefix netip.Prefix
	if r.Address != "" {
		var err error
		if prefix, err = parseAddress(r.Address); err != nil {
			return err
		}
	}
	if r.Gateway != "" {
		if !prefix.IsValid() {
			return badRequest("identity: a gateway needs an address")
		}
		gw, err := netip.ParseAddr(r.Gateway)
		if err != nil || !gw.Is4() || gw.String() != r.Gateway {
			return badRequest("identity: gateway %q is not an IPv4 address", r.Gateway)
		}
		if !prefix.Masked().Contains(gw) || gw == prefix.Addr() {
			return badRequest("identity: gateway %s is not another address of %s", gw, prefix)
		}
	}
	if r.DNS != "" {
		a, err := netip.ParseAddr(r.DNS)
		if err != nil || a.Zone() != "" || a.String() != r.DNS || a.IsUnspecified() || a.IsMulticast() {
			return badRequest("identity: dns %q is not a nameserver address", r.DNS)
		}
	}
	if r.MachineID != "" && (!machineIDRE.MatchString(r.MachineID) || strings.Trim(r.MachineID, "0") == "") {
		return badRequest("identity: machine_id %q is not 32 lowercase hex digits (and not all zero)", r.MachineID)
	}
	if r.HostKey != "" || r.HostKeyPub != "" {
		if err := CheckHostKey([]byte(r.HostKey), []byte(r.HostKeyPub)); err != nil {
			return err
		}
	}
	if r.Entropy != nil && (len(r.Entropy) < MinEntropy || len(r.Entropy) > MaxEntropy) {
		return badRequest("identity: entropy of %d bytes: give %d to %d", len(r.Entropy), MinEntropy, MaxEntropy)
	}
	if r.UnixNano < 0 {
		return badRequest("identity: unix_nano must be positive")
	}
	return nil
}

// ParseMAC parses identity's MAC: EUI-48 as net.HardwareAddr.String
// writes it (lowercase, colons), unicast, not zero. Its error wraps
// rpc.ErrBadRequest.
func ParseMAC(s string) (net.HardwareAddr, error) {
	hw, err := net.ParseMAC(s)
	switch {
	case err != nil || len(hw) != 6 || hw.String() != s:
		return nil, badRequest("identity: mac %q is not a MAC address like 02:00:0a:00:00:05", s)
	case hw[0]&1 != 0:
		return nil, badRequest("identity: mac %s is a multicast address", s)
	case bytes.Equal(hw, make([]byte, 6)):
		return nil, badRequest("identity: mac %s is zero", s)
	}
	return hw, nil
}

// parseAddress parses identity's address: an IPv4 address of a host with
// its prefix length (1..32), as netip.Prefix.String writes it.
func parseAddress(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() || p.String() != s || p.Bits() < 1 {
		return netip.Prefix{}, badRequest("identity: address %q is not an IPv4 address with its prefix length (10.0.0.5/24)", s)
	}
	a := p.Addr()
	if a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return netip.Prefix{}, badRequest("identity: address %s is not a host's", s)
	}
	if p.Bits() <= 30 {
		network := p.Masked().Addr()
		b := network.As4()
		bcast := binary.BigEndian.Uint32(b[:]) | (1<<(32-p.Bits()) - 1)
		binary.BigEndian.PutUint32(b[:], bcast)
		if a == network || a == netip.AddrFrom4(b) {
			return netip.Prefix{}, badRequest("identity: address %s is its network's or broadcast address", s)
		}
	}
	return p, nil
}

// CheckHostKey checks an ed25519 host key pair in OpenSSH format: the
// public key one line "ssh-ed25519 BASE64 [comment]", the private key an
// unencrypted "OPENSSH PRIVATE KEY" holding one key whose public half is
// that one. sshd re-executed on a key it cannot load would not come back,
// so the agent installs none that fails this. Its error wraps
// rpc.ErrBadRequest.
func CheckHostKey(priv, pub []byte) error {
	if len(priv) == 0 || len(pub) == 0 {
		return badRequest("identity: host_key and host_key_pub go together")
	}
	if len(priv) > maxHostKey || len(pub) > maxHostKey {
		return badRequest("identity: host key over %d bytes", maxHostKey)
	}
	line, _ := bytes.CutSuffix(pub, []byte("\n"))
	if bytes.ContainsAny(line, "\r\n\x00") {
		return badRequest("identity: host_key_pub is not one line")
	}
	parts := strings.SplitN(string(line), " ", 3)
	if len(parts) < 2 || parts[0] != "ssh-ed25519" {
		return badRequest("identity: host_key_pub is not an ssh-ed25519 public key")
	}
	blob, err := base64.StdEncoding.DecodeString(parts[1])
	if err != nil {
		return badRequest("identity: host_key_pub: %v", err)
	}
	pubKey, err := ed25519Blob(blob)
	if err != nil {
		return badRequest("identity: host_key_pub: %v", err)
	}
	if err := checkPrivateKey(priv, blob, pubKey); err != nil {
		return badRequest("identity: host_key: %v", err)
	}
	return nil
}

// sshReader reads the SSH wire encoding (RFC 4251: uint32, string).
type sshReader struct {
	b   []byte
	err error
}

func (r *sshReader) uint32() uint32 {
	if r.err != nil {
		return 0
	}
	if len(r.b) < 4 {
		r.err = errors.New("truncated")
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *sshReader) string() []byte {
	n := r.uint32()
	if r.err != nil {
		return nil
	}
	if uint64(n) > uint64(len(r.b)) {
		r.err = errors.New("truncated")
		return nil
	}
	s := r.b[:n]
	r.b = r.b[n:]
	return s
}

// ed25519Blob decodes an ssh-ed25519 public key blob.
func ed25519Blob(blob []byte) (ed25519.PublicKey, error) {
	r := &sshReader{b: blob}
	typ, key := r.string(), r.string()
	switch {
	case r.err != nil:
		return nil, fmt.Errorf("public key blob: %v", r.err)
	case string(typ) != "ssh-ed25519" || len(key) != ed25519.PublicKeySize || len(r.b) != 0:
		return nil, errors.New("not an ssh-ed25519 public key blob")
	}
	return ed25519.PublicKey(key), nil
}

// checkPrivateKey checks the "openssh-key-v1" format of PROTOCOL.key:
// cipher and kdf "none", one key, its public blob pubBlob, and in the
// private section equal check words, the key type, the public key and a
// 64-byte private key whose seed makes that public key.
func checkPrivateKey(priv, pubBlob []byte, pubKey ed25519.PublicKey) error {
	block, rest := pem.Decode(priv)
	if block == nil || block.Type != "OPENSSH PRIVATE KEY" || len(block.Headers) != 0 || len(bytes.TrimSpace(rest)) != 0 {
		return errors.New("not one OPENSSH PRIVATE KEY block")
	}
	const magic = "openssh-key-v1\x00"
	if !bytes.HasPrefix(block.Bytes, []byte(magic)) {
		return errors.New("not in openssh-key-v1 format")
	}
	r := &sshReader{b: block.Bytes[len(magic):]}
	cipher, kdf, _, n := r.string(), r.string(), r.string(), r.uint32()
	if r.err == nil && (string(cipher) != "none" || string(kdf) != "none") {
		return errors.New("encrypted (make it with -N '')")
	}
	if r.err == nil && n != 1 {
		return fmt.Errorf("%d keys, want 1", n)
	}
	blob, private := r.string(), r.string()
	if r.err != nil {
		return r.err
	}
	if len(r.b) != 0 {
		return errors.New("trailing data")
	}
	if !bytes.Equal(blob, pubBlob) {
		return errors.New("it is not host_key_pub's private key")
	}
	p := &sshReader{b: private}
	check1, check2 := p.uint32(), p.uint32()
	typ, pk, sk := p.string(), p.string(), p.string()
	p.string() // comment
	if p.err != nil {
		return fmt.Errorf("private section: %v", p.err)
	}
	for i, c := range p.b { // padding: 1, 2, 3, ...
		if c != byte(i+1) {
			return errors.New("private section: bad padding")
		}
	}
	switch {
	case check1 != check2:
		return errors.New("private section: check words differ")
	case string(typ) != "ssh-ed25519" || !bytes.Equal(pk, pubKey) || len(sk) != ed25519.PrivateKeySize:
		return errors.New("private section: not the ed25519 key of host_key_pub")
	case !bytes.Equal(ed25519.NewKeyFromSeed(sk[:ed25519.SeedSize]).Public().(ed25519.PublicKey), pubKey),
		!bytes.Equal(sk[ed25519.SeedSize:], pubKey):
		return errors.New("private section: the private key does not make host_key_pub")
	}
	return nil
}
