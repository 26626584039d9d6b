package integration

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/tests/harness"
)

// TestRootDaemonStartsHelperAndSharesOpID: as root, bangerd starts the
// helper itself; `banger network up` makes a real bridge (in this test's
// network namespace) through it, and the daemon's and the helper's log lines
// of that call carry the same op id.
func TestRootDaemonStartsHelperAndSharesOpID(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	e := harness.NewEnv(t)
	helperSock := filepath.Join(e.Root, "helper.sock")
	e.Vars = append(e.Vars, "BANGER_HELPER_SOCKET="+helperSock, "BANGER_HELPER="+filepath.Join(harness.BinDir, "banger-helper"))
	cfg := "[network]\nbridge = \"bangert0\"\nsubnet = \"10.231.7.0/24\"\n"
	if err := os.WriteFile(filepath.Join(e.Root, "config.toml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killHelper(t, helperSock) })

	r := e.Banger("network", "up", "-o", "json")
	if r.Code != 0 {
		t.Fatalf("network up: %+v", r)
	}
	br, err := netlink.LinkByName("bangert0")
	if err != nil {
		t.Fatalf("bridge not created: %v", err)
	}
	addrs, _ := netlink.AddrList(br, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.231.7.1/24" {
		t.Fatalf("bridge addresses: %v", addrs)
	}

	daemonLog := harness.LogLines(t, filepath.Join(e.StateDir, "bangerd.log"))
	var opID string
	for _, rec := range daemonLog {
		if rec["msg"] == "rpc completed" && rec["method"] == "network.up" {
			opID, _ = rec["op_id"].(string)
		}
	}
	if opID == "" {
		t.Fatal("no network.up line in the daemon log")
	}
	helperLog := harness.LogLines(t, filepath.Join(e.StateDir, "helper.log"))
	var methods []string
	for _, rec := range linesWith(helperLog, "op_id", opID) {
		if rec["msg"] == "helper rpc completed" {
			methods = append(methods, rec["method"].(string))
		}
	}
	if strings.Join(methods, ",") != "helper.version,bridge.ensure,nat.ensure" {
		t.Fatalf("helper lines of %s: %v", opID, methods)
	}

	if r := e.Banger("network", "down"); r.Code != 0 {
		t.Fatalf("network down: %+v", r)
	}
	if _, err := netlink.LinkByName("bangert0"); err == nil {
		t.Fatal("bridge still there after network down")
	}
}

// TestRootUnprivilegedDaemonRefusedByHelper: bangerd and the CLI run as uid
// 65534; the helper (root, started by the test) does not allow that uid. The
// CLI's error, the daemon's log and the helper's log name one op id.
func TestRootUnprivilegedDaemonRefusedByHelper(t *testing.T) {
	if !testutil.InNetNS(t) {
		return
	}
	e := harness.NewEnv(t)
	for _, d := range []string{e.Root, e.StateDir, e.RunDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{e.StateDir, e.RunDir} {
		if err := os.Chown(d, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(e.Root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(e.RunDir, 0o700); err != nil { // banger trusts only a private runtime dir
		t.Fatal(err)
	}
	// The helper grants someone else, not 65534.
	helper := e.StartHelper(helperapi.Grant{User: "someone", UID: 60301, Net: 1, Subnet: "10.231.50.0/24"})
	helperLog := helper.Log

	e.Cred = &syscall.Credential{Uid: 65534, Gid: 65534}
	e.Vars = append(e.Vars, "HOME="+e.Root, "USER=nobody")
	r := e.Banger("network", "up")
	if r.Code != 8 {
		t.Fatalf("want exit 8 (forbidden), got %+v", r)
	}
	m := regexp.MustCompile(`op id: (op-[0-9a-f]{6})`).FindStringSubmatch(r.Stderr)
	if m == nil || !strings.Contains(r.Stderr, "code:  forbidden") || !strings.Contains(r.Stderr, "banger system install --user nobody") {
		t.Fatalf("CLI error lacks op id, code or hint:\n%s", r.Stderr)
	}
	opID := m[1]

	var daemonFailed bool
	for _, rec := range linesWith(harness.LogLines(t, filepath.Join(e.StateDir, "bangerd.log")), "op_id", opID) {
		if rec["msg"] == "rpc failed" && rec["method"] == "network.up" && rec["code"] == "forbidden" {
			daemonFailed = true
		}
	}
	if !daemonFailed {
		t.Fatalf("daemon log has no failed network.up with %s", opID)
	}
	var helperRefused bool
	for _, rec := range linesWith(harness.LogLines(t, helperLog), "op_id", opID) {
		if rec["msg"] == "helper rpc failed" && rec["code"] == "forbidden" {
			helperRefused = true
		}
	}
	if !helperRefused {
		t.Fatalf("helper log has no refusal with %s", opID)
	}
	// The daemon really ran as the unprivileged user.
	if fi, err := os.Stat(filepath.Join(e.StateDir, "bangerd.log")); err != nil || fi.Sys().(*syscall.Stat_t).Uid != 65534 {
		t.Fatalf("bangerd.log not written by uid 65534: %v", err)
	}
	// And nothing was created.
	if _, err := netlink.LinkByName("banger0"); err == nil {
		t.Fatal("a bridge appeared although the helper refused")
	}
}

// killHelper stops the helper a root bangerd started (it outlives bangerd).
func killHelper(t *testing.T, socket string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	v, err := helperapi.NewClient(socket).Version(ctx)
	if err != nil {
		return
	}
	_ = syscall.Kill(v.PID, syscall.SIGTERM)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && harness.Alive(v.PID) {
		time.Sleep(20 * time.Millisecond)
	}
}

func linesWith(recs []map[string]any, key, val string) []map[string]any {
	var out []map[string]any
	for _, r := range recs {
		if r[key] == val {
			out = append(out, r)
		}
	}
	return out
}
