package testutil

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// envDialAs makes the test binary, started by DialAs as another uid,
// connect to the socket it names and hand the connection back on fd 3.
const envDialAs = "BANGER_TEST_DIAL_AS"

func init() {
	if sock := os.Getenv(envDialAs); sock != "" {
		os.Exit(dialAndPass(sock))
	}
}

// dialAndPass is the child's side: connect (so the kernel records this
// process's credentials as the peer's), send the connected descriptor over
// fd 3 and exit.
func dialAndPass(sock string) int {
	back := os.NewFile(3, "back")
	c, err := net.Dial("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial-as:", err)
		return 1
	}
	f, err := c.(*net.UnixConn).File()
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial-as:", err)
		return 1
	}
	if err := unix.Sendmsg(int(back.Fd()), []byte{0}, unix.UnixRights(int(f.Fd())), nil, 0); err != nil {
		fmt.Fprintln(os.Stderr, "dial-as:", err)
		return 1
	}
	return 0
}

var (
	dialAsOnce sync.Once
	dialAsBin  string
	dialAsErr  error
)

// dialAsBinary is a copy of the running test binary that any uid may run
// (the go tool's build directory is root's alone), made once per process
// and removed by CleanupDialAs.
func dialAsBinary() (string, error) {
	dialAsOnce.Do(func() {
		exe, err := os.Executable()
		if err != nil {
			dialAsErr = err
			return
		}
		dir, err := os.MkdirTemp("", "banger-dialas-")
		if err != nil {
			dialAsErr = err
			return
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			dialAsErr = err
			return
		}
		dialAsBin = filepath.Join(dir, "test.bin")
		src, err := os.Open(exe)
		if err != nil {
			dialAsErr = err
			return
		}
		defer src.Close()
		dst, err := os.OpenFile(dialAsBin, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
		if err != nil {
			dialAsErr = err
			return
		}
		_, err = io.Copy(dst, src)
		if cerr := dst.Close(); err == nil {
			err = cerr
		}
		dialAsErr = err
	})
	return dialAsBin, dialAsErr
}

// DialAs connects to the unix socket sock as uid:gid (no supplementary
// groups) and returns the connection: the server sees that uid in
// SO_PEERCRED, and the caller (root) speaks over it. A child process
// running a copy of the test binary as that uid makes the connection and
// passes it back. A package that uses it calls CleanupDialAs from its
// TestMain, which removes the copy of the binary.
func DialAs(t testing.TB, uid, gid uint32, sock string) net.Conn {
	t.Helper()
	RequireRoot(t)
	c, err := dialAs(uid, gid, sock)
	if err != nil {
		t.Fatalf("connecting to %s as uid %d: %v", sock, uid, err)
	}
	return c
}

func dialAs(uid, gid uint32, sock string) (net.Conn, error) {
	bin, err := dialAsBinary()
	if err != nil {
		return nil, err
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "mine"), os.NewFile(uintptr(fds[1]), "theirs")
	defer mine.Close()
	cmd := exec.Command(bin)
	cmd.Env = []string{envDialAs + "=" + sock, "PATH=/usr/bin:/bin"}
	cmd.Dir = "/"
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	theirs.Close()
	if err != nil {
		return nil, fmt.Errorf("child as uid %d: %v: %s", uid, err, out)
	}
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := unix.Recvmsg(int(mine.Fd()), buf, oob, 0)
	if err != nil {
		return nil, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("no descriptor from the child: %v", err)
	}
	got, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(got) != 1 {
		return nil, fmt.Errorf("no descriptor from the child: %v", err)
	}
	f := os.NewFile(uintptr(got[0]), "conn-as-"+strconv.Itoa(int(uid)))
	defer f.Close()
	return net.FileConn(f)
}

// DialerAs returns a dial function for rpc.Client.Dial that connects to
// sock as uid:gid, one child process per connection.
func DialerAs(uid, gid uint32, sock string) func(context.Context) (net.Conn, error) {
	return func(context.Context) (net.Conn, error) { return dialAs(uid, gid, sock) }
}

// CleanupDialAs removes the binary copy DialAs made, if any.
func CleanupDialAs() {
	if dialAsBin != "" {
		os.RemoveAll(filepath.Dir(dialAsBin))
	}
}
