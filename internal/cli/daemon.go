package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/rpc"
)

func (a *app) daemonCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Inspect and control bangerd, the per-user daemon",
		Long: `bangerd holds banger's state and does the work the CLI asks for. The CLI
starts it on demand, so you rarely need these commands except to look at
its status and logs.`,
	}
	cmd.AddCommand(a.daemonStatusCommand(), a.daemonStopCommand(), a.daemonLogsCommand())
	return cmd
}

func (a *app) daemonStatusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show bangerd's pid, version, paths, VMM and helper (starts it if needed)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, err := a.client(ctx)
			if err != nil {
				return err
			}
			var st api.DaemonStatus
			if err := c.Call(ctx, api.MethodDaemonStatus, nil, &st); err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, st)
			}
			helper := "reachable, version " + st.Helper.Version
			if !st.Helper.Reachable {
				helper = "not reachable: " + st.Helper.Error
				if st.Helper.Hint != "" {
					helper += " (" + st.Helper.Hint + ")"
				}
			}
			vmm := st.VMM
			if st.VMMReason != "" {
				vmm += " (" + st.VMMReason + ")"
			}
			return kv(a.stdout, [][2]string{
				{"bangerd", fmt.Sprintf("running, pid %d, version %s, up %s", st.PID, st.Version, humanDuration(time.Duration(st.UptimeSeconds*float64(time.Second))))},
				{"socket", st.Socket},
				{"log", fmt.Sprintf("%s (level %s)", st.LogPath, st.LogLevel)},
				{"state dir", st.StateDir},
				{"database", fmt.Sprintf("%s (schema v%d)", st.DatabasePath, st.SchemaVersion)},
				{"config", st.ConfigPath},
				{"vmm", vmm},
				{"helper", st.Helper.Socket + ": " + helper},
				{"objects", fmt.Sprintf("%d images, %d VMs (%d running)", st.Counts.Images, st.Counts.VMs, st.Counts.VMsRunning)},
			})
		},
	}
}

func (a *app) daemonStopCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "stop",
		Short: "Stop bangerd (running VMs keep running and are re-adopted at the next start)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c, ok := a.existingClient(ctx)
			if !ok {
				if a.output == "json" {
					return writeJSON(a.stdout, map[string]any{"stopped": false, "running": false})
				}
				a.printf("bangerd is not running\n")
				return nil
			}
			var p api.Ping
			if err := c.Call(ctx, api.MethodDaemonStop, nil, &p); err != nil {
				return err
			}
			if err := a.waitGone(ctx, 15*time.Second); err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, map[string]any{"stopped": true, "pid": p.PID})
			}
			a.printf("bangerd (pid %d) stopped\n", p.PID)
			return nil
		},
	}
}

type logsOptions struct {
	opID   string
	follow bool
	lines  int
}

func (a *app) daemonLogsCommand() *cobra.Command {
	var o logsOptions
	cmd := &cobra.Command{
		Use:   "logs",
		Short: "Show bangerd's log, optionally only the lines of one operation",
		Long: `Shows bangerd's JSON log rendered as text (raw JSON lines with -o json).
Every error banger prints names an op id; --op shows just the lines of that
operation, from the CLI through the daemon.`,
		Example: `  banger daemon logs -n 50
  banger daemon logs --op op-3f9a1c
  banger daemon logs --follow`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.opID != "" && !op.Valid(o.opID) {
				return usageErrorf("--op %q: an op id looks like op-3f9a1c", o.opID)
			}
			return a.showLogs(cmd.Context(), a.layout.DaemonLog(), o)
		},
	}
	cmd.Flags().StringVar(&o.opID, "op", "", "show only lines of this operation (op-XXXXXX)")
	cmd.Flags().BoolVarP(&o.follow, "follow", "f", false, "keep printing new lines as they are written")
	cmd.Flags().IntVarP(&o.lines, "lines", "n", 0, "show only the last N matching lines (0: all)")
	return cmd
}

// showLogs prints the matching lines of a JSON log file, then follows it.
func (a *app) showLogs(ctx context.Context, path string, o logsOptions) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) && o.follow {
		// Follow a log that is not there yet.
		for errors.Is(err, os.ErrNotExist) {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(200 * time.Millisecond):
			}
			f, err = os.Open(path)
		}
	}
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return rpc.WithHint(fmt.Errorf("no daemon log at %s: %w", path, rpc.ErrNotFound), "bangerd has not run yet; start it with: banger daemon status")
		}
		return err
	}
	defer f.Close()

	match := func(line []byte) bool {
		if o.opID == "" {
			return true
		}
		if !bytes.Contains(line, []byte(o.opID)) {
			return false
		}
		var rec struct {
			OpID string `json:"op_id"`
		}
		return json.Unmarshal(line, &rec) == nil && rec.OpID == o.opID
	}
	emit := func(line []byte) {
		if a.output == "json" {
			a.stdout.Write(line)
			a.stdout.Write([]byte("\n"))
			return
		}
		fmt.Fprintln(a.stdout, renderLogLine(line))
	}

	r := bufio.NewReaderSize(f, 64<<10)
	var ring [][]byte
	var partial []byte
	readAvailable := func(collect bool) error {
		for {
			chunk, err := r.ReadBytes('\n')
			partial = append(partial, chunk...)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			line := bytes.TrimRight(partial, "\n")
			partial = nil
			if !match(line) {
				continue
			}
			if collect && o.lines > 0 {
				ring = append(ring, append([]byte(nil), line...))
				if len(ring) > o.lines {
					ring = ring[1:]
				}
				continue
			}
			emit(line)
		}
	}
	if err := readAvailable(true); err != nil {
		return err
	}
	for _, l := range ring {
		emit(l)
	}
	if !o.follow {
		return nil
	}
	var offset int64
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
		// A truncated or replaced log starts over.
		if st, err := os.Stat(path); err == nil {
			cur, _ := f.Seek(0, io.SeekCurrent)
			offset = cur - int64(r.Buffered())
			if st.Size() < offset {
				f.Close()
				if f, err = os.Open(path); err != nil {
					return err
				}
				r.Reset(f)
				partial = nil
			}
		}
		if err := readAvailable(false); err != nil {
			return err
		}
	}
}
