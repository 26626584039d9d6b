package agentd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/agent"
)

// Where the guest's kernel shows its virtio-serial ports (there is no
// udev: the device node is /dev/ plus the port's directory name).
const (
	SysPorts = "/sys/class/virtio-ports"
	DevDir   = "/dev"
)

// FindPort returns the device of the virtio-serial port named
// agent.PortName: the entry of sysPorts whose name file holds it, under
// devDir. It is an error wrapping fs.ErrNotExist while there is none (no
// such device, or virtio_console not loaded yet).
func FindPort(sysPorts, devDir string) (string, error) {
	entries, err := os.ReadDir(sysPorts)
	if err != nil {
		return "", fmt.Errorf("no virtio-serial ports (is virtio_console loaded?): %w", err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(sysPorts, e.Name(), "name"))
		if err == nil && strings.TrimSpace(string(b)) == agent.PortName {
			return filepath.Join(devDir, e.Name()), nil
		}
	}
	return "", fmt.Errorf("no virtio-serial port is named %s among %d: %w", agent.PortName, len(entries), os.ErrNotExist)
}

// Port is the guest end of the virtio-serial port. Its reads return EOF
// while no host is connected; WaitReadable waits for the next change.
type Port struct {
	f       *os.File
	wakeCap time.Duration // WaitReadable's longest wait; 0: 250 ms
}

// OpenPort opens the port's device for reading and writing. Go's poller
// takes it (a character device that supports poll), so deadlines work.
func OpenPort(path string) (*Port, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, err
	}
	return &Port{f: f}, nil
}

func (p *Port) Read(b []byte) (int, error)  { return p.f.Read(b) }
func (p *Port) Write(b []byte) (int, error) { return p.f.Write(b) }

// Close closes the device.
func (p *Port) Close() error { return p.f.Close() }

// SetReadDeadline and SetDeadline are the device's (os.File).
func (p *Port) SetReadDeadline(t time.Time) error { return p.f.SetReadDeadline(t) }

// SetDeadline sets both deadlines of the device.
func (p *Port) SetDeadline(t time.Time) error { return p.f.SetDeadline(t) }

// WaitReadable waits, at most 250 ms, until a host is connected: at once
// if poll(2) finds the port readable without POLLHUP (virtio_console sets
// POLLHUP while no host is connected, with POLLIN, since a read returns
// EOF), else until the port's next wake-up (a host connecting, data
// arriving), which the poller's edge-triggered registration sees even
// though poll(2) reported the port ready all along. Where the descriptor
// is not pollable it sleeps 250 ms.
func (p *Port) WaitReadable(ctx context.Context) {
	most := p.wakeCap
	if most == 0 {
		most = 250 * time.Millisecond
	}
	rc, err := p.f.SyscallConn()
	if err == nil {
		err = p.f.SetReadDeadline(time.Now().Add(most))
	}
	if err == nil {
		first := true
		err = rc.Read(func(fd uintptr) bool {
			if !first {
				return true // woken up: let the caller read
			}
			first = false
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, perr := unix.Poll(fds, 0)
			return perr == nil && n == 1 && fds[0].Revents&unix.POLLIN != 0 && fds[0].Revents&unix.POLLHUP == 0
		})
		p.f.SetReadDeadline(time.Time{})
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			return
		}
	}
	sleepCtx(ctx, most)
}

// ListenVsock listens on AF_VSOCK port (any CID): Firecracker's vsock
// device connects the host's "CONNECT port" there.
func ListenVsock(port uint32) (net.Listener, error) {
	fd, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("vsock socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrVM{CID: unix.VMADDR_CID_ANY, Port: port}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock bind to port %d: %w", port, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("vsock listen on port %d: %w", port, err)
	}
	return &vsockListener{f: os.NewFile(uintptr(fd), "vsock"), addr: VsockAddr{CID: unix.VMADDR_CID_ANY, Port: port}}, nil
}

// VsockAddr is an AF_VSOCK address.
type VsockAddr struct {
	CID, Port uint32
}

// Network is "vsock".
func (a VsockAddr) Network() string { return "vsock" }
func (a VsockAddr) String() string  { return fmt.Sprintf("%d:%d", a.CID, a.Port) }

type vsockListener struct {
	f    *os.File
	addr VsockAddr
}

func (l *vsockListener) Accept() (net.Conn, error) {
	rc, err := l.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nfd int
	var sa unix.Sockaddr
	var aerr error
	err = rc.Read(func(fd uintptr) bool {
		nfd, sa, aerr = unix.Accept4(int(fd), unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
		return !errors.Is(aerr, unix.EAGAIN)
	})
	if err != nil {
		if errors.Is(err, os.ErrClosed) {
			return nil, net.ErrClosed
		}
		return nil, err
	}
	if aerr != nil {
		return nil, fmt.Errorf("vsock accept: %w", aerr)
	}
	remote := VsockAddr{}
	if vm, ok := sa.(*unix.SockaddrVM); ok {
		remote = VsockAddr{CID: vm.CID, Port: vm.Port}
	}
	return &vsockConn{File: os.NewFile(uintptr(nfd), "vsock"), local: l.addr, remote: remote}, nil
}

func (l *vsockListener) Close() error   { return l.f.Close() }
func (l *vsockListener) Addr() net.Addr { return l.addr }

// vsockConn is an accepted vsock connection (Go's net package has no
// AF_VSOCK; the poller handles it as a file).
type vsockConn struct {
	*os.File
	local, remote VsockAddr
}

func (c *vsockConn) LocalAddr() net.Addr  { return c.local }
func (c *vsockConn) RemoteAddr() net.Addr { return c.remote }

// SysVirtioDevices lists the guest's virtio devices.
const SysVirtioDevices = "/sys/bus/virtio/devices"

// virtioIDVsock is the virtio device id of a vsock device.
const virtioIDVsock = 0x13

// HasVsockDevice reports whether a virtio vsock device is among the
// devices under sysDevices (each directory's "device" file holds its
// virtio id, such as 0x0013), whether or not its driver is loaded yet.
func HasVsockDevice(sysDevices string) bool {
	entries, err := os.ReadDir(sysDevices)
	if err != nil {
		return false
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(sysDevices, e.Name(), "device"))
		if err != nil {
			continue
		}
		var id uint32
		if _, err := fmt.Sscanf(strings.TrimSpace(string(b)), "0x%x", &id); err == nil && id == virtioIDVsock {
			return true
		}
	}
	return false
}
