package agentd

import (
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/banger-dev/banger/internal/agent"
)

// Benchmarks over a socketpair session against the real server on this
// host: go test -run XXX -bench . ./internal/agent/agentd/

// BenchmarkHello is a round trip: a new stream, hello, its close.
func BenchmarkHello(b *testing.B) {
	srv, _ := newServer(b)
	s := startSession(b, srv)
	ctx := testCtx(b)
	for b.Loop() {
		st, err := s.Open(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := agent.Hello(ctx, st); err != nil {
			b.Fatal(err)
		}
		st.Close()
	}
}

// BenchmarkExecTrue runs true: stream, fork and exec, both EOFs, the exit.
func BenchmarkExecTrue(b *testing.B) {
	srv, _ := newServer(b)
	s := startSession(b, srv)
	ctx := testCtx(b)
	for b.Loop() {
		st, err := s.Open(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if status, err := agent.Exec(ctx, st, agent.ExecRequest{Argv: []string{"true"}}, agent.ExecIO{}); err != nil || status.Code != 0 {
			b.Fatal(status, err)
		}
		st.Close()
	}
}

// BenchmarkExecStdout64MiB reads 64 MiB of a command's stdout.
func BenchmarkExecStdout64MiB(b *testing.B) {
	srv, _ := newServer(b)
	s := startSession(b, srv)
	ctx := testCtx(b)
	b.SetBytes(64 << 20)
	for b.Loop() {
		st, err := s.Open(ctx)
		if err != nil {
			b.Fatal(err)
		}
		n := &countWriter{}
		status, err := agent.Exec(ctx, st, agent.ExecRequest{Argv: []string{"head", "-c", "67108864", "/dev/zero"}}, agent.ExecIO{Stdout: n})
		if err != nil || status.Code != 0 || n.n != 64<<20 {
			b.Fatal(status, err, n.n)
		}
		st.Close()
	}
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// bigFile is a 256 MiB file of random bytes.
func bigFile(b *testing.B) string {
	p := filepath.Join(b.TempDir(), "big")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, 256<<20); err != nil {
		b.Fatal(err)
	}
	f.Close()
	return p
}

// BenchmarkPut256MiB copies a 256 MiB file into the "guest" (vm cp in).
func BenchmarkPut256MiB(b *testing.B) {
	srv, _ := newServer(b)
	s := startSession(b, srv)
	ctx := testCtx(b)
	src := bigFile(b)
	dst := b.TempDir()
	b.SetBytes(256 << 20)
	for b.Loop() {
		st, err := s.Open(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := agent.CopyTo(ctx, st, src, dst, "copy", nil); err != nil {
			b.Fatal(err)
		}
		st.Close()
	}
}

// BenchmarkGet256MiB copies a 256 MiB file out of the "guest" (vm cp out).
func BenchmarkGet256MiB(b *testing.B) {
	srv, _ := newServer(b)
	s := startSession(b, srv)
	ctx := testCtx(b)
	src := bigFile(b)
	dst := b.TempDir()
	b.SetBytes(256 << 20)
	for b.Loop() {
		st, err := s.Open(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := agent.CopyFrom(ctx, st, src, dst, "copy", nil); err != nil {
			b.Fatal(err)
		}
		st.Close()
	}
}
