package firecracker

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// rawCall sends one request to the fake as any HTTP client could, headers
// and all, and returns the status and the fault message.
func rawCall(t *testing.T, sock, method, path, body string, header map[string]string) (int, string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	defer hc.CloseIdleConnections()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://localhost"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var e apiError
	_ = json.Unmarshal(raw, &e)
	return resp.StatusCode, e.FaultMessage
}

// The fake answers as Firecracker 1.16 does: its routing and path checks
// (parsed_request.rs, request/*.rs: the path's id is checked before the
// body is read), its deserializer (unknown fields and variants refused,
// `warn` a log level, Accept values it does not know ignored) and its
// state rules, with upstream's fault messages. The expected texts are
// copied from src/firecracker/src/api_server and src/vmm/src at v1.16.1.
// serde's own messages are matched by prefix: the fake lists the expected
// fields sorted, not in declaration order, and leaves out serde_json's
// " at line L column C".
func TestFakeAnswersAsFirecracker(t *testing.T) {
	h := newHarness(t)
	h.api.strict = false // these bodies are meant to be wrong
	h.api.serve(t, h.spec.APISocket)
	sock := h.spec.APISocket
	const de = "An error occurred when deserializing the json body of a request: "
	for _, tc := range []struct {
		method, path, body string
		header             map[string]string
		status             int
		fault              string // the whole message; "prefix..." matches a prefix
	}{
		// Routing and path checks, word for word.
		{"PUT", "/logger", "", nil, 400, "Empty PUT request."},
		{"PATCH", "/vm", "", nil, 400, "Empty PATCH request."},
		{"GET", "/", `{}`, nil, 400, "GET request cannot have a body."},
		{"PUT", "/nope", `{}`, nil, 400, "Invalid request method and/or path: PUT nope."},
		{"POST", "/actions", `{}`, nil, 400, "Invalid request method and/or path: POST actions."},
		{"PUT", "/drives", `{}`, nil, 400, "The ID cannot be empty."},
		{"PUT", "/drives/", `{}`, nil, 400, "The ID cannot be empty."},
		// The id is checked before the body: a bad id with a bad body
		// is refused for the id.
		{"PUT", "/drives/a-b", `not json`, nil, 400, "API Resource IDs can only contain alphanumeric characters and underscores."},
		{"PUT", "/network-interfaces/eth.0", `{"x":1}`, nil, 400, "API Resource IDs can only contain alphanumeric characters and underscores."},
		{"PUT", "/drives/rootfs", `{"drive_id":"work","is_root_device":true,"path_on_host":"root.ext4","is_read_only":false}`, nil, 400,
			"The id from the path does not match the id from the body!"},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth1","host_dev_name":"tap0"}`, nil, 400,
			"The id from the path [eth0] does not match the id from the body [eth1]!"},
		{"PUT", "/snapshot", `{}`, nil, 400, "Missing snapshot operation type."},
		{"PUT", "/snapshot/save", `{}`, nil, 400, "Invalid request method and/or path: PUT /snapshot/save."},
		{"PUT", "/snapshot/load", `{"snapshot_path":"s"}`, nil, 400, de + "missing field: either `mem_backend` or `mem_file_path` is required."},
		{"PUT", "/snapshot/load", `{"snapshot_path":"s","mem_file_path":"m","mem_backend":{"backend_type":"File","backend_path":"m"}}`, nil, 400,
			de + "too many fields: either `mem_backend` or `mem_file_path` exclusively is required."},
		// The deserializer.
		{"PUT", "/boot-source", `{"kernel_image_path":"vmlinux","kernel_args":"x"}`, nil, 400, de + "unknown field `kernel_args`, expected one of ..."},
		{"PUT", "/machine-config", `{"vcpu_count":2}`, nil, 400, de + "missing field `mem_size_mib`."},
		{"PUT", "/machine-config", `{"vcpu_count":"2","mem_size_mib":512}`, nil, 400, de + "invalid type: string \"2\"..."},
		{"PUT", "/actions", `{"action_type":"Reboot"}`, nil, 400, de + "unknown variant `Reboot`..."},
		{"PUT", "/logger", `{"level":"Verbose"}`, nil, 400, de + "Invalid LevelFilter."},
		{"PUT", "/logger", `{"level":"warn"}`, nil, 204, ""},
		{"PUT", "/logger", `{"level":"WARNING","show_level":true}`, nil, 204, ""},
		// Accept and Content-Type values micro_http does not know are
		// skipped, not refused.
		{"PUT", "/metrics", `{"metrics_path":"metrics.json"}`, map[string]string{"Accept": "application/xml", "Content-Type": "text/x-whatever"}, 204, ""},
		{"GET", "/version", "", map[string]string{"Accept": "*/*"}, 200, ""},
		// Checks made after deserializing, in Firecracker's words.
		{"PUT", "/machine-config", `{"vcpu_count":64,"mem_size_mib":512}`, nil, 400,
			"Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled."},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"02-00-00-00-00-01"}`, nil, 400, de + "The provided MAC address is invalid."},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap-0123456789ab"}`, nil, 400,
			"Network config error: Could not create the network device: Open tap device failed: Invalid interface name"},
		// Pre-boot state rules.
		{"PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, nil, 400, "The requested operation is not supported before starting the microVM."},
		{"PATCH", "/vm", `{"state":"Paused"}`, nil, 400, "The requested operation is not supported before starting the microVM."},
		{"PUT", "/snapshot/create", `{"snapshot_path":"s","mem_file_path":"m"}`, nil, 400, "The requested operation is not supported before starting the microVM."},
		// PUT /balloon exists (a boot resource banger does not use).
		{"PUT", "/balloon", `{"amount_mib":1}`, nil, 400, de + "missing field `deflate_on_oom`."},
		{"PUT", "/balloon", `{"amount_mib":0,"deflate_on_oom":true}`, nil, 204, ""},
		// Which, as any boot resource, forbids a snapshot load after it.
		{"PUT", "/snapshot/load", `{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m"}}`, nil, 400,
			"Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources."},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`, nil, 400, "Start microvm error: Cannot start microvm without kernel configuration."},
		{"PUT", "/boot-source", `{"kernel_image_path":"missing"}`, nil, 400, "Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)"},
		{"PUT", "/boot-source", `{"kernel_image_path":"vmlinux"}`, nil, 204, ""},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`, nil, 204, ""},
		// Post-boot.
		{"PUT", "/logger", `{"level":"Info"}`, nil, 400, "The requested operation is not supported after starting the microVM."},
		{"PUT", "/drives/extra", `{"drive_id":"extra","is_root_device":false,"path_on_host":"work.ext4","is_read_only":false}`, nil, 400, "PCI is not enabled"},
		{"PUT", "/snapshot/create", `{"snapshot_path":"s","mem_file_path":"m"}`, nil, 400,
			"Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running"},
		{"PATCH", "/vm", `{"state":"Stopped"}`, nil, 400, de + "unknown variant `Stopped`..."},
		{"PATCH", "/vm", `{"state":"Paused"}`, nil, 204, ""},
		{"PUT", "/snapshot/create", `{"snapshot_path":"s","mem_file_path":"m","snapshot_type":"Full"}`, nil, 204, ""},
	} {
		status, fault := rawCall(t, sock, tc.method, tc.path, tc.body, tc.header)
		ok := status == tc.status
		if p, isPrefix := strings.CutSuffix(tc.fault, "..."); isPrefix {
			ok = ok && strings.HasPrefix(fault, p)
		} else {
			ok = ok && fault == tc.fault
		}
		if !ok {
			t.Errorf("%s %s %s: %d %q\n want %d %q", tc.method, tc.path, tc.body, status, fault, tc.status, tc.fault)
		}
	}
	for _, p := range []string{"s", "m"} {
		if _, err := os.Stat(filepath.Join(h.dir, p)); err != nil {
			t.Errorf("the snapshot's file %s, relative to Firecracker's directory: %v", p, err)
		}
	}
}

