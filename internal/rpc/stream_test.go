package rpc

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/banger-dev/banger/internal/logging"
)

// A handler that upgrades its connection gets it after its reply: the
// client reads the result, then both speak raw bytes (here an echo, with a
// half-close ending it). A failed call never upgrades, and the upgrade
// function learns so (nil) to release what it holds.
func TestStreamUpgrade(t *testing.T) {
	s := NewServer("test", logging.Discard())
	released := make(chan bool, 1)
	Register(s, "echo", func(ctx context.Context, p struct{ Fail bool }) (map[string]string, error) {
		err := Upgrade(ctx, func(conn net.Conn) {
			if conn == nil {
				released <- true
				return
			}
			io.Copy(conn, conn)
		})
		if err != nil {
			return nil, err
		}
		if p.Fail {
			return nil, Errorf(ErrConflict, "no")
		}
		return map[string]string{"ready": "yes"}, nil
	})
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Serve(ctx, ln)
	c := NewClient(sock)

	var res map[string]string
	conn, err := c.CallStream(ctx, "echo", struct{ Fail bool }{}, &res)
	if err != nil || res["ready"] != "yes" {
		t.Fatalf("CallStream: %v %v", res, err)
	}
	msg := []byte("hello through the stream")
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	if err := conn.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	conn.Close()
	if err != nil || string(got) != string(msg) {
		t.Fatalf("echo: %q %v", got, err)
	}

	_, err = c.CallStream(ctx, "echo", struct{ Fail bool }{true}, nil)
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("failed call: %v", err)
	}
	if !<-released {
		t.Fatal("upgrade function not told")
	}
	// A plain Call on an upgrading method still gets its reply.
	if err := c.Call(ctx, "echo", struct{ Fail bool }{}, &res); err != nil {
		t.Fatal(err)
	}
}
