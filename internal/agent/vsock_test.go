package agent

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeFirecracker serves the host end of a Firecracker vsock device on a
// unix socket: it reads the CONNECT line, then lets answer speak.
func fakeFirecracker(t *testing.T, answer func(c net.Conn, line string)) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "vsock.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return
				}
				answer(c, line)
			}()
		}
	}()
	return sock
}

func TestDialVsockUDS(t *testing.T) {
	got := make(chan string, 1)
	sock := fakeFirecracker(t, func(c net.Conn, line string) {
		got <- line
		io.WriteString(c, "OK 1073741824\n")
		io.Copy(c, c) // then the guest's stream: an echo
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := DialVsockUDS(ctx, sock, VsockPort)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if line := <-got; line != "CONNECT 1024\n" {
		t.Errorf("sent %q", line)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "BANGER-AGENT 1\n")
	buf := make([]byte, 15)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "BANGER-AGENT 1\n" {
		t.Errorf("stream after OK: %q %v", buf, err)
	}
}

func TestDialVsockUDSRefusals(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	garbage := fakeFirecracker(t, func(c net.Conn, _ string) { io.WriteString(c, "HTTP/1.1 400 Bad Request\r\n") })
	if _, err := DialVsockUDS(ctx, garbage, VsockPort); err == nil || !strings.Contains(err.Error(), `not "OK <port>"`) ||
		!strings.Contains(err.Error(), "400 Bad Request") {
		t.Errorf("garbage answer: %v", err)
	}
	long := fakeFirecracker(t, func(c net.Conn, _ string) { io.WriteString(c, strings.Repeat("x", 500)) })
	if _, err := DialVsockUDS(ctx, long, VsockPort); err == nil || !strings.Contains(err.Error(), "too long") {
		t.Errorf("endless answer: %v", err)
	}
	refused := fakeFirecracker(t, func(net.Conn, string) {}) // closes: nothing listens in the guest
	if _, err := DialVsockUDS(ctx, refused, VsockPort); !errors.Is(err, ErrVsockRefused) {
		t.Errorf("refused: %v", err)
	}
	if _, err := DialVsockUDS(ctx, filepath.Join(t.TempDir(), "none.sock"), VsockPort); err == nil {
		t.Error("a missing socket dialled")
	}
	silent := fakeFirecracker(t, func(c net.Conn, _ string) { io.Copy(io.Discard, c) })
	sctx, scancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer scancel()
	if _, err := DialVsockUDS(sctx, silent, VsockPort); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("silent peer: %v", err)
	}
}
