package rpc

import (
	"context"
	"errors"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Cancellation on disconnect. While a handler runs, the server watches its
// connection, and when the client goes away it cancels the handler's
// context with the cause ErrClientGone. The call's log line then reads
// "rpc failed", code unavailable, "client went away; the handler returned:
// ..." (or "rpc completed" when the handler finished anyway), and carries
// cancel_cause="client went away".
//
// "Gone" is POLLHUP (or POLLERR) on the socket: for a unix stream socket the
// kernel reports POLLHUP once both directions are shut down, which a close
// by the client (or its exit) does. A client that half-closes its write side
// after the request (shutdown(SHUT_WR), CloseWrite) and waits for the reply
// makes the socket readable at EOF with POLLRDHUP but not POLLHUP, so it is
// not gone; a read returning EOF cannot tell the two apart. The watch waits
// in Go's netpoller (RawConn.Read, edge-triggered, so neither a pending EOF
// nor stray bytes make it spin) and checks with a zero-timeout poll(2) each
// time the socket wakes it. It holds no thread and no extra descriptor, and
// stops before the reply is written, so replies with files (fds.go) are
// sent as before.

// ErrClientGone is the cause (context.Cause) of a handler's context when
// its client disconnected before the reply. It maps to CodeUnavailable:
// the other end of the call is no longer there, which is neither a bug
// (internal) nor a deadline (timeout).
var ErrClientGone error = clientGone{}

type clientGone struct{}

func (clientGone) Error() string { return "client went away" }

// Is makes errors.Is(ErrClientGone, ErrUnavailable) true.
func (clientGone) Is(target error) bool { return target == ErrUnavailable }

// watchPeer returns a context for the handler that is cancelled with
// ErrClientGone when the client of conn goes away, and the function that
// stops the watch and reports whether that happened. Connections without a
// file descriptor are not watched.
func (s *Server) watchPeer(ctx context.Context, conn net.Conn) (context.Context, func() (gone bool)) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return ctx, func() bool { return false }
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return ctx, func() bool { return false }
	}
	ctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	var gone bool
	go func() {
		defer close(done)
		err := rc.Read(func(fd uintptr) bool {
			revents := pollHangup(int(fd))
			hup := revents&(unix.POLLHUP|unix.POLLERR) != 0
			if s.watchObserved != nil {
				s.watchObserved(revents, hup)
			}
			return hup
		})
		if err == nil {
			gone = true
			cancel(ErrClientGone)
		}
	}()
	return ctx, func() bool {
		// A deadline in the past ends the wait in RawConn.Read.
		_ = conn.SetReadDeadline(time.Unix(1, 0))
		<-done
		cancel(nil)
		return gone
	}
}

// pollHangup returns the socket's poll(2) events now, without waiting.
func pollHangup(fd int) int16 {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
	for {
		_, err := unix.Poll(fds, 0)
		if !errors.Is(err, unix.EINTR) {
			return fds[0].Revents
		}
	}
}
