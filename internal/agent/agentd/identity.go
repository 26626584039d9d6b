package agentd

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/banger-dev/banger/internal/agent"
	"github.com/banger-dev/banger/internal/rpc"
)

// The files identity writes, under Server.Root.
const (
	etcHostname  = "etc/hostname"
	etcHosts     = "etc/hosts"
	etcMachineID = "etc/machine-id"
	etcResolv    = "etc/resolv.conf"
	etcSSH       = "etc/ssh"
	hostKeyName  = "ssh_host_ed25519_key"
	sshdPidFile  = "run/sshd.pid"
)

// sshdReloadTimeout bounds the wait for sshd to come back after SIGHUP
// (it re-executes itself and rewrites its pid file once it listens again),
// and for a starting sshd to write its pid file. Generous: under TCG an
// exec of sshd takes a few hundred milliseconds.
var sshdReloadTimeout = 10 * time.Second

// identityMu serialises identity calls: a second SIGHUP to an sshd that is
// still re-executing (its handler not yet set) would kill it.
var identityMu sync.Mutex

func (s *Server) root() string {
	if s.Root == "" {
		return "/"
	}
	return s.Root
}

func (s *Server) file(rel string) string { return filepath.Join(s.root(), rel) }

// identity applies the request's identity, step by step in the order of
// agent.Step*: a failure answers with the step's name and those applied
// before it, which stay applied.
func (s *Server) identity(st net.Conn, msg agent.Request) ([]any, error) {
	req, err := msg.Identity() // checked by DecodeRequest already
	if err != nil {
		return nil, answer(st, nil, err)
	}
	identityMu.Lock()
	defer identityMu.Unlock()
	start := time.Now()
	var res agent.IdentityResult
	var link netlink.Link
	findLink := func() error {
		if link != nil {
			return nil
		}
		l, err := guestLink()
		if err != nil {
			return err
		}
		link = l
		res.Interface = l.Attrs().Name
		return nil
	}
	prefix := req.Address
	flushed := false // the link's old IPv4 addresses and routes are gone
	steps := []struct {
		name string
		set  bool
		run  func() error
	}{
		{agent.StepClock, !req.Time.IsZero(), func() error { return s.clock(req.Time) }},
		{agent.StepEntropy, req.Entropy != nil, func() error { return s.entropy(req.Entropy) }},
		{agent.StepMachineID, req.MachineID != "", func() error {
			return writeAtomic(s.file(etcMachineID), []byte(req.MachineID+"\n"), modeOf(s.file(etcMachineID), 0o444))
		}},
		{agent.StepHostname, req.Hostname != "", func() error { return s.hostname(req.Hostname) }},
		{agent.StepHostKey, req.HostKey != nil, func() error {
			reloaded, err := s.hostKey(req.HostKey, req.HostKeyPub)
			res.SSHDReloaded = reloaded
			return err
		}},
		{agent.StepDNS, req.DNS.IsValid(), func() error {
			// A symlink (to a resolver's stub file) is replaced by a file.
			return writeAtomic(s.file(etcResolv), []byte("nameserver "+req.DNS.String()+"\n"), 0o644)
		}},
		{agent.StepMAC, req.MAC != nil, func() error {
			if err := findLink(); err != nil {
				return err
			}
			if prefix.IsValid() {
				// Before the MAC changes: with arp_notify the kernel
				// announces the link's addresses with the new MAC as it
				// comes up again, and the old address is the
				// snapshot's, another VM's.
				if err := flushIPv4(link); err != nil {
					return err
				}
				flushed = true
			}
			l, err := setMAC(link, req.MAC)
			if err != nil {
				return err
			}
			link = l
			if prefix.IsValid() {
				return nil // the address step flushes and announces
			}
			res.AnnounceDeferred, err = announce(link)
			return err
		}},
		{agent.StepAddress, prefix.IsValid(), func() error {
			if err := findLink(); err != nil {
				return err
			}
			if !flushed {
				if err := flushIPv4(link); err != nil {
					return err
				}
			}
			if err := setAddress(link, prefix, req.Gateway); err != nil {
				return err
			}
			var err error
			res.AnnounceDeferred, err = announce(link)
			return err
		}},
	}
	// A newer identity supersedes the announcement an older one left
	// waiting for the carrier.
	s.stopAnnounce()
	for _, step := range steps {
		if !step.set {
			continue
		}
		t := time.Now()
		if err := step.run(); err != nil {
			kept := res.Steps()
			if len(kept) == 0 {
				kept = []string{"none"}
			}
			err = fmt.Errorf("identity step %s failed (the steps before it stay applied: %s): %w", step.name, strings.Join(kept, ", "), err)
			return identityAttrs(res, step.name), answer(st, nil, err)
		}
		res.Applied = append(res.Applied, agent.IdentityStep{Step: step.name, DurationUS: time.Since(t).Microseconds()})
	}
	if res.AnnounceDeferred {
		s.deferAnnounce(link)
	}
	go unix.Sync() // the files written, to disk, off the answer's path
	res.DurationUS = time.Since(start).Microseconds()
	return identityAttrs(res, ""), answer(st, res, nil)
}

