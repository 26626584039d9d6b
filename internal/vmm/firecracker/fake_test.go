package firecracker

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// fakeAPI is a Firecracker API server for tests. It checks every PUT body
// against the spec's schema for its endpoint (specSchemas), answers 400
// with a fault_message like the real one when a body breaks it, keeps the
// little state that makes Firecracker refuse out-of-order calls, and
// records every call in order.
type fakeAPI struct {
	mu     sync.Mutex
	calls  []string                  // "PUT /drives/rootfs", in order, failed ones too
	bodies map[string]map[string]any // the last accepted body of each call
	failOn map[string]string         // "PUT /vsock" -> the fault_message to answer 400 with
	id     string

	state      string
	bootSource bool
	rootDrive  string
}

func newFakeAPI(id string) *fakeAPI {
	return &fakeAPI{id: id, bodies: map[string]map[string]any{}, failOn: map[string]string{}, state: StateNotStarted}
}

// serve listens on the unix socket path until the test ends.
func (f *fakeAPI) serve(t *testing.T, path string) {
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Errorf("fake firecracker: %v", err)
		return
	}
	srv := httptest.NewUnstartedServer(f)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
}

func (f *fakeAPI) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeAPI) Body(call string) map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bodies[call]
}

func (f *fakeAPI) FailOn(call, fault string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failOn[call] = fault
}

func fault(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"fault_message": msg})
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	call := r.Method + " " + r.URL.Path
	f.calls = append(f.calls, call)

	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/":
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{
			"app_name": "Firecracker", "id": f.id, "state": f.state, "vmm_version": "1.16.1",
		})
		return
	case r.Method == http.MethodGet && r.URL.Path == "/version":
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"firecracker_version": "1.16.1"})
		return
	case r.Method != http.MethodPut:
		fault(w, http.StatusBadRequest, "Invalid request method and/or path: "+call+".")
		return
	}
	def, idField, id, ok := endpointFor(r.URL.Path)
	if !ok {
		fault(w, http.StatusBadRequest, "Invalid request method and/or path: "+call+".")
		return
	}
	// Firecracker's HTTP server (micro_http) takes only these media types.
	for _, h := range []string{"Content-Type", "Accept"} {
		if v := r.Header.Get(h); v != "" && v != "application/json" && v != "text/plain" {
			fault(w, http.StatusBadRequest, "Unsupported value for header "+h+": "+v)
			return
		}
	}
	// The driver always sends a Content-Length; the fake takes no chunked bodies.
	if r.ContentLength < 0 || len(r.TransferEncoding) > 0 {
		fault(w, http.StatusBadRequest, "Transfer encoding not supported; send a Content-Length.")
		return
	}
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		fault(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := checkBody(def, raw); err != nil {
		fault(w, http.StatusBadRequest, err.Error())
		return
	}
	var body map[string]any
	_ = json.Unmarshal(raw, &body)
	if idField != "" {
		if err := checkPathID(idField, id); err != nil {
			fault(w, http.StatusBadRequest, "Invalid ID: "+id)
			return
		}
		if body[idField] != id {
			fault(w, http.StatusBadRequest, "The id from the path does not match the id from the body!")
			return
		}
	}
	if msg, ok := f.failOn[call]; ok {
		fault(w, http.StatusBadRequest, msg)
		return
	}
	if def == "InstanceActionInfo" {
		switch body["action_type"] {
		case string(ActionInstanceStart):
			if f.state != StateNotStarted {
				fault(w, http.StatusBadRequest, "The requested operation is not supported after starting the microVM.")
				return
			}
			if !f.bootSource {
				fault(w, http.StatusBadRequest, "Cannot start microvm without kernel configuration.")
				return
			}
			f.state = StateRunning
		default: // SendCtrlAltDel, FlushMetrics
			if f.state == StateNotStarted {
				fault(w, http.StatusBadRequest, "The requested operation is not supported before starting the microVM.")
				return
			}
		}
	} else if f.state != StateNotStarted {
		fault(w, http.StatusBadRequest, "The requested operation is not supported after starting the microVM.")
		return
	}
	switch def {
	case "BootSource":
		f.bootSource = true
	case "Drive":
		if body["is_root_device"] == true {
			if f.rootDrive != "" && f.rootDrive != id {
				fault(w, http.StatusBadRequest, "A root block device already exists!")
				return
			}
			f.rootDrive = id
		}
	}
	f.bodies[call] = body
	w.WriteHeader(http.StatusNoContent)
}
