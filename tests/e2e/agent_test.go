package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/tests/harness"
)

// TestAgent drives one VM through its guest agent, as a user would, with
// the real CLI: create is ready at the agent's answer; vm exec's exit codes
// and signals, 64 MiB of stdout with stderr apart, stdin, a terminal that
// reports its size and follows a resize, ctrl-c; vm cp both ways of a file
// and a tree; vm port-forward to an HTTP server in the guest, reached from
// the host; and exec again after bangerd is killed with -9 and after the
// guest reboots.
func TestAgent(t *testing.T) {
	requireE2E(t)
	image := ensureImage(t)
	if !testutil.InNetNS(t) {
		return
	}
	e := newVMEnv(t, image)
	e.MustBanger("vm", "create", "--name", "ag")
	var info api.VMInfo
	e.JSON(&info, "vm", "show", "ag")
	if !info.Agent {
		t.Fatalf("the test image has no agent: %+v", info)
	}
	// The create is ready at the agent's answer; the first create of the
	// default size then saves the image's warm template.
	last := info.Runtime.LastBoot[len(info.Runtime.LastBoot)-1]
	if last.Name == "template" {
		last = info.Runtime.LastBoot[len(info.Runtime.LastBoot)-2]
	}
	if last.Name != "agent ready" || !strings.Contains(last.Detail, "banger-agent") {
		t.Fatalf("create's last stages: %+v", info.Runtime.LastBoot)
	}
	t.Logf("create: %v", info.Runtime.LastBoot)

	t.Run("exit codes", func(t *testing.T) {
		for _, tc := range []struct {
			argv []string
			code int
		}{
			{[]string{"true"}, 0},
			{[]string{"sh", "-c", "exit 7"}, 7},
			{[]string{"sh", "-c", "kill -TERM $$"}, 128 + 15},
		} {
			r := e.Banger(append([]string{"vm", "exec", "ag", "--"}, tc.argv...)...)
			if r.Code != tc.code {
				t.Errorf("%v: exit %d, want %d (%s)", tc.argv, r.Code, tc.code, r)
			}
		}
		r := e.Banger("vm", "exec", "ag", "--", "no-such-command")
		if r.Code == 0 || !strings.Contains(r.Stderr, "not_found") || !strings.Contains(r.Stderr, "op id:") || !strings.Contains(r.Stderr, "hint:") {
			t.Errorf("a missing command: %s", r)
		}
	})

	t.Run("64 MiB of stdout, stderr apart", func(t *testing.T) {
		cmd := e.Command("vm", "exec", "ag", "--", "sh", "-c",
			"head -c 67108864 /dev/urandom | tee /tmp/big | sha256sum >&2; sha256sum /tmp/big >&2; cat /tmp/big")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		n, _ := io.Copy(h, out)
		if err := cmd.Wait(); err != nil {
			t.Fatalf("exec: %v\n%s", err, stderr.String())
		}
		sum := hex.EncodeToString(h.Sum(nil))
		if n != 64<<20 || !strings.Contains(stderr.String(), sum) {
			t.Fatalf("%d bytes with sha256 %s; the guest's stderr said:\n%s", n, sum, stderr.String())
		}
	})

	t.Run("stdin", func(t *testing.T) {
		cmd := e.Command("vm", "exec", "ag", "-i", "--", "sha256sum")
		data := bytes.Repeat([]byte("banger\n"), 300000)
		cmd.Stdin = bytes.NewReader(data)
		out, err := cmd.Output()
		want := sha256.Sum256(data)
		if err != nil || !strings.HasPrefix(string(out), hex.EncodeToString(want[:])) {
			t.Fatalf("stdin through: %q %v", out, err)
		}
	})

	t.Run("terminal size, resize and ctrl-c", func(t *testing.T) {
		cmd := e.Command("vm", "exec", "ag", "-it", "--", "sh", "-c",
			`stty size; trap 'stty size' WINCH; echo ready; while :; do sleep 0.1; done`)
		tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 33, Cols: 111})
		if err != nil {
			t.Fatal(err)
		}
		defer tty.Close()
		lines := make(chan string, 16)
		go func() {
			sc := bufio.NewScanner(tty)
			for sc.Scan() {
				lines <- strings.TrimSpace(sc.Text())
			}
			close(lines)
		}()
		expect := func(want string) {
			t.Helper()
			deadline := time.After(60 * time.Second)
			for {
				select {
				case l, ok := <-lines:
					if !ok {
						t.Fatalf("the terminal closed before %q", want)
					}
					if l == want {
						return
					}
				case <-deadline:
					t.Fatalf("no %q from the guest's terminal", want)
				}
			}
		}
		expect("33 111")
		expect("ready")
		if err := pty.Setsize(tty, &pty.Winsize{Rows: 44, Cols: 122}); err != nil {
			t.Fatal(err)
		}
		expect("44 122")
		tty.Write([]byte{3}) // ctrl-c, through the raw terminal to the guest's
		err = cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 128+int(syscall.SIGINT) {
			t.Fatalf("after ctrl-c: %v, want exit %d", err, 128+int(syscall.SIGINT))
		}
	})

	t.Run("a signal to the CLI reaches the command", func(t *testing.T) {
		cmd := e.Command("vm", "exec", "ag", "--", "sh", "-c", "echo started; exec sleep 600")
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		bufio.NewReader(out).ReadString('\n')
		cmd.Process.Signal(syscall.SIGINT)
		err := cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 128+int(syscall.SIGINT) {
			t.Fatalf("after SIGINT: %v", err)
		}
	})

	t.Run("cp", func(t *testing.T) {
		dir := t.TempDir()
		file := filepath.Join(dir, "data.bin")
		writeMode(t, file, 5<<20, 0o640)
		tree := filepath.Join(dir, "tree")
		os.MkdirAll(filepath.Join(tree, "sub", "deeper"), 0o750)
		writeMode(t, filepath.Join(tree, "a"), 1000, 0o600)
		writeMode(t, filepath.Join(tree, "sub", "deeper", "b"), 70000, 0o755)
		os.Symlink("sub/deeper/b", filepath.Join(tree, "link"))

		e.MustBanger("vm", "cp", file, "ag:/root/")
		e.MustBanger("vm", "cp", "-r", tree, "ag:/root/tree")
		r := e.MustBanger("vm", "exec", "ag", "--", "sh", "-c",
			"cd /root && sha256sum data.bin tree/a tree/sub/deeper/b && stat -c '%a %n' data.bin tree/a tree/sub/deeper/b tree/sub && readlink tree/link")
		for _, want := range []string{sha(t, file) + "  data.bin", sha(t, filepath.Join(tree, "a")) + "  tree/a",
			"640 data.bin", "600 tree/a", "755 tree/sub/deeper/b", "750 tree/sub", "sub/deeper/b"} {
			if !strings.Contains(r.Stdout, want) {
				t.Errorf("in the guest, want %q:\n%s", want, r.Stdout)
			}
		}
		back := filepath.Join(dir, "back")
		e.MustBanger("vm", "cp", "ag:/root/data.bin", filepath.Join(dir, "data.back"))
		e.MustBanger("vm", "cp", "-r", "ag:/root/tree", back)
		if sha(t, filepath.Join(dir, "data.back")) != sha(t, file) || sha(t, filepath.Join(back, "sub", "deeper", "b")) != sha(t, filepath.Join(tree, "sub", "deeper", "b")) {
			t.Error("copied back, the files differ")
		}
		if fi, err := os.Stat(filepath.Join(back, "sub", "deeper", "b")); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("mode after the round trip: %v %v", fi, err)
		}
		if l, err := os.Readlink(filepath.Join(back, "link")); err != nil || l != "sub/deeper/b" {
			t.Errorf("symlink after the round trip: %q %v", l, err)
		}
		// Bad input: a missing guest path, a directory without -r; nothing is left.
		if r := e.Banger("vm", "cp", "ag:/no/such/file", dir+"/x"); r.Code == 0 || !strings.Contains(r.Stderr, "not_found") {
			t.Errorf("missing guest path: %s", r)
		}
		if r := e.Banger("vm", "cp", tree, "ag:/root/"); r.Code != 2 {
			t.Errorf("a directory without -r: %s", r)
		}
		if _, err := os.Stat(dir + "/x"); !os.IsNotExist(err) {
			t.Errorf("a failed copy left %s/x", dir)
		}
	})

	t.Run("port-forward", func(t *testing.T) {
		e.MustBanger("vm", "exec", "ag", "--", "sh", "-c",
			"mkdir -p /root/www && echo hello-from-the-guest > /root/www/index.html && busybox httpd -p 127.0.0.1:8080 -h /root/www")
		cmd := e.Command("vm", "port-forward", "ag", "0:8080")
		out, _ := cmd.StdoutPipe()
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Signal(syscall.SIGINT); cmd.Wait() }()
		line, _ := bufio.NewReader(out).ReadString('\n')
		m := regexp.MustCompile(`^forwarding (127\.0\.0\.1:\d+) -> ag:8080`).FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("port-forward said %q (%s)", line, stderr.String())
		}
		for i := 0; i < 3; i++ {
			resp, err := http.Get("http://" + m[1] + "/index.html")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != "hello-from-the-guest\n" {
				t.Fatalf("through the forward: %q", body)
			}
		}
		// A host port in use is a conflict with a hint.
		host, port, _ := strings.Cut(m[1], ":")
		r := e.Banger("vm", "port-forward", "ag", host+":"+port+":8080")
		if r.Code == 0 || !strings.Contains(r.Stderr, "conflict") || !strings.Contains(r.Stderr, "hint:") {
			t.Errorf("a port in use: %s", r)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		// Each refusal names its code and op id, gives a hint, and leaves
		// nothing behind.
		refused := func(what, code string, r harness.Result) {
			t.Helper()
			if r.Code == 0 || !strings.Contains(r.Stderr, "code:  "+code) || !strings.Contains(r.Stderr, "op id: ") || !strings.Contains(r.Stderr, "hint:  ") {
				t.Errorf("%s: want a %s refusal with op id and hint: %s", what, code, r)
			}
		}
		refused("exec in an unknown VM", "not_found", e.Banger("vm", "exec", "nosuch", "--", "true"))
		refused("cp into an unknown VM", "not_found", e.Banger("vm", "cp", "/etc/hostname", "nosuch:/root/"))
		dir := t.TempDir()
		f := filepath.Join(dir, "f")
		writeMode(t, f, 100, 0o644)
		// The guest's /etc/hostname is a file, not a directory.
		r := e.Banger("vm", "cp", f, "ag:/etc/hostname/f")
		if r.Code == 0 || !strings.Contains(r.Stderr, "op id: ") || !strings.Contains(r.Stderr, "hint:  ") {
			t.Errorf("cp onto a path under a file: %s", r)
		}
		if r := e.MustBanger("vm", "exec", "ag", "--", "cat", "/etc/hostname"); r.Stdout != "ag\n" {
			t.Errorf("after the refused copy, /etc/hostname is %q", r.Stdout)
		}
		// On the host: a destination under a file; nothing is made.
		r = e.Banger("vm", "cp", "ag:/etc/hostname", filepath.Join(f, "x"))
		if r.Code == 0 || !strings.Contains(r.Stderr, "op id: ") {
			t.Errorf("cp out onto a path under a file: %s", r)
		}
		if b, err := os.ReadFile(f); err != nil || len(b) != 100 {
			t.Errorf("the refused copy changed %s: %d bytes, %v", f, len(b), err)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 1 {
			t.Errorf("a refused copy left files in %s: %v", dir, ents)
		}
		// A guest command that does not exist never started: not_found
		// (exit 3), naming it (docs/cli.md: the command's own status
		// only once it has started).
		r = e.Banger("vm", "exec", "ag", "--", "/no/such/cmd")
		refused("a missing guest command", "not_found", r)
		if r.Code != 3 || !strings.Contains(r.Stderr, "/no/such/cmd") {
			t.Errorf("a missing guest command: %s", r)
		}
	})

	t.Run("after bangerd is killed", func(t *testing.T) {
		pid := e.LockPID()
		syscall.Kill(pid, syscall.SIGKILL)
		harness.WaitDead(t, pid)
		if r := e.MustBanger("vm", "exec", "ag", "--", "cat", "/etc/hostname"); r.Stdout != "ag\n" {
			t.Fatalf("exec after kill -9: %q", r.Stdout)
		}
	})

	t.Run("after the guest reboots", func(t *testing.T) {
		before := e.MustBanger("vm", "exec", "ag", "--", "cat", "/proc/sys/kernel/random/boot_id").Stdout
		e.Banger("vm", "exec", "ag", "--", "systemctl", "reboot")
		deadline := time.Now().Add(4 * time.Minute)
		for {
			r := e.Banger("vm", "exec", "ag", "--", "cat", "/proc/sys/kernel/random/boot_id")
			if r.Code == 0 && r.Stdout != before {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no exec in a new boot: %s", r)
			}
			time.Sleep(time.Second)
		}
		var after api.VMInfo
		e.JSON(&after, "vm", "show", "ag")
		if !after.Alive || after.Handles.PID != info.Handles.PID {
			t.Fatalf("the reboot was not a reboot in the same VMM: %+v", after)
		}
	})

	t.Run("a stopped VM", func(t *testing.T) {
		// Right after the reboot's first answer: the power button's
		// listener may not run yet, the agent's poweroff is not lost.
		e.MustBanger("vm", "stop", "ag")
		var via, graceful, killed bool
		for _, rec := range harness.LogLines(t, e.StateDir+"/bangerd.log") {
			switch rec["msg"] {
			case "vm powering off through its agent":
				via = true
			case "vm powered off":
				graceful = true
			case "vm did not power off in time; killing it":
				killed = true
			}
		}
		if !via || !graceful || killed {
			t.Errorf("vm stop: through the agent %v, powered off %v, killed %v", via, graceful, killed)
		}
		r := e.Banger("vm", "exec", "ag", "--", "true")
		if r.Code == 0 || !strings.Contains(r.Stderr, "code:  conflict") || !strings.Contains(r.Stderr, "banger vm start ag") {
			t.Errorf("exec in a stopped VM: %s", r)
		}
		r = e.Banger("vm", "cp", "/etc/hostname", "ag:/root/")
		if r.Code == 0 || !strings.Contains(r.Stderr, "banger vm start ag") {
			t.Errorf("cp into a stopped VM: %s", r)
		}
	})
	e.MustBanger("vm", "delete", "ag")
}

// writeMode writes n random bytes to p with the given mode.
func writeMode(t *testing.T, p string, n int, mode os.FileMode) {
	t.Helper()
	writeRandom(t, p, n)
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func sha(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
