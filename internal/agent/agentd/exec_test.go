package agentd

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/testutil"
)

// run execs req on a new stream of s.
func run(t testing.TB, s *agent.Session, req agent.ExecRequest, eio agent.ExecIO) (agent.ExitStatus, error) {
	t.Helper()
	st := stream(t, s)
	defer st.Close()
	return agent.Exec(testCtx(t), st, req, eio)
}

// output runs argv and returns its status, stdout and stderr.
func output(t testing.TB, s *agent.Session, req agent.ExecRequest) (agent.ExitStatus, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	status, err := run(t, s, req, agent.ExecIO{Stdout: &out, Stderr: &errb})
	if err != nil {
		t.Fatalf("%q: %v", req.Argv, err)
	}
	return status, out.String(), errb.String()
}

func TestExecExitStatus(t *testing.T) {
	srv, _ := newServer(t)
	s := startSession(t, srv)
	for _, c := range []struct {
		argv []string
		want agent.ExitStatus
	}{
		{[]string{"true"}, agent.ExitStatus{Code: 0}},
		{[]string{"sh", "-c", "exit 7"}, agent.ExitStatus{Code: 7}},
		{[]string{"false"}, agent.ExitStatus{Code: 1}},
		{[]string{"sh", "-c", "kill -TERM $$; sleep 10"}, agent.ExitStatus{Signal: 15}},
	} {
		status, _, _ := output(t, s, agent.ExecRequest{Argv: c.argv})
		if status != c.want {
			t.Errorf("%q: %+v, want %+v", c.argv, status, c.want)
		}
	}
}

func TestExecRefusals(t *testing.T) {
	srv, _ := newServer(t)
	s := startSession(t, srv)
	for _, c := range []struct {
		req  agent.ExecRequest
		want error
	}{
		{agent.ExecRequest{Argv: []string{"no-such-command-banger"}}, rpc.ErrNotFound},
		{agent.ExecRequest{Argv: []string{"/no/such/binary"}}, rpc.ErrNotFound},
		{agent.ExecRequest{Argv: []string{"true"}, Dir: "/no/such/dir"}, rpc.ErrNotFound},
		{agent.ExecRequest{Argv: []string{"true"}, Dir: "/etc/passwd"}, rpc.ErrBadRequest},
		{agent.ExecRequest{Argv: []string{"true"}, User: "no-such-user-banger"}, rpc.ErrNotFound},
		{agent.ExecRequest{Argv: []string{"/etc/passwd"}}, rpc.ErrForbidden}, // not executable
		{agent.ExecRequest{Argv: []string{"true"}, Env: []string{"NOVALUE"}}, rpc.ErrBadRequest},
		{agent.ExecRequest{}, rpc.ErrBadRequest},
	} {
		_, err := run(t, s, c.req, agent.ExecIO{})
		var re *agent.RemoteError
		if !errors.Is(err, c.want) || !errors.As(err, &re) {
			t.Errorf("%+v: %v, want %v", c.req, err, c.want)
		}
	}
}

// 64 MiB of stdout arrive intact, with stderr kept apart.
func TestExecLargeOutput(t *testing.T) {
	srv, _ := newServer(t)
	s := startSession(t, srv)
	data := make([]byte, 64<<20)
	rand.Read(data)
	file := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	h := sha256.New()
	var errb bytes.Buffer
	status, err := run(t, s, agent.ExecRequest{Argv: []string{"sh", "-c", `echo before >&2; cat "$1"; echo after >&2`, "sh", file}},
		agent.ExecIO{Stdout: h, Stderr: &errb})
	if err != nil || status.Code != 0 {
		t.Fatal(status, err)
	}
	if got := h.Sum(nil); !bytes.Equal(got, want[:]) {
		t.Errorf("stdout sha256 %x, want %x", got, want)
	}
	if errb.String() != "before\nafter\n" {
		t.Errorf("stderr %q", errb.String())
	}
}

