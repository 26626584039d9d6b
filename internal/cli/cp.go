package cli

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/model"
	"github.com/banger-dev/banger/internal/rpc"
)

func (a *app) vmCpCommand() *cobra.Command {
	var recursive bool
	cmd := &cobra.Command{
		Use:   "cp [-r] [NAME:]SRC [NAME:]DST",
		Short: "Copy files into or out of a running VM through its guest agent",
		Long: `Copies SRC to DST, one of them in a VM (NAME:PATH, an absolute guest path),
through the guest agent, without SSH. As with cp: onto an existing directory,
SRC goes inside it under its own name; otherwise it becomes DST. A directory
needs -r and is copied whole. Modes, mtimes and symlinks (as links) are
kept; into the VM, copied by root, numeric ownership too. Out of it the files
are yours, setuid and setgid bits dropped: the guest is not trusted with the
host's users. Nothing is left half-written: the copy
lands in a temporary name next to DST and is renamed into place when
complete. A terminal shows a progress bar for large copies.`,
		Example: `  banger vm cp ./app.tar.gz demo:/root/
  banger vm cp -r ./src demo:/root/src
  banger vm cp demo:/var/log/syslog ./syslog`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usageErrorf("want SRC and DST, one of them NAME:PATH in a VM, got %q: banger vm cp [-r] [NAME:]SRC [NAME:]DST", args)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			srcVM, src := splitRemote(args[0])
			dstVM, dst := splitRemote(args[1])
			switch {
			case srcVM == "" && dstVM == "":
				return usageErrorf("neither %q nor %q names a VM (NAME:PATH)", args[0], args[1])
			case srcVM != "" && dstVM != "":
				return usageErrorf("copy between two VMs through the host: banger vm cp %s ./tmp, then banger vm cp ./tmp %s", args[0], args[1])
			}
			for _, vm := range []string{srcVM, dstVM} {
				if vm != "" {
					if err := model.ValidateName("vm", vm); err != nil {
						return usageErrorf("%v", err)
					}
				}
			}
			remote := dst
			if srcVM != "" {
				remote = src
			}
			if !path.IsAbs(remote) {
				return usageErrorf("the guest path %q is not absolute", remote)
			}
			var res agent.PutResult
			var err error
			start := time.Now()
			if dstVM != "" {
				res, err = a.copyIn(cmd.Context(), dstVM, src, path.Clean(dst), recursive)
			} else {
				res, err = a.copyOut(cmd.Context(), srcVM, path.Clean(src), dst, recursive)
			}
			if err != nil {
				return err
			}
			if a.output == "json" {
				return writeJSON(a.stdout, map[string]any{"files": res.Files, "bytes": res.Bytes, "duration_ms": time.Since(start).Milliseconds()})
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&recursive, "recursive", "r", false, "copy directories")
	return cmd
}

// splitRemote splits NAME:PATH; a host path has no ':' before its first
// '/' (./a:b and /a:b are host paths).
func splitRemote(arg string) (vm, p string) {
	i := strings.IndexByte(arg, ':')
	if i <= 0 || strings.Contains(arg[:i], "/") {
		return "", arg
	}
	return arg[:i], arg[i+1:]
}

// copyIn copies the host's src into vm as dst.
func (a *app) copyIn(ctx context.Context, vm, src, dst string, recursive bool) (agent.PutResult, error) {
	fi, err := os.Stat(src)
	if err != nil {
		return agent.PutResult{}, rpc.WithHint(fmt.Errorf("%s: %w", src, errors.Join(err, rpc.ErrNotFound)), "check the host path")
	}
	if fi.IsDir() && !recursive {
		return agent.PutResult{}, usageErrorf("%s is a directory: copy it with -r", src)
	}
	size, err := treeSize(src)
	if err != nil {
		return agent.PutResult{}, err
	}
	// Onto an existing directory, src goes inside it.
	dir, name := path.Dir(dst), path.Base(dst)
	st, err := a.guestStat(ctx, vm, dst)
	if err != nil {
		return agent.PutResult{}, err
	}
	if st.Exists && st.Dir {
		dir, name = dst, filepath.Base(filepath.Clean(src))
	}
	conn, err := a.agentStream(ctx, vm, "cp")
	if err != nil {
		return agent.PutResult{}, err
	}
	defer conn.Close()
	pr, pw := io.Pipe()
	bar := a.newProgress("copying "+src+" to "+vm+":"+path.Join(dir, name), size)
	go func() { pw.CloseWithError(agent.WriteTar(bar.writer(pw), src, name)) }()
	res, err := agent.Put(ctx, conn, dir, name, pr)
	pr.Close()
	bar.done(err == nil)
	if err != nil {
		return res, copyErr(vm, err)
	}
	return res, nil
}

// copyOut copies vm's src to the host's dst (agent.CopyFrom: written
// under a temporary name and renamed once the agent confirmed all of it;
// the files are the caller's, without setuid or setgid bits).
func (a *app) copyOut(ctx context.Context, vm, src, dst string, recursive bool) (agent.PutResult, error) {
	dir, name := filepath.Dir(dst), filepath.Base(dst)
	if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
		dir, name = dst, path.Base(src)
	}
	conn, err := a.agentStream(ctx, vm, "cp")
	if err != nil {
		return agent.PutResult{}, err
	}
	defer conn.Close()
	var bar *progress
	var refused error
	res, err := agent.CopyFrom(ctx, conn, src, dir, name, func(g agent.GetResult) (func(int64), error) {
		if g.Dir && !recursive {
			refused = usageErrorf("%s:%s is a directory: copy it with -r", vm, src)
			return nil, refused
		}
		bar = a.newProgress("copying "+vm+":"+src+" to "+filepath.Join(dir, name), g.Size)
		return func(n int64) { bar.n.Store(n) }, nil
	})
	if bar != nil {
		bar.done(err == nil)
	}
	var we *agent.LocalError
	switch {
	case err == nil:
		return res, nil
	case refused != nil && errors.Is(err, refused):
		return res, refused
	case errors.As(err, &we):
		return res, rpc.WithHint(we, "nothing was left there; check the host directory")
	default:
		return res, copyErr(vm, err)
	}
}

