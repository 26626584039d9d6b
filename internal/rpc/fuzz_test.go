package rpc

import (
	"testing"

	"github.com/banger-dev/banger/internal/op"
)

// FuzzDecodeRequest: any bytes either decode into a request with a method or
// give a bad_request error; nothing panics, and a decoded op id is only
// trusted when it is well formed. The seed corpus is in testdata/fuzz.
func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"version":1,"method":"daemon.status"}`))
	f.Add([]byte(`{"version":1,"method":"vm.create.begin","params":{"name":"demo"},"op_id":"op-3f9a1c"}`))
	f.Add([]byte(`{"version":1,"method":"x","params":[1,2,3]}`))
	f.Add([]byte(`{"version":"1","method":7}`))
	f.Add([]byte(`null`))
	f.Add([]byte("{\"method\":\"\\u0000\"}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := DecodeRequest(data)
		if err != nil {
			if CodeOf(err) != CodeBadRequest {
				t.Fatalf("decode error maps to %s, want bad_request: %v", CodeOf(err), err)
			}
			return
		}
		if req.Method == "" {
			t.Fatal("decoded a request without a method")
		}
		_ = op.Valid(req.OpID)
	})
}
