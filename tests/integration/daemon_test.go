// Package integration drives the real banger and bangerd binaries, built
// once per test run, against a private state and runtime directory. It needs
// neither root nor VMs.
package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-dev/banger/tests/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

func TestStatusStartsDaemonAndKill9Recovers(t *testing.T) {
	e := harness.NewEnv(t)
	if r := e.Banger("daemon", "stop"); r.Code != 0 || !strings.Contains(r.Stdout, "not running") {
		t.Fatalf("stop with no daemon: %+v", r)
	}

	st := e.Status()
	if st.PID <= 0 || !harness.Alive(st.PID) {
		t.Fatalf("status reports pid %d, not alive", st.PID)
	}
	if st.Socket != filepath.Join(e.RunDir, "bangerd.sock") || st.StateDir != e.StateDir {
		t.Fatalf("paths: %+v", st)
	}
	if st.SchemaVersion < 1 || st.DatabasePath != filepath.Join(e.StateDir, "state.db") {
		t.Fatalf("database: %+v", st)
	}
	fi, err := os.Stat(st.Socket)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v %v", fi.Mode(), err)
	}
	// The daemon runs in its own session, detached from the CLI.
	if sid, _ := getsid(st.PID); sid != st.PID {
		t.Fatalf("bangerd sid = %d, want its own session %d", sid, st.PID)
	}
	if again := e.Status(); again.PID != st.PID {
		t.Fatalf("second status started another daemon: %d vs %d", again.PID, st.PID)
	}

	// kill -9: the next CLI call starts a fresh daemon.
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	harness.WaitDead(t, st.PID)
	st2 := e.Status()
	if st2.PID == st.PID || !harness.Alive(st2.PID) {
		t.Fatalf("after kill -9: pid %d (old %d)", st2.PID, st.PID)
	}

	// A second bangerd refuses to start while one runs.
	cmd := exec.Command(filepath.Join(harness.BinDir, "bangerd"), "--log", "-")
	cmd.Env = e.Vars
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || !strings.Contains(string(out), fmt.Sprintf("another bangerd (pid %d)", st2.PID)) {
		t.Fatalf("second bangerd: %v\n%s", err, out)
	}

	// stop ends it cleanly and removes the socket.
	if r := e.Banger("daemon", "stop"); r.Code != 0 {
		t.Fatalf("stop: %+v", r)
	}
	harness.WaitDead(t, st2.PID)
	if _, err := os.Stat(st2.Socket); !os.IsNotExist(err) {
		t.Fatalf("socket left after stop: %v", err)
	}
}

func TestSIGTERMShutsDownCleanly(t *testing.T) {
	e := harness.NewEnv(t)
	st := e.Status()
	if err := syscall.Kill(st.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	harness.WaitDead(t, st.PID)
	logs := e.Banger("daemon", "logs", "-o", "json")
	if !strings.Contains(logs.Stdout, `"msg":"bangerd stopped"`) {
		t.Fatalf("no clean-stop line in log:\n%s", logs.Stdout)
	}
}

func TestErrorsCarryOpIDIntoTheLog(t *testing.T) {
	e := harness.NewEnv(t)
	e.Status()
	// An unknown log op id is a usage error, exit 2.
	if r := e.Banger("daemon", "logs", "--op", "bogus"); r.Code != 2 {
		t.Fatalf("bad --op: %+v", r)
	}
	// daemon status -o json: every daemon log line of that call has its op id.
	r := e.Banger("daemon", "status")
	if r.Code != 0 {
		t.Fatal(r)
	}
	logs := e.Banger("daemon", "logs", "-o", "json")
	var ids []string
	for _, line := range strings.Split(strings.TrimSpace(logs.Stdout), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line not JSON: %q", line)
		}
		if rec["msg"] == "rpc completed" && rec["method"] == "daemon.status" {
			id, _ := rec["op_id"].(string)
			if id == "" {
				t.Fatalf("rpc line without op id: %v", rec)
			}
			ids = append(ids, id)
		}
	}
	if len(ids) < 2 {
		t.Fatalf("want daemon.status lines for each call, got %v", ids)
	}
	// --op shows exactly the lines of one op.
	one := e.Banger("daemon", "logs", "--op", ids[0], "-o", "json")
	for _, line := range strings.Split(strings.TrimSpace(one.Stdout), "\n") {
		if !strings.Contains(line, `"op_id":"`+ids[0]+`"`) {
			t.Fatalf("--op %s printed a foreign line: %s", ids[0], line)
		}
	}
}

func getsid(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+2:])
	var sid int
	_, err = fmt.Sscanf(f[3], "%d", &sid)
	return sid, err
}