func TestExecStdin(t *testing.T) {
	srv, _ := newServer(t)
	s := startSession(t, srv)
	in := make([]byte, 3<<20)
	rand.Read(in)
	var out bytes.Buffer
	status, err := run(t, s, agent.ExecRequest{Argv: []string{"cat"}}, agent.ExecIO{Stdin: bytes.NewReader(in), Stdout: &out})
	if err != nil || status.Code != 0 || !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("cat: %+v %v, %d bytes back of %d", status, err, out.Len(), len(in))
	}
	// Without Stdin, the process reads /dev/null.
	if _, o, _ := output(t, s, agent.ExecRequest{Argv: []string{"wc", "-c"}}); strings.TrimSpace(o) != "0" {
		t.Errorf("wc -c without stdin: %q", o)
	}
	// A process that exits without reading its stdin.
	status, err = run(t, s, agent.ExecRequest{Argv: []string{"true"}}, agent.ExecIO{Stdin: bytes.NewReader(in)})
	if err != nil || status.Code != 0 {
		t.Errorf("true with stdin: %+v %v", status, err)
	}
}

// watchWriter collects output and reports when it holds a string.
type watchWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
	once sync.Once
}

func newWatch(want string) *watchWriter {
	return &watchWriter{want: want, seen: make(chan struct{})}
}

func (w *watchWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return len(p), nil
}

func (w *watchWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func (w *watchWriter) wait(t testing.TB) {
	t.Helper()
	select {
	case <-w.seen:
	case <-time.After(testTimeout):
		t.Fatalf("no %q in the output %q", w.want, w.String())
	}
}

// execAsync runs an exec in the background.
func execAsync(t testing.TB, s *agent.Session, req agent.ExecRequest, eio agent.ExecIO) chan execResult {
	t.Helper()
	st := stream(t, s)
	ch := make(chan execResult, 1)
	go func() {
		status, err := agent.Exec(testCtx(t), st, req, eio)
		st.Close()
		ch <- execResult{status, err}
	}()
	return ch
}

type execResult struct {
	status agent.ExitStatus
	err    error
}

func wait(t testing.TB, ch chan execResult) agent.ExitStatus {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.status
	case <-time.After(testTimeout):
		t.Fatal("the exec did not end")
	}
	return agent.ExitStatus{}
}

func TestExecTTY(t *testing.T) {
	srv, _ := newServer(t)
	s := startSession(t, srv)
	// Its size, its TERM, stdout and stderr both on the terminal.
	status, out, errOut := output(t, s, agent.ExecRequest{Argv: []string{"sh", "-c", `stty size; echo "$TERM"; tty >/dev/null && echo is-a-tty; echo err >&2`},
		TTY: &agent.TTY{Rows: 33, Cols: 101, Term: "vt100"}})
	if status.Code != 0 || out != "33 101\r\nvt100\r\nis-a-tty\r\nerr\r\n" || errOut != "" {
		t.Errorf("tty: %+v %q %q", status, out, errOut)
	}

	// A resize reaches it (SIGWINCH and the new size).
	resize := make(chan agent.WinSize, 1)
	w := newWatch("ready")
	ch := execAsync(t, s, agent.ExecRequest{
		Argv: []string{"sh", "-c", `trap 'stty size; exit 0' WINCH; stty size; echo ready; while :; do sleep 0.05; done`},
		TTY:  &agent.TTY{Rows: 10, Cols: 20}, Timeout: testTimeout}, agent.ExecIO{Stdout: w, Resize: resize})
	w.wait(t)
	resize <- agent.WinSize{Rows: 40, Cols: 120}
	if status := wait(t, ch); status.Code != 0 {
		t.Errorf("resize: %+v %q", status, w.String())
	}
	if got := w.String(); got != "10 20\r\nready\r\n40 120\r\n" {
		t.Errorf("resize output %q", got)
	}
}

