package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// ErrVsockRefused is Firecracker closing the connection after CONNECT
// without an answer: nothing listens on the port in the guest (yet; the
// agent may still be starting).
var ErrVsockRefused = errors.New("the guest refused the vsock connection")

// DialVsockUDS connects to port in the guest through the host end of
// Firecracker's vsock device, the unix socket udsPath: it writes
// "CONNECT <port>\n" and expects "OK <host port>\n", after which the
// connection is the guest's stream. ctx bounds the dial and the exchange.
func DialVsockUDS(ctx context.Context, udsPath string, port uint32) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", udsPath)
	if err != nil {
		return nil, fmt.Errorf("connecting to the vsock socket: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	line, err := vsockExchange(c, port)
	if !stop() {
		c.Close()
		return nil, fmt.Errorf("vsock CONNECT %d on %s: %w", port, udsPath, context.Cause(ctx))
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("vsock CONNECT %d on %s: %w", port, udsPath, err)
	}
	rest, ok := strings.CutPrefix(line, "OK ")
	if _, perr := strconv.ParseUint(rest, 10, 32); !ok || perr != nil {
		c.Close()
		return nil, fmt.Errorf("vsock CONNECT %d on %s: the socket answered %q, not \"OK <port>\" (is it a Firecracker vsock socket?)", port, udsPath, line)
	}
	return c, nil
}

// vsockExchange sends CONNECT and reads the answer line one byte at a time,
// so that nothing of the guest's stream is consumed.
func vsockExchange(c net.Conn, port uint32) (string, error) {
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		return "", err
	}
	var line []byte
	var b [1]byte
	for len(line) < 64 {
		n, err := c.Read(b[:])
		if n == 1 {
			if b[0] == '\n' {
				return string(line), nil
			}
			line = append(line, b[0])
			continue
		}
		if err == io.EOF {
			if len(line) == 0 {
				return "", ErrVsockRefused
			}
			return "", fmt.Errorf("the answer %q ended without a newline", line)
		}
		if err != nil {
			return "", err
		}
	}
	return "", fmt.Errorf("the answer %q is too long (is it a Firecracker vsock socket?)", line)
}
