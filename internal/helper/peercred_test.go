package helper

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/rpc"
)

// A caller without a grant reaches the socket (mode 0666) but is refused
// by the helper with code forbidden, and the helper logs the refusal once
// with the op id the caller sent. A user with a grant gets through and is
// told its grant.
func TestPeerCredRefused(t *testing.T) {
	hs := startHelper(t)
	for _, tc := range []struct {
		uid  uint32
		code rpc.Code
	}{
		{65534, rpc.CodeForbidden},
		{victimUID, ""},
	} {
		id := op.New()
		v, err := hs.as(t, tc.uid).Version(op.With(context.Background(), id))
		if tc.code == "" {
			if err != nil || v.UID != tc.uid || v.Grant == nil || *v.Grant != victim {
				t.Errorf("uid %d: %+v, %v", tc.uid, v, err)
			}
		} else {
			wantCode(t, fmt.Sprintf("uid %d", tc.uid), err, tc.code)
		}
		var found int
		for _, l := range hs.log.lines(t) {
			if l["op_id"] != id {
				continue
			}
			found++
			if l["method"] != helperapi.MethodVersion {
				t.Errorf("uid %d: log line %v", tc.uid, l)
			}
			if tc.code != "" {
				if l["msg"] != "helper rpc failed" || l["code"] != string(tc.code) || !strings.Contains(fmt.Sprint(l["error"]), fmt.Sprintf("uid %d", tc.uid)) {
					t.Errorf("refusal line %v", l)
				}
			} else if l["msg"] != "helper rpc completed" {
				t.Errorf("allowed line %v", l)
			}
		}
		if found != 1 {
			t.Errorf("uid %d: %d log lines with op id %s, want 1:\n%s", tc.uid, found, id, hs.log.String())
		}
	}
}
