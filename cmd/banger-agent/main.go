// Command banger-agent is banger's guest agent (docs/agent.md): a static
// binary in every image of guest contract 3, started by banger-init, that
// serves exec, file copies, port connections, the clock and shutdown to
// bangerd over the host channel only, never a network port. It finds its
// channel itself: the virtio-serial port named banger.agent (qemu), else
// an AF_VSOCK listener on port 1024 (Firecracker), waiting up to -wait for
// either to appear; with -ready it first waits for banger-init to have
// applied the VM's settings. Logs are JSON lines on stderr (the journal).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/agent/agentd"
	"github.com/banger-dev/banger/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// options is the command line.
type options struct {
	port   string        // serial device to serve instead of finding one
	listen string        // vsock:PORT or unix:PATH to serve instead
	wait   time.Duration // how long to look for a channel
	ready  string        // a file to wait for before serving
}

// readyMax bounds the wait for -ready's file: past it the agent serves
// anyway (so that a guest whose banger-init failed can still be looked
// into), and says so in its log.
const readyMax = 2 * time.Minute

func parseFlags(args []string, stderr io.Writer) (options, bool, error) {
	var o options
	fs := flag.NewFlagSet("banger-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.port, "port", "", "serve the serial loop on this device instead of the virtio-serial port named "+agent.PortName)
	fs.StringVar(&o.listen, "listen", "", "serve connections on vsock:PORT or unix:PATH instead of finding the channel")
	fs.DurationVar(&o.wait, "wait", 30*time.Second, "how long to wait for the channel to appear")
	fs.StringVar(&o.ready, "ready", "", "wait for this file (banger-init's /run/banger-init.done) before answering the host")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return o, false, err
	}
	if fs.NArg() > 0 {
		return o, false, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.port != "" && o.listen != "" {
		return o, false, errors.New("-port and -listen exclude each other")
	}
	if o.listen != "" {
		if _, _, err := parseListen(o.listen); err != nil {
			return o, false, err
		}
	}
	if o.wait <= 0 {
		return o, false, fmt.Errorf("-wait %v: want a positive duration", o.wait)
	}
	return o, *showVersion, nil
}

// parseListen splits vsock:PORT or unix:PATH.
func parseListen(s string) (network, addr string, err error) {
	network, addr, _ = strings.Cut(s, ":")
	switch network {
	case "vsock":
		if p, err := strconv.ParseUint(addr, 10, 32); err != nil || p == 0 {
			return "", "", fmt.Errorf("-listen %q: want vsock:PORT", s)
		}
	case "unix":
		if addr == "" {
			return "", "", fmt.Errorf("-listen %q: want unix:PATH", s)
		}
	default:
		return "", "", fmt.Errorf("-listen %q: want vsock:PORT or unix:PATH", s)
	}
	return network, addr, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	o, showVersion, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "banger-agent:", err)
		return 2
	}
	if showVersion {
		fmt.Fprintf(stdout, "banger-agent %s (protocol %d)\n", version.String(), agent.ProtocolVersion)
		return 0
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil)).With("component", "agent")
	srv := &agentd.Server{Release: version.String(), Log: log}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	log.Info("agent starting", "release", srv.Release, "protocol", agent.ProtocolVersion)
	if o.ready != "" {
		waitReady(ctx, o.ready, readyMax, log)
	}
	if err := serve(ctx, o, srv, log); err != nil && ctx.Err() == nil {
		log.Error("agent stopped", "error", err.Error())
		return 1
	}
	log.Info("agent stopped")
	return 0
}

// serve runs the agent on the channel the options name, or on the one it
// finds.
func serve(ctx context.Context, o options, srv *agentd.Server, log *slog.Logger) error {
	switch {
	case o.port != "":
		p, err := agentd.OpenPort(o.port)
		if err != nil {
			return err
		}
		defer p.Close()
		log.Info("agent serving", "port", o.port)
		return srv.ServePort(ctx, p)
	case o.listen != "":
		network, addr, _ := parseListen(o.listen)
		l, err := listen(network, addr)
		if err != nil {
			return err
		}
		log.Info("agent serving", "listen", o.listen)
		return srv.Serve(ctx, l)
	}
	deadline := time.Now().Add(o.wait)
	lastLog := time.Time{}
	for {
		path, perr := agentd.FindPort(agentd.SysPorts, agentd.DevDir)
		if perr == nil {
			p, err := agentd.OpenPort(path)
			if err == nil {
				defer p.Close()
				log.Info("agent serving", "port", path)
				return srv.ServePort(ctx, p)
			}
			perr = err
		}
		verr := errors.New("no virtio vsock device")
		if agentd.HasVsockDevice(agentd.SysVirtioDevices) {
			l, err := agentd.ListenVsock(agent.VsockPort)
			if err == nil {
				log.Info("agent serving", "listen", fmt.Sprintf("vsock:%d", agent.VsockPort))
				return srv.Serve(ctx, l)
			}
			verr = err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no channel to the host after %v: serial: %v; vsock: %v", o.wait, perr, verr)
		}
		if time.Since(lastLog) >= 2*time.Second {
			log.Info("agent waiting for its channel", "serial", perr.Error(), "vsock", verr.Error())
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitReady waits for the file at path to exist, at most max.
func waitReady(ctx context.Context, path string, max time.Duration, log *slog.Logger) {
	start := time.Now()
	for {
		if _, err := os.Stat(path); err == nil {
			log.Info("agent ready", "file", path, "waited_ms", time.Since(start).Milliseconds())
			return
		}
		if time.Since(start) >= max {
			log.Warn("agent serving without its ready file", "file", path, "waited_ms", time.Since(start).Milliseconds())
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func listen(network, addr string) (net.Listener, error) {
	if network == "vsock" {
		p, _ := strconv.ParseUint(addr, 10, 32)
		return agentd.ListenVsock(uint32(p))
	}
	return net.Listen("unix", addr)
}
