// Command banger-helper is banger's root helper: a small privileged server
// on a unix socket (default /run/banger/helper.sock) that bangerd calls for
// the few things that need root: bridges, TAPs and NAT tables, and a TAP or
// a port 53 socket opened for its owner. It admits root and the users of
// the --grants file (written by `banger system install`), each only for its
// own bridge, subnet and TAP names, and records who owns what it made in
// --state-file. See docs/helper.md; systemd runs it from
// banger-helper.service.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/banger-dev/banger/internal/helper"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	o, showVersion, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "banger-helper:", err)
		return 2
	}
	if showVersion {
		fmt.Fprintln(stdout, "banger-helper", version.String())
		return 0
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(stderr, "banger-helper: must run as root (Hint: it is started by systemd as banger-helper.service; see `banger system install`)")
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := helper.Run(ctx, o, stderr); err != nil {
		fmt.Fprintln(stderr, "banger-helper:", err)
		return 1
	}
	return 0
}

// parseFlags turns the command line into helper options.
func parseFlags(args []string, stderr io.Writer) (helper.Options, bool, error) {
	o := helper.DefaultOptions()
	fs := flag.NewFlagSet("banger-helper", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Socket, "socket", o.Socket, "unix socket to listen on")
	mode := fs.String("socket-mode", fmt.Sprintf("%04o", uint32(o.SocketMode)), "socket file mode, octal")
	fs.StringVar(&o.GrantsFile, "grants", o.GrantsFile, `root's grants: who may call the helper, with which bridge and subnet ("" : root only)`)
	fs.StringVar(&o.StateFile, "state-file", o.StateFile, "where the owners of the objects the helper made are recorded (root-only directory)")
	fs.StringVar(&o.LogFile, "log", "", "JSON log file (default: stderr)")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return o, false, err
	}
	if fs.NArg() > 0 {
		return o, false, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	m, err := strconv.ParseUint(*mode, 8, 32)
	if err != nil || m > 0o777 {
		return o, false, fmt.Errorf("--socket-mode %q: want an octal mode such as 0660", *mode)
	}
	o.SocketMode = os.FileMode(m)
	if *level == "" {
		*level = "info"
	}
	if o.LogLevel, err = logging.ParseLevel(*level); err != nil {
		return o, false, err
	}
	if o.LogFile == "-" {
		o.LogFile = ""
	}
	return o, *showVersion, nil
}