func (a *app) guestStat(ctx context.Context, vm, p string) (agent.StatResult, error) {
	conn, err := a.agentStream(ctx, vm, "cp")
	if err != nil {
		return agent.StatResult{}, err
	}
	defer conn.Close()
	st, err := agent.Stat(ctx, conn, p)
	if err != nil {
		return st, copyErr(vm, err)
	}
	return st, nil
}

// copyErr gives an agent's refusal its code and a next step.
func copyErr(vm string, err error) error {
	var re *agent.RemoteError
	if !errors.As(err, &re) {
		return fmt.Errorf("vm %s: the copy failed: %w", vm, err)
	}
	hint := "nothing was left half-written; see the VM's journal: banger vm exec " + vm + " -- journalctl -u banger-agent"
	switch {
	case errors.Is(re, rpc.ErrNotFound):
		hint = "check the guest path: banger vm exec " + vm + " -- ls -la PATH"
	case errors.Is(re, rpc.ErrConflict):
		hint = "remove what is in the way first, or copy to another name"
	}
	return rpc.WithHint(fmt.Errorf("vm %s: %w", vm, re), hint)
}

// treeSize is the total size of the regular files under p.
func treeSize(p string) (int64, error) {
	var n int64
	err := filepath.WalkDir(p, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n, err
}

// renameTar rewrites a tar stream whose entries are from and from/... into
// one whose entries are to and to/... (a copy under another name).
func renameTar(r io.Reader, from, to string) io.Reader {
	if from == to {
		return r
	}
	pr, pw := io.Pipe()
	go func() {
		tr, tw := tar.NewReader(r), tar.NewWriter(pw)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				pw.CloseWithError(tw.Close())
				return
			}
			if err != nil {
				pw.CloseWithError(err)
				return
			}
			switch {
			case h.Name == from || h.Name == from+"/":
				h.Name = to + strings.TrimPrefix(h.Name, from)
			case strings.HasPrefix(h.Name, from+"/"):
				h.Name = to + h.Name[len(from):]
			default:
				pw.CloseWithError(fmt.Errorf("tar entry %q outside %q", h.Name, from))
				return
			}
			if err := tw.WriteHeader(h); err != nil {
				pw.CloseWithError(err)
				return
			}
			if _, err := io.Copy(tw, tr); err != nil {
				pw.CloseWithError(err)
				return
			}
		}
	}()
	return pr
}

// progress draws a bar on a terminal's stderr for copies of 8 MiB or more.
type progress struct {
	a      *app
	what   string
	total  int64
	n      atomic.Int64
	stop   chan struct{}
	wg     sync.WaitGroup
	active bool
}

func (a *app) newProgress(what string, total int64) *progress {
	p := &progress{a: a, what: what, total: total, stop: make(chan struct{})}
	if total < 8<<20 || !isTerminal(a.stderr) || a.output == "json" {
		return p
	}
	p.active = true
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		start := time.Now()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				p.draw(start)
			}
		}
	}()
	return p
}

func (p *progress) draw(start time.Time) {
	n := p.n.Load()
	frac := float64(n) / float64(max(p.total, 1))
	const width = 30
	bar := strings.Repeat("=", int(min(frac, 1)*width))
	rate := float64(n) / max(time.Since(start).Seconds(), 0.001) / (1 << 20)
	fmt.Fprintf(p.a.stderr, "\r%s [%-30s] %3.0f%% %.1f MiB/s", p.what, bar, min(frac, 1)*100, rate)
}

// writer counts what goes through w.
func (p *progress) writer(w io.Writer) io.Writer { return countingWriter{w: w, n: &p.n} }

func (p *progress) done(ok bool) {
	if !p.active {
		return
	}
	close(p.stop)
	p.wg.Wait()
	if ok {
		p.n.Store(p.total)
		p.draw(time.Now().Add(-time.Second))
	}
	fmt.Fprintln(p.a.stderr)
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}