// announceTimeout bounds the wait of a deferred announcement for the
// carrier. bangerd brings the VMM's link up right after identity; a link
// that stays down longer (bangerd died in between) is a VM bangerd stops
// at its next start.
var announceTimeout = 2 * time.Minute

// deferAnnounce sends link's gratuitous ARPs once it has a carrier, in the
// background (identity's answer does not wait: bangerd brings the link up
// after it). The outcome is logged. Called with identityMu held.
func (s *Server) deferAnnounce(link netlink.Link) {
	stop := make(chan struct{})
	done := make(chan struct{})
	s.announce = &pendingAnnounce{stop: stop, done: done}
	name, index := link.Attrs().Name, link.Attrs().Index
	go func() {
		defer close(done)
		waited, err := announceWhenUp(index, stop, announceTimeout)
		switch {
		case errors.Is(err, errAnnounceSuperseded):
			s.log().Info("agent identity announcement superseded", "interface", name, "waited_ms", waited.Milliseconds())
		case err != nil:
			s.log().Warn("agent identity announcement failed", "interface", name, "waited_ms", waited.Milliseconds(), "error", err.Error())
		default:
			s.log().Info("agent identity announced", "interface", name, "waited_ms", waited.Milliseconds())
		}
	}()
}

// pendingAnnounce is a deferred announcement: closing stop ends it, done
// is closed when it has ended.
type pendingAnnounce struct {
	stop, done chan struct{}
}

// stopAnnounce ends a deferred announcement and waits for it to end.
// Called with identityMu held.
func (s *Server) stopAnnounce() {
	if s.announce == nil {
		return
	}
	close(s.announce.stop)
	<-s.announce.done
	s.announce = nil
}

func identityAttrs(res agent.IdentityResult, failed string) []any {
	attrs := []any{"applied", strings.Join(res.Steps(), ",")}
	if res.Interface != "" {
		attrs = append(attrs, "interface", res.Interface)
	}
	if res.AnnounceDeferred {
		attrs = append(attrs, "announce", "deferred until the link has a carrier")
	}
	if failed != "" {
		attrs = append(attrs, "step", failed)
	}
	return attrs
}

func (s *Server) clock(t time.Time) error {
	set := s.SetClock
	if set == nil {
		set = setClock
	}
	if err := set(t); err != nil {
		return fmt.Errorf("setting the clock: %w", err)
	}
	return nil
}

func (s *Server) entropy(b []byte) error {
	add := s.AddEntropy
	if add == nil {
		add = addEntropy
	}
	return add(b)
}

// hostname sets the kernel's host name, /etc/hostname and the 127.0.1.1
// line of /etc/hosts.
func (s *Server) hostname(name string) error {
	set := s.SetHostname
	if set == nil {
		set = sethostname
	}
	if err := set(name); err != nil {
		if errors.Is(err, unix.EPERM) {
			err = rpc.Errorf(rpc.ErrForbidden, "sethostname: %v", err)
		}
		return fmt.Errorf("setting the host name: %w", err)
	}
	if err := writeAtomic(s.file(etcHostname), []byte(name+"\n"), modeOf(s.file(etcHostname), 0o644)); err != nil {
		return err
	}
	hosts, err := os.ReadFile(s.file(etcHosts))
	if errors.Is(err, fs.ErrNotExist) {
		hosts, err = []byte("127.0.0.1\tlocalhost\n"), nil
	}
	if err != nil {
		return err
	}
	return writeAtomic(s.file(etcHosts), rewriteHosts(hosts, name), modeOf(s.file(etcHosts), 0o644))
}

func sethostname(name string) error { return unix.Sethostname([]byte(name)) }

// rewriteHosts replaces every 127.0.1.1 line of an /etc/hosts with
// "127.0.1.1\tname", keeping the other lines as they are; without one, it
// appends it.
func rewriteHosts(hosts []byte, name string) []byte {
	entry := "127.0.1.1\t" + name
	lines := strings.SplitAfter(string(hosts), "\n")
	var out strings.Builder
	found := false
	for _, line := range lines {
		body, nl := strings.CutSuffix(line, "\n")
		if f := strings.Fields(body); len(f) > 0 && f[0] == "127.0.1.1" {
			found = true
			out.WriteString(entry)
			if nl {
				out.WriteString("\n")
			}
			continue
		}
		out.WriteString(line)
	}
	if !found {
		if out.Len() > 0 && !strings.HasSuffix(out.String(), "\n") {
			out.WriteString("\n")
		}
		out.WriteString(entry + "\n")
	}
	return []byte(out.String())
}

