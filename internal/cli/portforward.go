package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/rpc"
)

// forward is one [ADDR:]HOSTPORT:GUESTPORT.
type forward struct {
	listen    string // host address:port
	guestPort int
}

func parseForward(s string) (forward, error) {
	parts := strings.Split(s, ":")
	addr := "127.0.0.1"
	switch len(parts) {
	case 2:
	case 3:
		addr = parts[0]
		parts = parts[1:]
	default:
		return forward{}, usageErrorf("%q: want [ADDR:]HOSTPORT:GUESTPORT, e.g. 8080:80 or 0.0.0.0:8080:80", s)
	}
	if a, err := netip.ParseAddr(addr); err != nil || !a.Is4() && !a.Is6() {
		return forward{}, usageErrorf("%q: %q is not an IP address to listen on", s, addr)
	}
	hp, err1 := strconv.Atoi(parts[0])
	gp, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil || hp < 0 || hp > 65535 || gp < 1 || gp > 65535 {
		return forward{}, usageErrorf("%q: ports are 1-65535 (host port 0: any free one)", s)
	}
	return forward{listen: net.JoinHostPort(addr, strconv.Itoa(hp)), guestPort: gp}, nil
}

func (a *app) vmPortForwardCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "port-forward NAME [ADDR:]HOSTPORT:GUESTPORT...",
		Short: "Forward host ports to ports of a running VM through its guest agent",
		Long: `Listens on each HOSTPORT (on 127.0.0.1 unless ADDR says otherwise: 0.0.0.0
opens it to your network) and carries every connection to GUESTPORT on the
VM's loopback through the guest agent: the guest's service need not listen
on the VM's network at all. Runs in the foreground until interrupted; a
connection the guest refuses is closed and reported. HOSTPORT 0 takes a
free port (printed).`,
		Example: `  banger vm port-forward demo 8080:80
  banger vm port-forward demo 5432:5432 6379:6379
  banger vm port-forward demo 0.0.0.0:8080:80`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return usageErrorf("name the VM and at least one HOSTPORT:GUESTPORT: banger vm port-forward NAME 8080:80")
			}
			for _, s := range args[1:] {
				if _, err := parseForward(s); err != nil {
					return err
				}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := model.ValidateName("vm", name); err != nil {
				return usageErrorf("%v", err)
			}
			var fwds []forward
			for _, s := range args[1:] {
				f, err := parseForward(s)
				if err != nil {
					return err
				}
				fwds = append(fwds, f)
			}
			return a.portForward(cmd.Context(), name, fwds)
		},
	}
}

func (a *app) portForward(ctx context.Context, name string, fwds []forward) error {
	// The VM must be reachable before anything listens.
	if _, err := a.guestStat(ctx, name, "/"); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for _, f := range fwds {
		ln, err := net.Listen("tcp", f.listen)
		if err != nil {
			if errors.Is(err, syscall.EADDRINUSE) {
				return rpc.WithHint(fmt.Errorf("listening on %s: %w: %w", f.listen, err, rpc.ErrConflict),
					"choose another host port (or 0 for any free one); see who has it: ss -ltnp")
			}
			return rpc.WithHint(fmt.Errorf("listening on %s: %w", f.listen, err), "a port below 1024 needs root")
		}
		lns = append(lns, ln)
		a.printf("forwarding %s -> %s:%d\n", ln.Addr(), name, f.guestPort)
	}
	stop := context.AfterFunc(ctx, func() {
		for _, ln := range lns {
			ln.Close()
		}
	})
	defer stop()
	var wg sync.WaitGroup
	for i, ln := range lns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					a.forwardConn(ctx, name, c, fwds[i].guestPort)
				}()
			}
		}()
	}
	<-ctx.Done()
	wg.Wait()
	return nil
}

// forwardConn carries one host connection to the guest port.
func (a *app) forwardConn(ctx context.Context, name string, c net.Conn, port int) {
	defer c.Close()
	st, err := a.agentStream(ctx, name, "port-forward")
	if err != nil {
		fmt.Fprintf(a.stderr, "banger: %s -> %s:%d: %v\n", c.RemoteAddr(), name, port, err)
		return
	}
	defer st.Close()
	if err := agent.Connect(ctx, st, port); err != nil {
		fmt.Fprintf(a.stderr, "banger: %s -> %s:%d: %v\n", c.RemoteAddr(), name, port, err)
		return
	}
	stop := context.AfterFunc(ctx, func() { c.Close(); st.Close() })
	defer stop()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(st, c)
		halfClose(st)
	}()
	io.Copy(c, st)
	halfClose(c)
	wg.Wait()
}

func halfClose(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}
