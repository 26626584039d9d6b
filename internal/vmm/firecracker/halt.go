package firecracker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/logging"
	"github.com/banger-dev/banger/internal/vmm"
)

// haltMarks are the lines Linux prints (pr_emerg, so even under "quiet")
// as it stops for good without a reset: kernel_power_off's and
// kernel_halt's, and newer kernels' wording of a poweroff turned into a
// halt. On x86 Firecracker emulates no ACPI power management, so the
// kernel cannot power off: reboot(2)'s POWER_OFF becomes a HALT ("System
// halted"), the vCPUs stop in HLT inside KVM, and Firecracker runs on with
// nothing to notice (GET / still says Running; its metrics count no exits
// an idle guest would not). A reset (reboot=k, Ctrl-Alt-Del) does end the
// process. The serial console is the one place the halt shows.
var haltMarks = []string{
	"reboot: System halted",
	"reboot: Power down",
	"reboot: Power off not available: System halted instead",
}

// haltTail is how much of the console's end Halted reads: the mark is the
// last thing a stopping kernel prints.
const haltTail = 4096

// Halted reports whether s's guest has stopped for good while Firecracker
// still runs: the last lines of its serial console (Spec.ConsolePath, or
// the part of Spec.LogPath since Firecracker's last start when the console
// goes to stdout) hold the kernel's halt or power-down line, optionally
// after its printk timestamp. The console file begins anew at every start
// and restore, so the line is this run's. It needs console=ttyS0 on the
// guest's command line. A guest root that writes such a line to ttyS0 gets
// its own VM stopped, as a poweroff would. The caller stops such a VM
// (Shutdown cannot: the guest no longer listens; kill the process).
func (d *Driver) Halted(_ context.Context, s vmm.Spec) (bool, error) {
	path, fromLog := s.ConsolePath, false
	if path == "" {
		path, fromLog = s.LogPath, true
	}
	if path == "" {
		return false, errors.New("firecracker: no console or log path to watch for a halted guest")
	}
	tail, err := readTail(path, haltTail)
	if err != nil {
		return false, fmt.Errorf("firecracker: reading the console: %w", err)
	}
	if fromLog {
		// Only what this run printed: after launch's last "==> " line.
		if i := bytes.LastIndex(tail, []byte("\n==> ")); i >= 0 {
			tail = tail[i+1:]
		}
		if bytes.HasPrefix(tail, []byte("==> ")) {
			_, tail, _ = bytes.Cut(tail, []byte("\n"))
		}
	}
	for _, line := range strings.Split(string(tail), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "[") { // "[   12.345678] reboot: ..."
			if _, rest, ok := strings.Cut(line, "] "); ok {
				line = rest
			}
		}
		for _, m := range haltMarks {
			if line == m {
				return true, nil
			}
		}
	}
	return false, nil
}

// readTail reads at most n bytes from the end of path.
func readTail(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := fi.Size() - n
	if off < 0 {
		off = 0
	}
	b := make([]byte, fi.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b, nil
}

// DefaultHaltPoll is how often the halt watch looks at a guest's console
// (a stat; the file's tail is read only when it changed).
const DefaultHaltPoll = 250 * time.Millisecond

// watch runs the halt watch of a Firecracker this driver launched, in the
// background, until it exits (see watchHalt).
func (d *Driver) watch(s vmm.Spec, p *process) {
	if d.HaltPoll < 0 {
		return
	}
	wait := func(t time.Duration) bool {
		select {
		case <-p.done:
			return true
		case <-time.After(t):
			return false
		}
	}
	// The kill goes through a pidfd: the pid of a child reaped between a
	// look at the console and the kill could be another process's. The
	// pidfd is the child's if the child was not yet reaped once it is
	// open (p.done closes only after the reaping).
	fd, err := unix.PidfdOpen(p.pid, 0)
	if err == nil && p.exited() {
		unix.Close(fd)
		return
	}
	kill := func() error { return unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) }
	if err != nil { // no pidfd_open (Linux < 5.3): the kill checks the child first
		kill = func() error {
			if p.exited() {
				return nil
			}
			return syscall.Kill(p.pid, syscall.SIGKILL)
		}
	}
	go func() {
		if err == nil {
			defer unix.Close(fd)
		}
		d.watchHalt(context.Background(), s, p.pid, wait, kill)
	}()
}

// WatchHalt runs the halt watch of a Firecracker this process did not
// launch, such as one bangerd finds running again after a restart: pid must
// be the Firecracker serving s.APISocket (its command line names the
// socket, as Args gives it), or WatchHalt refuses it. The watch holds a
// pidfd of the process, so a pid the kernel reuses after the exit is never
// signalled. It returns once the watch is running; the watch ends when the
// process exits or ctx is done.
func (d *Driver) WatchHalt(ctx context.Context, s vmm.Spec, pid int) error {
	if pid <= 0 {
		return fmt.Errorf("firecracker: halt watch: pid %d", pid)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("firecracker: halt watch of pid %d: %w", pid, err)
	}
	// Checked after the pidfd is open: the descriptor is this process's.
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !bytes.Contains(cmdline, []byte("\x00--api-sock\x00"+s.APISocket+"\x00")) {
		unix.Close(fd)
		return fmt.Errorf("firecracker: halt watch: pid %d is not the firecracker serving %s", pid, s.APISocket)
	}
	wait := func(t time.Duration) bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(t.Milliseconds()))
		if err != nil && !errors.Is(err, unix.EINTR) {
			return true // a pidfd that cannot be polled: stop watching
		}
		return n > 0 && fds[0].Revents != 0 // readable once the process exits
	}
	kill := func() error { return unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) }
	go func() {
		defer unix.Close(fd)
		d.watchHalt(ctx, s, pid, wait, kill)
	}()
	return nil
}

// watchHalt kills the process once Halted says its guest stopped for
// good, so that it exits as on a guest reset and bangerd, which notices
// VMMs that exit, marks the VM stopped. wait(t) waits up to t and reports
// whether the process has exited. The console is read again only when its
// size or modification time changed.
func (d *Driver) watchHalt(ctx context.Context, s vmm.Spec, pid int, wait func(time.Duration) bool, kill func() error) {
	poll := d.HaltPoll
	if poll <= 0 {
		poll = DefaultHaltPoll
	}
	path := s.ConsolePath
	if path == "" {
		path = s.LogPath
	}
	var lastSize int64 = -1
	var lastMod time.Time
	for {
		if wait(poll) || ctx.Err() != nil {
			return
		}
		fi, err := os.Stat(path)
		if err != nil || fi.Size() == lastSize && fi.ModTime().Equal(lastMod) {
			continue
		}
		lastSize, lastMod = fi.Size(), fi.ModTime()
		halted, err := d.Halted(ctx, s)
		if err != nil || !halted {
			continue
		}
		d.log.WarnContext(ctx, "firecracker: the guest halted (it cannot power off under firecracker); killing its firecracker",
			logging.KeyVM, vmName(s), "pid", pid, "console", path)
		if err := kill(); err != nil && !errors.Is(err, unix.ESRCH) { // ESRCH: it exited meanwhile
			d.log.WarnContext(ctx, "firecracker: killing the halted guest's firecracker", logging.KeyVM, vmName(s), "pid", pid, "error", err.Error())
		}
		wait(5 * time.Second)
		return
	}
}