// hostKey installs the host key pair (checked by DecodeRequest), then has
// a running sshd load it.
func (s *Server) hostKey(priv, pub []byte) (bool, error) {
	dir := s.file(etcSSH)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return false, rpc.Errorf(rpc.ErrNotFound, "no directory %s in the guest (is openssh-server installed?)", dir)
	}
	if !bytes.HasSuffix(pub, []byte("\n")) {
		pub = append(pub, '\n')
	}
	if err := writeAtomic(filepath.Join(dir, hostKeyName), priv, 0o600); err != nil {
		return false, err
	}
	if err := writeAtomic(filepath.Join(dir, hostKeyName+".pub"), pub, 0o644); err != nil {
		return false, err
	}
	return s.reloadSSHD()
}

// reloadSSHD sends SIGHUP to the listening sshd of the pid file, which
// re-executes itself and so loads the host keys anew, and waits until it
// rewrote the pid file (sshd writes it once its listening sockets are bound
// and its SIGHUP handler set). No pid file, or one whose process is not
// sshd, means no sshd runs: nothing to do (one that starts later reads the
// new key). An sshd that is starting (a process named sshd whose parent is
// init, no pid file yet) may have read the old key already: it is waited
// for, then reloaded; a SIGHUP before its handler is set would kill it.
// The processes are those of Root's proc.
func (s *Server) reloadSSHD() (bool, error) {
	if sshdReloading != nil {
		<-sshdReloading // the last reload's re-exec
		sshdReloading = nil
	}
	pidFile, proc := s.file(sshdPidFile), s.file("proc")
	deadline := time.Now().Add(sshdReloadTimeout)
	pid, before, err := readPidFile(pidFile)
	for errors.Is(err, fs.ErrNotExist) {
		if !sshdStarting(proc) {
			return false, nil
		}
		if time.Now().After(deadline) {
			return false, fmt.Errorf("sshd is starting but wrote no %s in %v: see its log (journalctl -u ssh)", pidFile, sshdReloadTimeout)
		}
		time.Sleep(10 * time.Millisecond)
		pid, before, err = readPidFile(pidFile)
	}
	if err != nil || !isSSHD(proc, pid) {
		return false, nil // not sshd's pid file, or a stale one
	}
	if err := unix.Kill(pid, unix.SIGHUP); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return false, nil
		}
		return false, fmt.Errorf("SIGHUP to sshd (pid %d): %w", pid, err)
	}
	if !s.WaitSSHDReload {
		// The re-exec (hundreds of milliseconds under TCG) is waited for
		// in the background, off identity's answer: sshd loads the new
		// key from its files, and a connection meanwhile is refused or
		// served by an sshd that forks and re-executes per connection,
		// which reads the key files anew. The next identity waits for
		// this one's re-exec (a second SIGHUP too early kills sshd); the
		// outcome is logged.
		done := make(chan struct{})
		sshdReloading = done
		go func() {
			defer close(done)
			t := time.Now()
			if err := waitReexec(pidFile, proc, pid, before, deadline); err != nil {
				s.log().Warn("agent identity: sshd reload", "pid", pid, "error", err.Error())
				return
			}
			s.log().Info("agent identity: sshd reloaded", "pid", pid, "waited_ms", time.Since(t).Milliseconds())
		}()
		return true, nil
	}
	return true, waitReexec(pidFile, proc, pid, before, deadline)
}

// sshdReloading, when set, is closed once the last SIGHUP's re-exec
// ended. Guarded by identityMu.
var sshdReloading chan struct{}

// waitReexec waits for sshd pid to rewrite its pid file after a SIGHUP.
func waitReexec(pidFile, proc string, pid int, before fs.FileInfo, deadline time.Time) error {
	for {
		time.Sleep(5 * time.Millisecond)
		if p, fi, err := readPidFile(pidFile); err == nil && p == pid && !sameFile(before, fi) {
			return nil
		}
		if !alive(proc, pid) {
			return fmt.Errorf("sshd (pid %d) exited after SIGHUP: see its log (journalctl -u ssh)", pid)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sshd (pid %d) had not rewritten %s %v after SIGHUP: see its log (journalctl -u ssh)", pid, pidFile, sshdReloadTimeout)
		}
	}
}

// readPidFile reads a pid file: one positive number and a newline.
func readPidFile(path string) (int, fs.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, nil, err
	}
	b := make([]byte, 32)
	n, _ := f.Read(b)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	if err != nil || pid <= 0 {
		return 0, nil, fmt.Errorf("%s holds no pid", path)
	}
	return pid, fi, nil
}

