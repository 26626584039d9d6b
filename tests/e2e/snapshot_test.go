package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/tests/harness"
)

// guestOut runs argv in the VM through its agent and returns its stdout,
// trimmed.
func guestOut(t *testing.T, e *harness.Env, vm string, argv ...string) string {
	t.Helper()
	r := e.MustBanger(append([]string{"vm", "exec", vm, "--"}, argv...)...)
	return strings.TrimSpace(r.Stdout)
}

func stageNames(info api.VMInfo) []string {
	var out []string
	for _, s := range info.Runtime.LastBoot {
		out = append(out, s.Name)
	}
	return out
}

// TestSnapshots drives pause, snapshots, restores, forks, creates from a
// snapshot and warm creates, as a user would, under qemu/tcg:
//   - the first create of the default size boots cold and makes the image's
//     warm template; the next restores it;
//   - pause keeps a guest counter still, the VM shows paused, exec is refused;
//   - vm restore brings back a file's earlier content under /root and a
//     process started before the snapshot;
//   - clones of one snapshot have pairwise distinct IP, MAC, hostname,
//     machine-id, SSH host key and /dev/urandom output, resolve each other
//     by name and reach each other, and answer SSH with their pinned key;
//   - a fork carries the source's files and processes;
//   - snapshots of another memory size or another qemu build are refused
//     with the reason.
func TestSnapshots(t *testing.T) {
	requireE2E(t)
	image := ensureImage(t)
	if !testutil.InNetNS(t) {
		return
	}
	e := newVMEnv(t, image)

	// The first create of the default size: cold, then the template.
	e.MustBanger("vm", "create", "--name", "src")
	var src api.VMInfo
	e.JSON(&src, "vm", "show", "src")
	if got := stageNames(src); !strings.Contains(strings.Join(got, ","), "boot") || got[len(got)-1] != "template" {
		t.Fatalf("first create's stages: %v", src.Runtime.LastBoot)
	}
	if d := harness.StageDetail(src, "template"); !strings.Contains(d, "saved") {
		t.Fatalf("first create made no template: %q", d)
	}
	var all []api.SnapshotInfo
	e.JSON(&all, "snapshot", "list", "--all")
	if len(all) != 1 || all[0].Kind != "template" {
		t.Fatalf("snapshot list --all: %+v", all)
	}

	t.Run("warm create restores the template", func(t *testing.T) {
		r := e.MustBanger("vm", "create", "--name", "warm1")
		var w api.VMInfo
		e.JSON(&w, "vm", "show", "warm1")
		if d := harness.StageDetail(w, "restore"); !strings.Contains(d, all[0].Name) {
			t.Fatalf("warm create did not restore the template: %v\n%s", w.Runtime.LastBoot, r.Stderr)
		}
		if h := guestOut(t, e, "warm1", "hostname"); h != "warm1" {
			t.Fatalf("warm clone's hostname %q", h)
		}
		var c api.VMInfo
		e.MustBanger("vm", "create", "--name", "cold1", "--cold")
		e.JSON(&c, "vm", "show", "cold1")
		if harness.StageDetail(c, "boot") == "" || harness.StageDetail(c, "restore") != "" {
			t.Fatalf("--cold did not boot: %v", c.Runtime.LastBoot)
		}
		t.Logf("cold %v; warm %v", c.Runtime.LastBoot, w.Runtime.LastBoot)
		e.MustBanger("vm", "delete", "cold1")
	})

	t.Run("pause keeps the guest still", func(t *testing.T) {
		e.MustBanger("vm", "exec", "src", "--", "sh", "-c",
			"setsid -f sh -c 'i=0; while :; do i=$((i+1)); echo $i > /run/counter; sleep 0.1; done' </dev/null >/dev/null 2>&1")
		time.Sleep(1500 * time.Millisecond)
		e.MustBanger("vm", "pause", "src")
		var p api.VMInfo
		e.JSON(&p, "vm", "show", "src")
		if p.Runtime.State != "paused" {
			t.Fatalf("state after pause: %s", p.Runtime.State)
		}
		r := e.Banger("vm", "exec", "src", "--", "true")
		if r.Code == 0 || !strings.Contains(r.Stderr, "banger vm resume src") {
			t.Fatalf("exec on a paused VM: %s", r)
		}
		// Paused survives bangerd's death: the new daemon reads it back.
		pid := e.Status().PID
		syscall.Kill(pid, syscall.SIGKILL)
		harness.WaitDead(t, pid)
		e.JSON(&p, "vm", "show", "src")
		if p.Runtime.State != "paused" || !p.Alive {
			t.Fatalf("after bangerd's kill -9 a paused VM is %s (alive %v)", p.Runtime.State, p.Alive)
		}
		time.Sleep(2 * time.Second)
		e.MustBanger("vm", "resume", "src")
		a := guestOut(t, e, "src", "cat", "/run/counter")
		time.Sleep(1500 * time.Millisecond)
		b := guestOut(t, e, "src", "cat", "/run/counter")
		ai, _ := strconv.Atoi(a)
		bi, _ := strconv.Atoi(b)
		// Counting on through 3 s paused would add ~30 before the resume;
		// counting again after it is proven by b > a.
		if ai == 0 || ai > 40 || bi <= ai {
			t.Fatalf("counter %d after 1.5 s running and 3 s paused, %d 1.5 s later", ai, bi)
		}
		t.Logf("counter %d after 1.5 s running + 3 s paused; %d after 1.5 s more", ai, bi)
	})

	t.Run("restore brings back files and processes", func(t *testing.T) {
		e.MustBanger("vm", "exec", "src", "--", "sh", "-c", "echo before > /root/state.txt && sync")
		e.MustBanger("vm", "exec", "src", "--", "sh", "-c", "setsid -f sleep 4242 </dev/null >/dev/null 2>&1")
		var sn api.SnapshotInfo
		e.JSON(&sn, "vm", "snapshot", "src", "--name", "s1")
		t.Logf("snapshot s1: %d bytes, the VM paused %d ms, took %d ms", sn.SizeBytes, sn.PausedMS, sn.TookMS)
		e.MustBanger("vm", "exec", "src", "--", "sh", "-c", "echo after > /root/state.txt && pkill -f '^sleep 4242'; sync")
		if got := guestOut(t, e, "src", "cat", "/root/state.txt"); got != "after" {
			t.Fatalf("before the restore: %q", got)
		}
		e.MustBanger("vm", "restore", "src", "s1")
		if got := guestOut(t, e, "src", "cat", "/root/state.txt"); got != "before" {
			t.Fatalf("after the restore /root/state.txt is %q", got)
		}
		if out := guestOut(t, e, "src", "pgrep", "-f", "^sleep 4242"); out == "" {
			t.Fatal("the process started before the snapshot is gone")
		}
		if h := guestOut(t, e, "src", "hostname"); h != "src" {
			t.Fatalf("restored hostname %q", h)
		}
		e.MustBanger("vm", "ssh", "src", "--", "true")
	})

	t.Run("clones are distinct and reach each other", func(t *testing.T) {
		names := []string{"k1", "k2", "k3"}
		var wg sync.WaitGroup
		errs := make([]string, len(names))
		for i, n := range names {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if r := e.Banger("vm", "create", "--from", "s1", "--name", n); r.Code != 0 {
					errs[i] = r.String()
				}
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != "" {
				t.Fatalf("create --from s1 %s: %s", names[i], err)
			}
		}
		facts := map[string]map[string]string{}
		for _, n := range append([]string{"src"}, names...) {
			f := map[string]string{
				"ip":         guestOut(t, e, n, "sh", "-c", "ip -4 -o addr show scope global | awk '{print $4}'"),
				"mac":        guestOut(t, e, n, "sh", "-c", "cat /sys/class/net/e*/address"),
				"hostname":   guestOut(t, e, n, "hostname"),
				"machine-id": guestOut(t, e, n, "cat", "/etc/machine-id"),
				"host key":   guestOut(t, e, n, "cat", "/etc/ssh/ssh_host_ed25519_key.pub"),
				"urandom":    guestOut(t, e, n, "sh", "-c", "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"),
			}
			for k, v := range f {
				if v == "" {
					t.Fatalf("%s: empty %s", n, k)
				}
			}
			var info api.VMInfo
			e.JSON(&info, "vm", "show", n)
			if !strings.HasPrefix(f["ip"], info.Runtime.GuestIP+"/") || f["mac"] != info.Runtime.MAC || f["hostname"] != n {
				t.Fatalf("%s: the guest says %v, banger says ip %s mac %s", n, f, info.Runtime.GuestIP, info.Runtime.MAC)
			}
			facts[n] = f
		}
		for _, k := range []string{"ip", "mac", "hostname", "machine-id", "host key", "urandom"} {
			seen := map[string]string{}
			for n, f := range facts {
				if other, dup := seen[f[k]]; dup {
					t.Errorf("%s and %s share %s %q", n, other, k, f[k])
				}
				seen[f[k]] = n
			}
		}
		// The host key each clone serves is the one pinned for it.
		for _, n := range names {
			e.MustBanger("vm", "ssh", n, "--", "true")
		}
		for i, n := range names {
			peer := names[(i+1)%len(names)]
			got := guestOut(t, e, n, "getent", "hosts", peer+".banger")
			if !strings.HasPrefix(got, strings.Split(facts[peer]["ip"], "/")[0]+" ") {
				t.Fatalf("%s resolves %s as %q, want %s", n, peer, got, facts[peer]["ip"])
			}
			e.MustBanger("vm", "exec", n, "--", "ping", "-c", "1", "-W", "5", peer+".banger")
		}
		e.MustBanger("vm", "exec", "k1", "--", "ping", "-c", "1", "-W", "5", "src.banger")
		var sn api.SnapshotInfo
		e.JSON(&sn, "snapshot", "show", "s1")
		if len(sn.UsedBy) < len(names) {
			t.Fatalf("snapshot s1 used by %v", sn.UsedBy)
		}
		for _, n := range names {
			e.MustBanger("vm", "delete", n)
		}
	})

	t.Run("fork", func(t *testing.T) {
		e.MustBanger("vm", "exec", "src", "--", "sh", "-c", "echo forked > /root/fork.txt")
		r := e.MustBanger("vm", "fork", "src", "--name", "f1")
		if got := guestOut(t, e, "f1", "cat", "/root/fork.txt"); got != "forked" {
			t.Fatalf("fork's /root/fork.txt: %q\n%s", got, r.Stderr)
		}
		if guestOut(t, e, "f1", "pgrep", "-f", "^sleep 4242") == "" {
			t.Fatal("the fork lacks the source's process")
		}
		if h := guestOut(t, e, "f1", "hostname"); h != "f1" {
			t.Fatalf("fork's hostname %q", h)
		}
		// The source runs on, apart.
		e.MustBanger("vm", "exec", "src", "--", "sh", "-c", "echo src > /root/fork.txt")
		if got := guestOut(t, e, "f1", "cat", "/root/fork.txt"); got != "forked" {
			t.Fatalf("the source's write reached the fork: %q", got)
		}
		e.MustBanger("vm", "delete", "f1")
	})

	t.Run("image warm", func(t *testing.T) {
		var sn api.SnapshotInfo
		e.JSON(&sn, "image", "warm", "default", "--memory", "384")
		if sn.Kind != "template" || !strings.Contains(sn.Name, "384") {
			t.Fatalf("image warm made %+v", sn)
		}
		var list []api.VMInfo
		e.JSON(&list, "vm", "list")
		for _, v := range list {
			if strings.HasPrefix(v.Name, "warm-") {
				t.Fatalf("image warm left its VM %s", v.Name)
			}
		}
		e.MustBanger("vm", "create", "--name", "w384", "--memory", "384")
		var w api.VMInfo
		e.JSON(&w, "vm", "show", "w384")
		if d := harness.StageDetail(w, "allocate"); !strings.Contains(d, sn.Name) {
			t.Fatalf("a create of 384 MiB did not restore %s: %v", sn.Name, w.Runtime.LastBoot)
		}
		// Again: the template exists, nothing is made.
		r := e.MustBanger("image", "warm", "default", "--memory", "384")
		if !strings.Contains(r.Stdout, sn.Name) {
			t.Fatalf("a second image warm: %s", r)
		}
		e.MustBanger("vm", "delete", "w384")
	})

	t.Run("mismatches are refused with the reason", func(t *testing.T) {
		e.MustBanger("vm", "create", "--name", "small", "--memory", "384", "--cold")
		e.MustBanger("vm", "snapshot", "small", "--name", "s-small")
		r := e.Banger("vm", "restore", "src", "s-small")
		if r.Code == 0 || !strings.Contains(r.Stderr, "memory") || !strings.Contains(r.Stderr, "384") {
			t.Fatalf("restore of a 384 MiB snapshot into a 512 MiB VM: %s", r)
		}
		e.MustBanger("vm", "delete", "small")
		e.MustBanger("snapshot", "delete", "s-small")

		// Another qemu build: the same qemu behind a wrapper that reports
		// another version, as a qemu upgrade would.
		wrap := filepath.Join(e.Root, "qemu-other")
		script := fmt.Sprintf("#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'QEMU emulator version 7.2.99 (banger test build)'; exit 0; fi\nexec %s \"$@\"\n", qemuPath(t))
		if err := os.WriteFile(wrap, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		cfg, _ := os.ReadFile(filepath.Join(e.Root, "config.toml"))
		e.MustBanger("daemon", "stop")
		e.WriteConfig(string(cfg) + "[binaries]\nqemu = \"" + wrap + "\"\n")
		r = e.Banger("vm", "create", "--from", "s1", "--name", "other")
		if r.Code == 0 || !strings.Contains(r.Stderr, "7.2.99") {
			t.Fatalf("create from a snapshot of another qemu build: %s", r)
		}
		// A plain create boots cold then, and says why.
		e.MustBanger("vm", "create", "--name", "other")
		var o api.VMInfo
		e.JSON(&o, "vm", "show", "other")
		if harness.StageDetail(o, "boot") == "" {
			t.Fatalf("create under another qemu build did not boot cold: %v", o.Runtime.LastBoot)
		}
		e.MustBanger("vm", "delete", "other")
		e.MustBanger("daemon", "stop")
		e.WriteConfig(string(cfg))
	})

	e.MustBanger("snapshot", "delete", "s1")
	e.MustBanger("vm", "delete", "src")
	e.MustBanger("vm", "delete", "warm1")
	verifyNoLeak(t, e)
}

func qemuPath(t *testing.T) string {
	for _, p := range []string{"/usr/bin/qemu-system-x86_64", "/usr/local/bin/qemu-system-x86_64"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Skip("no qemu-system-x86_64")
	return ""
}
