package helper

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/rpc"
)

// File passing (rpc.AttachFiles / Client.CallFiles), no root needed: a
// handler hands over the read end of a pipe; error replies carry nothing.
func TestFilePassing(t *testing.T) {
	s := rpc.NewServer("test", logging.Discard())
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pw.Close()
	s.Handle("give", func(ctx context.Context, _ json.RawMessage) (any, error) {
		return map[string]string{"what": "pipe"}, rpc.AttachFiles(ctx, pr)
	})
	leaked := make(chan *os.File, 1)
	s.Handle("fail", func(ctx context.Context, _ json.RawMessage) (any, error) {
		r, w, _ := os.Pipe()
		w.Close()
		leaked <- r
		if err := rpc.AttachFiles(ctx, r); err != nil {
			return nil, err
		}
		return nil, errors.New("no")
	})
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := Listen(sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Serve(ctx, ln)

	c := rpc.NewClient(sock)
	var res map[string]string
	files, err := c.CallFiles(ctx, "give", nil, &res)
	if err != nil || len(files) != 1 || res["what"] != "pipe" {
		t.Fatalf("give: %v, %d files, %v", err, len(files), res)
	}
	if _, err := pw.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	got, err := io.ReadAll(files[0])
	files[0].Close()
	if err != nil || string(got) != "hello" {
		t.Errorf("read through the passed fd: %q, %v", got, err)
	}
	// The server closes its copy once sent.
	if !closedSoon(pr) {
		t.Errorf("server kept its copy of the passed file open")
	}

	files, err = c.CallFiles(ctx, "fail", nil, nil)
	if err == nil || len(files) != 0 {
		t.Errorf("fail: %v, %d files", err, len(files))
	}
	if !closedSoon(<-leaked) {
		t.Errorf("file attached to a failed reply left open")
	}
	// A plain Call on a method that passes files still gets its result.
	if err := c.Call(ctx, "fail", nil, nil); rpc.CodeOf(err) != rpc.CodeInternal {
		t.Errorf("plain call: %v", err)
	}
}

// closedSoon reports whether f gets closed within two seconds.
func closedSoon(f *os.File) bool {
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if _, err := f.Stat(); errors.Is(err, os.ErrClosed) {
			return true
		}
	}
	return false
}
