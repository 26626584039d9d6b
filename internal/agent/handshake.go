package agent

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ProtocolVersion is the version of docs/agent.md this package speaks.
const ProtocolVersion = 1

// PortName is the name of the agent's virtio-serial port (qemu).
const PortName = "banger.agent"

// VsockPort is the AF_VSOCK port the agent listens on (Firecracker).
const VsockPort = 1024

// BootLine is what the agent writes once on the serial port when it starts,
// so that a host holding the session of the agent's previous boot fails at
// once (yamux reads it as a protocol error).
const BootLine = "BANGER-AGENT-BOOT\n"

// magic starts both handshake lines; the space tells them from BootLine.
const magic = "BANGER-AGENT "

// maxLine bounds a handshake line after magic; a longer one is junk.
const maxLine = 256

// Info is what the agent announced in the handshake.
type Info struct {
	Version int    // its protocol version
	Release string // its release (version.String() of its build)
}

// VersionError is a handshake between two protocol versions. Its message
// names both and the fix.
type VersionError struct {
	Host    int    // the protocol version of the host side
	Agent   int    // the protocol version of the agent
	Release string // the agent's release
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("banger-agent %s in the guest speaks protocol %d, this banger speaks protocol %d: "+
		"rebuild the image: banger image build --name IMAGE (it installs this release's agent)", e.Release, e.Agent, e.Host)
}

// ClientHandshake is the host's side of the handshake on a fresh stream:
// it sends its version, then skips anything the stream holds before the
// agent's answer (bytes an earlier session left behind, BootLine). An agent
// of another version is a *VersionError. It reads nothing past the
// answer's newline. It does not time out; the caller bounds it (Dial
// closes the stream when its context ends).
func ClientHandshake(rw io.ReadWriter) (Info, error) {
	if _, err := fmt.Fprintf(rw, "%s%d\n", magic, ProtocolVersion); err != nil {
		return Info{}, fmt.Errorf("sending the agent handshake: %w", err)
	}
	for {
		line, err := readMagicLine(rw)
		if err != nil {
			return Info{}, fmt.Errorf("reading the agent's handshake: %w", err)
		}
		vs, release, _ := strings.Cut(line, " ")
		v, err := strconv.Atoi(vs)
		if err != nil || v < 0 || strings.ContainsAny(release, " \t\r") {
			continue // not an answer: junk that happened to hold magic
		}
		if release == "" {
			release = "unknown"
		}
		info := Info{Version: v, Release: release}
		if v != ProtocolVersion {
			return info, &VersionError{Host: ProtocolVersion, Agent: v, Release: release}
		}
		return info, nil
	}
}

// ServerHandshake is the agent's side: it skips anything before the host's
// line, answers with its own version and release, and returns a
// *VersionError if the host speaks another version (the caller then closes
// the stream). It reads nothing past the host line's newline.
func ServerHandshake(rw io.ReadWriter, release string) error {
	release = sanitizeRelease(release)
	for {
		line, err := readMagicLine(rw)
		if err != nil {
			return fmt.Errorf("waiting for the host's handshake: %w", err)
		}
		v, err := strconv.Atoi(line)
		if err != nil || v < 0 {
			continue
		}
		if _, err := fmt.Fprintf(rw, "%s%d %s\n", magic, ProtocolVersion, release); err != nil {
			return fmt.Errorf("answering the host's handshake: %w", err)
		}
		if v != ProtocolVersion {
			return &VersionError{Host: v, Agent: ProtocolVersion, Release: release}
		}
		return nil
	}
}

// sanitizeRelease makes release one non-empty word.
func sanitizeRelease(release string) string {
	release = strings.Map(func(r rune) rune {
		if r <= ' ' || r == 0x7f {
			return '_'
		}
		return r
	}, release)
	if release == "" {
		return "unknown"
	}
	return release
}

// readMagicLine reads r one byte at a time (so that nothing after the line
// is consumed) until magic, then returns the rest of the line without its
// newline. A line longer than maxLine is skipped and the search goes on.
func readMagicLine(r io.Reader) (string, error) {
	var b [1]byte
	next := func() (byte, error) {
		for {
			n, err := r.Read(b[:])
			if n == 1 {
				return b[0], nil
			}
			if err != nil {
				return 0, err
			}
		}
	}
	for {
		matched := 0
		for matched < len(magic) {
			c, err := next()
			if err != nil {
				return "", err
			}
			switch {
			case c == magic[matched]:
				matched++
			case c == magic[0]: // magic has a single 'B'
				matched = 1
			default:
				matched = 0
			}
		}
		var line []byte
		for {
			c, err := next()
			if err != nil {
				return "", err
			}
			if c == '\n' {
				s := strings.TrimSuffix(string(line), "\r")
				if i := strings.LastIndex(s, magic); i >= 0 {
					s = s[i+len(magic):] // junk ending in magic came first
				}
				return s, nil
			}
			line = append(line, c)
			if len(line) > maxLine {
				break // junk; search again
			}
		}
	}
}
