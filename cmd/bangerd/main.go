// Command bangerd is banger's per-user daemon. The banger CLI starts it on
// demand; run it by hand only to debug (it stays in the foreground and logs
// JSON to its log file, or to stderr with --log -).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/banger-dev/banger/internal/config"
	"github.com/banger-dev/banger/internal/daemon"
	"github.com/banger-dev/banger/internal/imagebuild"
	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/mount"
	"github.com/banger-dev/banger/internal/paths"
	"github.com/banger-dev/banger/internal/rpc"
	"github.com/banger-dev/banger/internal/version"
)

func main() {
	// mmdebstrap runs a copy of this binary as an image build's customize
	// hook (internal/imagebuild): recognised by its environment, before
	// any flag or config is read.
	if imagebuild.IsHook() {
		os.Exit(imagebuild.RunHook())
	}
	// A VM's virtiofsd is started through a copy of this binary that sets
	// up its namespaces first (internal/mount).
	if mount.IsWrapper() {
		os.Exit(mount.RunWrapper())
	}
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("bangerd", flag.ContinueOnError)
	logLevel := fs.String("log-level", "", "log level: debug, info, warn, error (default: BANGER_LOG_LEVEL, then config)")
	logPath := fs.String("log", "", "log file, or - for stderr (default: the state directory's bangerd.log)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: bangerd [flags]\n\nbangerd is banger's per-user daemon; `banger` starts it when needed.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if *showVersion {
		fmt.Println("bangerd", version.String())
		return 0
	}
	// Everything bangerd creates is private to its user unless it says otherwise.
	syscall.Umask(0o077)

	layout, err := paths.Default()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bangerd:", err)
		return 1
	}
	cfg, err := config.Load(layout.ConfigFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bangerd:", err)
		return 1
	}
	levelName := firstNonEmpty(*logLevel, os.Getenv("BANGER_LOG_LEVEL"), cfg.LogLevel)
	level, err := logging.ParseLevel(levelName)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bangerd:", err)
		return 2
	}
	if err := layout.Ensure(); err != nil {
		fmt.Fprintln(os.Stderr, "bangerd:", err)
		return 1
	}
	var out io.Writer = os.Stderr
	if *logPath != "-" {
		path := firstNonEmpty(*logPath, layout.DaemonLog())
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bangerd: opening log:", err)
			return 1
		}
		defer f.Close()
		out = f
	}
	logger := logging.New(out, level, "bangerd")

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)

	err = daemon.Run(ctx, daemon.Options{
		Layout:     layout,
		Config:     cfg,
		ConfigPath: layout.ConfigFile,
		Logger:     logger,
		LogLevel:   level.String(),
	})
	if err != nil {
		logger.Error("bangerd failed", "error", err.Error())
		fmt.Fprintln(os.Stderr, "bangerd:", err)
		if errors.Is(err, rpc.ErrConflict) {
			return 3
		}
		return 1
	}
	return 0
}

func firstNonEmpty(v ...string) string {
	for _, s := range v {
		if s != "" {
			return s
		}
	}
	return ""
}
