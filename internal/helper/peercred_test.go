package helper

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/testutil"
)

// envPeerChild tells the test binary, re-run as uid 65534, to call the
// helper on this socket and report.
const envPeerChild = "BANGER_TEST_PEER_SOCKET"

// peerChild is the child's side: call helper.version with an op id of its
// own and print both the id and the outcome.
func peerChild(sock string) {
	id := op.New()
	fmt.Printf("CHILD uid=%d op_id=%s\n", os.Getuid(), id)
	_, err := helperapi.NewClient(sock).Version(op.With(context.Background(), id))
	code := "ok"
	if err != nil {
		code = string(rpc.CodeOf(err))
	}
	fmt.Printf("CHILD code=%s err=%v\n", code, err)
}

var childLine = regexp.MustCompile(`CHILD uid=(\d+) op_id=(op-[0-9a-f]+)\n(?s:.*)CHILD code=(\S+)`)

// runAsNobody runs this test again as uid/gid 65534 from a copy of the test
// binary in dir (the build directory is root's alone), with env added.
func runAsNobody(t *testing.T, dir string, env ...string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(exe)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	cp := filepath.Join(dir, "helper.test")
	dst, err := os.OpenFile(cp, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err == nil {
		_, err = io.Copy(dst, src)
		if cerr := dst.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil && !os.IsExist(err) {
		t.Fatal(err)
	}
	cmd := exec.Command(cp, "-test.run", "^"+regexp.QuoteMeta(t.Name())+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	t.Logf("child as 65534:\n%s", out)
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	return string(out)
}

// A caller whose uid is not allowed reaches the socket (mode 0666 here) but
// is refused by the helper with code forbidden, and the helper logs the
// refusal with the op id the caller sent. An allowed uid gets through.
func TestPeerCredRefused(t *testing.T) {
	if sock := os.Getenv(envPeerChild); sock != "" {
		peerChild(sock)
		return
	}
	testutil.RequireRoot(t)
	dir, err := os.MkdirTemp("/tmp", "banger-peercred-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // traversable by 65534
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name    string
		allowed []uint32
		code    string
	}{
		{"refused", []uint32{1000}, "forbidden"},
		{"allowed", []uint32{65534}, "ok"},
	} {
		sock := filepath.Join(dir, tc.name+".sock")
		hs := startHelperAt(t, sock, 0o666, func(c *Config) { c.AllowedUIDs = tc.allowed })
		out := runAsNobody(t, dir, envPeerChild+"="+sock)
		m := childLine.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("%s: child did not report", tc.name)
		}
		if m[1] != "65534" || m[3] != tc.code {
			t.Errorf("%s: child uid %s got %s, want %s", tc.name, m[1], m[3], tc.code)
		}
		id := m[2]
		var found int
		for _, l := range hs.log.lines(t) {
			if l["op_id"] != id {
				continue
			}
			found++
			if l["method"] != helperapi.MethodVersion {
				t.Errorf("%s: log line %v", tc.name, l)
			}
			if tc.code == "forbidden" {
				if l["msg"] != "helper rpc failed" || l["code"] != "forbidden" || !strings.Contains(fmt.Sprint(l["error"]), "uid 65534") {
					t.Errorf("refusal line %v", l)
				}
			} else if l["msg"] != "helper rpc completed" {
				t.Errorf("allowed line %v", l)
			}
		}
		if found != 1 {
			t.Errorf("%s: %d log lines with op id %s, want 1:\n%s", tc.name, found, id, hs.log.String())
		}
	}
}