// The fake of an older release does not know the fields later ones
// added: 1.14 refuses vsock_override and clock_realtime (1.16's) as
// unknown fields, as its serde would; 1.16 takes them.
func TestFakeKnowsFieldsByRelease(t *testing.T) {
	body := `{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m"},"vsock_override":{"uds_path":"v.sock"}}`
	for _, tc := range []struct {
		version string
		want    string
	}{
		{"1.14.2", "An error occurred when deserializing the json body of a request: unknown field `vsock_override`"},
		{"1.16.1", "Load snapshot error: Failed to restore from snapshot: Failed to get snapshot state from file: Failed to open snapshot file: No such file or directory (os error 2)"},
	} {
		h := newHarness(t)
		h.api.version = tc.version
		h.api.serve(t, h.spec.APISocket)
		if _, fault := rawCall(t, h.spec.APISocket, "PUT", "/snapshot/load", body, nil); !strings.HasPrefix(fault, tc.want) {
			t.Errorf("firecracker %s: %q, want %q", tc.version, fault, tc.want)
		}
		if _, fault := rawCall(t, h.spec.APISocket, "PUT", "/serial", `{"serial_out_path":"c","rate_limiter":{}}`, nil); (tc.version == "1.14.2") != strings.Contains(fault, "unknown field `rate_limiter`") {
			t.Errorf("firecracker %s: serial rate_limiter: %q", tc.version, fault)
		}
	}
}