// sameFile reports whether a and b are the same write of one file: same
// inode, size and modification time.
func sameFile(a, b fs.FileInfo) bool {
	return os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// isSSHD reports whether process pid is named sshd (proc: the proc file
// system's directory).
func isSSHD(proc string, pid int) bool {
	b, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "comm"))
	return err == nil && strings.TrimSpace(string(b)) == "sshd"
}

// alive reports whether process pid exists and is not a zombie.
func alive(proc string, pid int) bool {
	b, err := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z' && b[i+2] != 'X'
}

// sshdStarting reports whether a process named sshd runs whose parent is
// init (what a starting listener is; a session's sshd is the listener's
// child).
func sshdStarting(proc string) bool {
	entries, err := os.ReadDir(proc)
	if err != nil {
		return false
	}
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile(filepath.Join(proc, e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || !bytes.HasSuffix(b[:i], []byte("(sshd")) {
			continue
		}
		if f := strings.Fields(string(b[i+1:])); len(f) > 1 && f[1] == "1" {
			return true
		}
	}
	return false
}

// modeOf is the permission bits of the regular file at path, or def.
func modeOf(path string, def fs.FileMode) fs.FileMode {
	if fi, err := os.Lstat(path); err == nil && fi.Mode().IsRegular() {
		return fi.Mode().Perm()
	}
	return def
}

// writeAtomic replaces path with a file of data and mode perm: written to
// a temporary file beside it, synced, then renamed over it (a symlink at
// path is replaced, not followed). A reader sees the old file or the new
// one, never a part; on failure the temporary file is removed.
//
// A file that is a mount point cannot be renamed over (EBUSY): systemd
// bind-mounts a transient /run/machine-id over an empty /etc/machine-id
// at first boot until systemd-machine-id-commit.service commits it, and a
// container manager mounts its own /etc/hosts, /etc/hostname and
// /etc/resolv.conf. Such a file is rewritten in place instead (one write,
// then fsync; its mode is left as it is), which is what the mount's owner
// reads and commits.
func writeAtomic(path string, data []byte, perm fs.FileMode) error {
	err := renameInto(path, data, perm)
	if errors.Is(err, unix.EBUSY) {
		if err = writeInPlace(path, data); err != nil {
			return fmt.Errorf("writing %s (a mount point) in place: %w", path, err)
		}
		return nil
	}
	return err
}

// writeInPlace truncates the regular file at path (not a symlink) and
// writes data into it.
func writeInPlace(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return fmt.Errorf("not a regular file")
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func renameInto(path string, data []byte, perm fs.FileMode) error {
	dir, base := filepath.Split(path)
	f, err := os.CreateTemp(dir, "."+base+".banger-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	err = func() error {
		if _, err := f.Write(data); err != nil {
			return err
		}
		// No fsync per file (each costs tens of milliseconds in a TCG
		// guest): ext4 (data=ordered, auto_da_alloc) writes a file
		// renamed over another before the rename, so a crash leaves the
		// old content or the new; identity syncs once, in the background.
		return f.Chmod(perm)
	}()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// addEntropy adds b to the kernel's input pool, crediting all of its bits
// (RNDADDENTROPY), then has the kernel's RNG reseed from the pool at once
// (RNDRESEEDCRNG), on /dev/urandom. Both need CAP_SYS_ADMIN.
func addEntropy(b []byte) error {
	fd, err := unix.Open("/dev/urandom", unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening /dev/urandom: %w", err)
	}
	defer unix.Close(fd)
	info := randPoolInfo(b)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(unix.RNDADDENTROPY), uintptr(unsafe.Pointer(&info[0]))); e != 0 {
		return ioctlErr("RNDADDENTROPY", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(unix.RNDRESEEDCRNG), 0); e != 0 {
		return ioctlErr("RNDRESEEDCRNG", e)
	}
	return nil
}

func ioctlErr(name string, e unix.Errno) error {
	if e == unix.EPERM {
		return rpc.Errorf(rpc.ErrForbidden, "%s on /dev/urandom: %v (the agent needs CAP_SYS_ADMIN)", name, e)
	}
	return fmt.Errorf("%s on /dev/urandom: %w", name, e)
}

// randPoolInfo lays b out as linux/random.h's struct rand_pool_info:
// int entropy_count (bits credited), int buf_size (bytes), then the bytes,
// in 32-bit words.
func randPoolInfo(b []byte) []uint32 {
	words := make([]uint32, 2+(len(b)+3)/4)
	words[0] = uint32(len(b) * 8)
	words[1] = uint32(len(b))
	if len(b) == 0 {
		return words
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&words[2])), 4*(len(words)-2)), b)
	return words
}
