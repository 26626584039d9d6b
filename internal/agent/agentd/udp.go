package agentd

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"

	"github.com/banger-dev/banger/internal/agent"
)

// connectUDP relays the stream's datagrams (agent.WriteDatagram framing)
// to 127.0.0.1:port in the guest and the answers back, until the stream
// closes. A refusal (ICMP port unreachable: nothing listens yet) drops
// that datagram and the relay goes on.
func (s *Server) connectUDP(st net.Conn, port int) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	c, err := net.Dial("udp", addr)
	if err != nil {
		return answer(st, nil, fmt.Errorf("connecting to %s/udp in the guest: %w", addr, err))
	}
	defer c.Close()
	if err := answer(st, nil, nil); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { // guest to host; the only writer of st from here on
		defer close(done)
		buf := make([]byte, agent.MaxDatagram)
		for {
			n, err := c.Read(buf)
			if err != nil {
				if isRefused(err) {
					continue
				}
				return // c closed: the host closed the stream
			}
			if agent.WriteDatagram(st, buf[:n]) != nil {
				return
			}
		}
	}()
	buf := make([]byte, agent.MaxDatagram)
	for {
		n, err := agent.ReadDatagram(st, buf)
		if err != nil {
			break
		}
		if _, err := c.Write(buf[:n]); err != nil && !isRefused(err) {
			break
		}
	}
	c.Close()
	<-done
	st.Close() // the host reads EOF
	return nil
}

func isRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED)
}