// Ctrl-C typed on the tty, and a SIGINT sent, reach the process.
func TestExecInterrupt(t *testing.T) {
	srv, _ := newServer(t)
	s := startSession(t, srv)
	script := `trap 'echo got-int; exit 3' INT; echo ready; while :; do sleep 0.05; done`

	pr, pw := io.Pipe()
	defer pw.Close()
	w := newWatch("ready")
	ch := execAsync(t, s, agent.ExecRequest{Argv: []string{"sh", "-c", script}, TTY: &agent.TTY{Rows: 24, Cols: 80}, Timeout: testTimeout},
		agent.ExecIO{Stdin: pr, Stdout: w})
	w.wait(t)
	pw.Write([]byte{3}) // ^C
	if status := wait(t, ch); status.Code != 3 || !strings.Contains(w.String(), "got-int") {
		t.Errorf("^C: %+v %q", status, w.String())
	}

	for _, tty := range []*agent.TTY{nil, {Rows: 24, Cols: 80}} {
		sigs := make(chan syscall.Signal, 1)
		w = newWatch("ready")
		ch = execAsync(t, s, agent.ExecRequest{Argv: []string{"sh", "-c", script}, TTY: tty, Timeout: testTimeout},
			agent.ExecIO{Stdout: w, Signals: sigs})
		w.wait(t)
		sigs <- syscall.SIGINT
		if status := wait(t, ch); status.Code != 3 || !strings.Contains(w.String(), "got-int") {
			t.Errorf("SIGINT (tty %v): %+v %q", tty != nil, status, w.String())
		}
	}

	// A process that does not catch it dies of it.
	sigs := make(chan syscall.Signal, 1)
	w = newWatch("ready")
	ch = execAsync(t, s, agent.ExecRequest{Argv: []string{"sh", "-c", "echo ready; exec sleep 100"}, Timeout: testTimeout},
		agent.ExecIO{Stdout: w, Signals: sigs})
	w.wait(t)
	sigs <- syscall.SIGTERM // to sleep, or to sh before its exec: either dies of it
	if status := wait(t, ch); status != (agent.ExitStatus{Signal: 15}) {
		t.Errorf("SIGTERM: %+v", status)
	}
}

// The timeout kills the whole group, background children included, so
// the outputs reach EOF.
func TestExecTimeout(t *testing.T) {
	srv, _ := newServer(t)
	s := startSession(t, srv)
	pidFile := filepath.Join(t.TempDir(), "bg.pid")
	status, _, _ := output(t, s, agent.ExecRequest{Argv: []string{"sh", "-c", `sleep 100 & echo $! > "$1"; sleep 100`, "sh", pidFile},
		Timeout: 300 * time.Millisecond})
	if status != (agent.ExitStatus{Signal: 9, TimedOut: true}) {
		t.Errorf("timeout: %+v", status)
	}
	assertGone(t, pidFile)
	// One that ends in time is not marked.
	if status, _, _ := output(t, s, agent.ExecRequest{Argv: []string{"true"}, Timeout: testTimeout}); status != (agent.ExitStatus{}) {
		t.Errorf("in time: %+v", status)
	}
}

// assertGone waits for the process whose pid is in file to be gone.
func assertGone(t testing.TB, file string) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(testTimeout)
	for syscall.Kill(pid, 0) == nil {
		// A zombie whose parent is gone is reaped by init; a live one is a failure.
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && strings.Contains(string(st), ") Z ") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still runs", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The host closing the stream (or its context ending) kills the process.
func TestExecAbandoned(t *testing.T) {
	srv, _ := newServer(t)
	s := startSession(t, srv)
	dir := t.TempDir()
	for i, how := range []string{"close", "cancel"} {
		pidFile := filepath.Join(dir, how)
		w := newWatch("ready")
		st := stream(t, s)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := agent.Exec(ctx, st, agent.ExecRequest{Argv: []string{"sh", "-c", `echo $$ > "$1"; echo ready; sleep 100`, "sh", pidFile}},
				agent.ExecIO{Stdout: w})
			done <- err
		}()
		w.wait(t)
		if i == 0 {
			st.Close()
		}
		cancel()
		select {
		case err := <-done:
			if err == nil {
				t.Errorf("%s: Exec returned no error", how)
			}
		case <-time.After(testTimeout):
			t.Fatalf("%s: Exec did not return", how)
		}
		assertGone(t, pidFile)
	}
}

