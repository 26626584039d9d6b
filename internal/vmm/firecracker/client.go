package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/banger-dev/banger/internal/vmm"
)

// DefaultTimeout bounds each API request. Every pre-boot request, and
// InstanceStart itself, answers in milliseconds on a healthy Firecracker.
const DefaultTimeout = 10 * time.Second

// Client talks to one Firecracker API socket. Call Close when done with it.
type Client struct {
	// Timeout bounds each request (DefaultTimeout when zero).
	Timeout time.Duration

	socket string
	hc     *http.Client
}

// NewClient returns a client for the API socket at socket. It connects on
// the first request.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			conn, err := d.DialContext(ctx, "unix", socket)
			if err != nil {
				return nil, fmt.Errorf("%w: %w", vmm.ErrNotRunning, err)
			}
			return conn, nil
		},
		MaxIdleConns:    1,
		IdleConnTimeout: 30 * time.Second,
		// Firecracker answers uncompressed; send no Accept-Encoding.
		DisableCompression: true,
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Close drops the client's idle connection.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// APIError is a non-2xx answer from Firecracker, with the fault_message of
// its Error body.
type APIError struct {
	Method       string
	Path         string
	StatusCode   int
	FaultMessage string
}

func (e *APIError) Error() string {
	msg := e.FaultMessage
	if msg == "" {
		msg = "(no fault_message)"
	}
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.Path, e.StatusCode, http.StatusText(e.StatusCode), msg)
}

// Describe is GET /: the instance's id, state and Firecracker version.
func (c *Client) Describe(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	err := c.do(ctx, http.MethodGet, "/", nil, &info)
	return info, err
}

// Version is GET /version.
func (c *Client) Version(ctx context.Context) (string, error) {
	var v FirecrackerVersion
	err := c.do(ctx, http.MethodGet, "/version", nil, &v)
	return v.FirecrackerVersion, err
}

// PutLogger is PUT /logger.
func (c *Client) PutLogger(ctx context.Context, l Logger) error {
	return c.do(ctx, http.MethodPut, "/logger", l, nil)
}

// PutMetrics is PUT /metrics.
func (c *Client) PutMetrics(ctx context.Context, m Metrics) error {
	return c.do(ctx, http.MethodPut, "/metrics", m, nil)
}

// PutMachineConfig is PUT /machine-config.
func (c *Client) PutMachineConfig(ctx context.Context, m MachineConfiguration) error {
	return c.do(ctx, http.MethodPut, "/machine-config", m, nil)
}

// PutBootSource is PUT /boot-source.
func (c *Client) PutBootSource(ctx context.Context, b BootSource) error {
	return c.do(ctx, http.MethodPut, "/boot-source", b, nil)
}

// PutSerial is PUT /serial.
func (c *Client) PutSerial(ctx context.Context, s SerialDevice) error {
	return c.do(ctx, http.MethodPut, "/serial", s, nil)
}

// PutDrive is PUT /drives/{drive_id}.
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	if err := checkPathID("drive_id", d.DriveID); err != nil {
		return err
	}
	return c.do(ctx, http.MethodPut, "/drives/"+d.DriveID, d, nil)
}

// PutNetworkInterface is PUT /network-interfaces/{iface_id}.
func (c *Client) PutNetworkInterface(ctx context.Context, n NetworkInterface) error {
	if err := checkPathID("iface_id", n.IfaceID); err != nil {
		return err
	}
	return c.do(ctx, http.MethodPut, "/network-interfaces/"+n.IfaceID, n, nil)
}

// PutVsock is PUT /vsock.
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.do(ctx, http.MethodPut, "/vsock", v, nil)
}

// Action is PUT /actions.
func (c *Client) Action(ctx context.Context, a ActionType) error {
	return c.do(ctx, http.MethodPut, "/actions", InstanceActionInfo{ActionType: a}, nil)
}

// MachineConfig is GET /machine-config: after a snapshot load, the
// snapshot's vCPU count and memory size.
func (c *Client) MachineConfig(ctx context.Context) (MachineConfiguration, error) {
	var m MachineConfiguration
	err := c.do(ctx, http.MethodGet, "/machine-config", nil, &m)
	return m, err
}

// PatchVM is PATCH /vm: pause or resume the vCPUs of a started VM.
func (c *Client) PatchVM(ctx context.Context, state VMState) error {
	return c.do(ctx, http.MethodPatch, "/vm", VM{State: state}, nil)
}

// CreateSnapshot is PUT /snapshot/create, on a paused VM. It writes the
// whole guest memory, so it is bounded by SnapshotTimeout rather than
// Timeout when Timeout is shorter.
func (c *Client) CreateSnapshot(ctx context.Context, p SnapshotCreateParams) error {
	return c.longer(SnapshotTimeout).do(ctx, http.MethodPut, "/snapshot/create", p, nil)
}

// LoadSnapshot is PUT /snapshot/load, on a fresh Firecracker (nothing but
// the logger, metrics and serial configured). Bounded like CreateSnapshot.
func (c *Client) LoadSnapshot(ctx context.Context, p SnapshotLoadParams) error {
	return c.longer(SnapshotTimeout).do(ctx, http.MethodPut, "/snapshot/load", p, nil)
}

// SnapshotTimeout bounds PUT /snapshot/create and /snapshot/load: a full
// snapshot writes all of the guest's memory (a GiB at disk speed); a load
// maps it and is fast, but reads the state file and opens every device.
const SnapshotTimeout = 2 * time.Minute

// longer returns c with a timeout of at least d, sharing its connection.
func (c *Client) longer(d time.Duration) *Client {
	if c.Timeout >= d {
		return c
	}
	return &Client{Timeout: d, socket: c.socket, hc: c.hc}
}

// do sends one request. Errors name the method and path; a socket nobody
// answers on gives an error wrapping vmm.ErrNotRunning.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
		// A bytes.Reader gives the request a Content-Length: Firecracker's
		// HTTP server does not take chunked bodies.
		body = bytes.NewReader(b)
	}
	// The host is ignored: the transport dials the socket.
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the URL is always http://localhost/...: drop it
		}
		return fmt.Errorf("%s %s on %s: %w", method, path, c.socket, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := &APIError{Method: method, Path: path, StatusCode: resp.StatusCode}
		var fault apiError
		if json.Unmarshal(raw, &fault) == nil && fault.FaultMessage != "" {
			e.FaultMessage = fault.FaultMessage
		} else {
			e.FaultMessage = strings.TrimSpace(string(raw))
			if len(e.FaultMessage) > 512 {
				e.FaultMessage = e.FaultMessage[:512] + "..."
			}
		}
		return e
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("%s %s: decoding the answer %q: %w", method, path, raw, err)
		}
	}
	return nil
}

// checkPathID refuses an id Firecracker would refuse in a path (it takes
// letters, digits and '_'), which also keeps it from changing the path.
func checkPathID(what, id string) error {
	if id == "" {
		return fmt.Errorf("firecracker: empty %s", what)
	}
	for _, r := range id {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return fmt.Errorf("firecracker: %s %q: want letters, digits and '_'", what, id)
		}
	}
	return nil
}