func TestExecEnvDirUser(t *testing.T) {
	srv, _ := newServer(t)
	s := startSession(t, srv)
	dir := t.TempDir()
	_, out, _ := output(t, s, agent.ExecRequest{Argv: []string{"env"}, Env: []string{"FOO=bar baz", "TERM=override"}, Dir: dir})
	env := strings.Split(strings.TrimSpace(out), "\n")
	slices.Sort(env)
	me, _ := user.Current()
	path := "/usr/local/bin:/usr/bin:/bin"
	if me.Uid == "0" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	want := []string{"FOO=bar baz", "HOME=" + me.HomeDir, "LOGNAME=" + me.Username, "PATH=" + path, "TERM=override", "USER=" + me.Username}
	if !slices.Equal(env, want) {
		t.Errorf("env\n%q\nwant\n%q", env, want)
	}
	if _, out, _ := output(t, s, agent.ExecRequest{Argv: []string{"pwd"}, Dir: dir}); strings.TrimSpace(out) != dir {
		t.Errorf("pwd in %s: %q", dir, out)
	}
	if fi, err := os.Stat(me.HomeDir); err == nil && fi.IsDir() {
		if _, out, _ := output(t, s, agent.ExecRequest{Argv: []string{"pwd"}}); strings.TrimSpace(out) != me.HomeDir {
			t.Errorf("pwd by default: %q, want %s", out, me.HomeDir)
		}
	}
	// PATH from the request is where argv[0] is looked up.
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	os.WriteFile(filepath.Join(bin, "banger-test-cmd"), []byte("#!/bin/sh\necho found\n"), 0o755)
	if _, out, _ := output(t, s, agent.ExecRequest{Argv: []string{"banger-test-cmd"}, Env: []string{"PATH=" + bin + ":/bin:/usr/bin"}}); out != "found\n" {
		t.Errorf("lookup in the request's PATH: %q", out)
	}

	if os.Getuid() != 0 {
		// An agent that is not root cannot become someone else.
		if _, err := run(t, s, agent.ExecRequest{Argv: []string{"true"}, User: "root"}, agent.ExecIO{}); !errors.Is(err, rpc.ErrForbidden) {
			t.Errorf("another user as non-root: %v", err)
		}
	}
}

// As root, the agent runs commands as another user (root tier).
func TestExecAsUser(t *testing.T) {
	testutil.RequireRoot(t)
	nobody, err := user.LookupId("65534")
	if err != nil {
		t.Skip("no user 65534 in /etc/passwd")
	}
	srv, _ := newServer(t)
	s := startSession(t, srv)
	for _, u := range []string{"65534", nobody.Username} {
		status, out, _ := output(t, s, agent.ExecRequest{Argv: []string{"sh", "-c", `id -u; id -g; echo "$HOME $USER $LOGNAME"`}, User: u, Dir: "/"})
		want := fmt.Sprintf("65534\n%s\n%s %s %s\n", nobody.Gid, nobody.HomeDir, nobody.Username, nobody.Username)
		if status.Code != 0 || out != want {
			t.Errorf("user %s: %+v %q, want %q", u, status, out, want)
		}
	}
	// Its supplementary groups are its own, not root's.
	_, out, _ := output(t, s, agent.ExecRequest{Argv: []string{"id", "-G"}, User: "65534", Dir: "/"})
	for _, g := range strings.Fields(out) {
		if g == "0" {
			t.Errorf("user 65534 kept group 0: %q", out)
		}
	}
}

// Many execs at once on one session.
func TestExecConcurrent(t *testing.T) {
	srv, _ := newServer(t)
	s := startSession(t, srv)
	const n = 32
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in := bytes.Repeat([]byte(strconv.Itoa(i)), 20000)
			var out, errb bytes.Buffer
			st, err := s.Open(testCtx(t))
			if err != nil {
				errs <- err
				return
			}
			defer st.Close()
			status, err := agent.Exec(testCtx(t), st, agent.ExecRequest{Argv: []string{"sh", "-c", `cat; echo "$0" >&2; exit "$0"`, strconv.Itoa(i % 100)}},
				agent.ExecIO{Stdin: bytes.NewReader(in), Stdout: &out, Stderr: &errb})
			switch {
			case err != nil:
				errs <- err
			case status.Code != i%100 || !bytes.Equal(out.Bytes(), in) || errb.String() != strconv.Itoa(i)+"\n":
				errs <- fmt.Errorf("exec %d: %+v, %d bytes out, stderr %q", i, status, out.Len(), errb.String())
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Every stream is closed by both ends (the agent's close may still be
	// on its way).
	deadline := time.Now().Add(testTimeout)
	for s.NumStreams() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams left open", s.NumStreams())
		}
		time.Sleep(10 * time.Millisecond)
	}
}
