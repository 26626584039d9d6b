package e2e

import (
	"io"
	"net"
	"net/http"
	"os"
	osexec "os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/tests/harness"
)

// TestMountsAndPorts drives host folders and published ports with the real
// CLI, one VM under qemu in the test's network namespace: a file written
// on the host is read in the guest and one the guest writes appears on the
// host, :ro refuses the guest's writes, a published port reaches busybox
// httpd in the guest from 127.0.0.1 and from nowhere else, both survive
// kill -9 of bangerd and a stop and start, kill -9 of a virtiofsd is
// noticed, snapshot and fork are refused with the reason, every bad input
// is refused before anything starts, and delete leaves nothing
// (system verify, in newVMEnv's cleanup).
func TestMountsAndPorts(t *testing.T) {
	requireE2E(t)
	image := ensureImage(t)
	if !testutil.InNetNS(t) {
		return
	}
	e := newVMEnv(t, image)
	src, ro := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(src, "hello.txt"), []byte("from-the-host\n"), 0o644)
	os.WriteFile(filepath.Join(ro, "keep.txt"), []byte("read-only\n"), 0o644)

	e.MustBanger("vm", "create", "--name", "mnt", "--mount", src+":/root/src", "--mount", ro+":/srv/ro:ro",
		"--publish", "18080:8080", "--publish", "127.0.0.1:18081:8081")
	var info api.VMInfo
	e.JSON(&info, "vm", "show", "mnt")
	if len(info.Mounts) != 2 || !info.Mounts[0].Alive || !info.Mounts[1].Alive || len(info.Ports) != 2 || !info.Ports[0].Listening {
		t.Fatalf("vm show: mounts %+v ports %+v", info.Mounts, info.Ports)
	}
	t.Logf("create: %v", info.Runtime.LastBoot)

	exec := func(args ...string) harness.Result {
		return e.Banger(append([]string{"vm", "exec", "mnt", "--"}, args...)...)
	}
	checkFolders := func(t *testing.T, round string) {
		t.Helper()
		if r := exec("cat", "/root/src/hello.txt"); r.Code != 0 || r.Stdout != "from-the-host\n" {
			t.Fatalf("%s: the host's file in the guest: %s", round, r)
		}
		name := "from-guest-" + round
		if r := exec("sh", "-c", "echo written-in-the-guest > /root/src/"+name); r.Code != 0 {
			t.Fatalf("%s: writing in the guest: %s", round, r)
		}
		p := filepath.Join(src, name)
		b, err := os.ReadFile(p)
		if err != nil || string(b) != "written-in-the-guest\n" {
			t.Fatalf("%s: the guest's file on the host: %q, %v", round, b, err)
		}
		fi, _ := os.Stat(p)
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != os.Getuid() {
			t.Errorf("%s: the guest's file is owned by uid %d on the host, not the daemon's user %d", round, st.Uid, os.Getuid())
		}
		if r := exec("cat", "/srv/ro/keep.txt"); r.Stdout != "read-only\n" {
			t.Errorf("%s: the read-only folder: %s", round, r)
		}
		if r := exec("sh", "-c", "echo x > /srv/ro/new"); r.Code == 0 {
			t.Errorf("%s: a write to the :ro folder succeeded", round)
		}
		if _, err := os.Stat(filepath.Join(ro, "new")); err == nil {
			t.Errorf("%s: the guest's write to the :ro folder reached the host", round)
		}
	}
	httpGet := func(addr string) (string, error) {
		c := http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get("http://" + addr + "/index.html")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	startServer := func(t *testing.T) {
		t.Helper()
		e.MustBanger("vm", "exec", "mnt", "--", "sh", "-c",
			"mkdir -p /root/www && echo hello-through-the-port > /root/www/index.html && busybox httpd -p 127.0.0.1:8080 -h /root/www")
	}
	waitPort := func(t *testing.T, round string) {
		t.Helper()
		var body string
		var err error
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if body, err = httpGet("127.0.0.1:18080"); err == nil && body == "hello-through-the-port\n" {
				return
			}
		}
		t.Fatalf("%s: the published port: %q, %v", round, body, err)
	}

	t.Run("folders", func(t *testing.T) { checkFolders(t, "create") })
	t.Run("published port", func(t *testing.T) {
		startServer(t)
		waitPort(t, "create")
		// Only on the address it was published on: not on the bridge's
		// address, from the guest's network.
		gw := strings.TrimSuffix(info.Runtime.GuestIP[:strings.LastIndexByte(info.Runtime.GuestIP, '.')], ".") + ".1"
		if _, err := httpGet(gw + ":18080"); err == nil {
			t.Errorf("the port published on 127.0.0.1 answered on %s", gw)
		}
		if r := exec("busybox", "wget", "-q", "-T", "3", "-O-", "http://"+gw+":18080/index.html"); r.Code == 0 {
			t.Errorf("the guest reached the published port on the host's bridge address: %s", r)
		}
		// A port whose guest side has no server: the connection ends.
		if c, err := net.DialTimeout("tcp", "127.0.0.1:18081", 2*time.Second); err == nil {
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, rerr := c.Read(make([]byte, 1))
			c.Close()
			if n != 0 || rerr == nil {
				t.Errorf("a port with no guest server gave %d bytes, %v", n, rerr)
			}
		}
	})

	t.Run("kill -9 bangerd", func(t *testing.T) {
		pid := e.LockPID()
		syscall.Kill(pid, syscall.SIGKILL)
		harness.WaitDead(t, pid)
		if r := e.Banger("vm", "show", "mnt"); r.Code != 0 { // a new bangerd
			ps, _ := osexec.Command("ps", "-eo", "pid,ppid,stat,args").CombinedOutput()
			locks, _ := os.ReadFile("/proc/locks")
			t.Fatalf("%s\n%s\n%s", r, ps, locks)
		}
		waitPort(t, "after kill -9 of bangerd")
		checkFolders(t, "after-kill")
	})

	t.Run("stop and start", func(t *testing.T) {
		e.MustBanger("vm", "stop", "mnt")
		if c, err := net.DialTimeout("tcp", "127.0.0.1:18080", time.Second); err == nil {
			c.Close()
			t.Error("the published port still listens with the VM stopped")
		}
		e.MustBanger("vm", "start", "mnt")
		checkFolders(t, "restart")
		startServer(t)
		waitPort(t, "restart")
	})

	t.Run("snapshot and fork refused", func(t *testing.T) {
		for _, args := range [][]string{{"vm", "snapshot", "mnt"}, {"vm", "fork", "mnt", "--name", "mnt2"}} {
			r := e.Banger(args...)
			if r.Code == 0 || !strings.Contains(r.Stderr, "virtio-fs") || !strings.Contains(r.Stderr, "hint:") {
				t.Errorf("%v: %s", args, r)
			}
		}
	})

	t.Run("bad input", func(t *testing.T) {
		busy, err := net.Listen("tcp", "127.0.0.1:18090")
		if err != nil {
			t.Fatal(err)
		}
		defer busy.Close()
		file := filepath.Join(t.TempDir(), "f")
		os.WriteFile(file, nil, 0o644)
		link := filepath.Join(t.TempDir(), "link")
		os.Symlink(src, link)
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--mount", "/no/such/dir:/root/x"}, "does not exist"},
			{[]string{"--mount", file + ":/root/x"}, "not a directory"},
			{[]string{"--mount", link + ":/root/x"}, "symlink"},
			{[]string{"--mount", src + ":root/x"}, "not an absolute"},
			{[]string{"--mount", src + ":/root"}, "system directory"},
			{[]string{"--mount", src + ":/proc/x"}, "system directory"},
			{[]string{"--mount", src + ":/a", "--mount", ro + ":/a"}, "two host folders"},
			{[]string{"--publish", "18090:80"}, "in use"},
			{[]string{"--publish", "18080:80"}, "published by vm mnt"},
			{[]string{"--publish", "10.99.99.99:18091:80"}, "not on this host"},
			{[]string{"--publish", "18092:80/sctp"}, "tcp or udp"},
			{[]string{"--publish", "18093:80", "--publish", "0.0.0.0:18093:81"}, "overlap"},
		} {
			r := e.Banger(append([]string{"vm", "create", "--name", "bad"}, tc.args...)...)
			if r.Code == 0 || !strings.Contains(r.Stderr, tc.want) {
				t.Errorf("%v: want an error with %q: %s", tc.args, tc.want, r)
			}
			if r := e.Banger("vm", "show", "bad"); r.Code == 0 {
				t.Errorf("%v: a VM was left behind", tc.args)
				e.Banger("vm", "delete", "--force", "bad")
			}
		}
	})

	t.Run("kill -9 virtiofsd", func(t *testing.T) {
		e.JSON(&info, "vm", "show", "mnt")
		pid := info.Mounts[0].PID
		if pid == 0 {
			t.Fatalf("no virtiofsd pid: %+v", info.Mounts)
		}
		syscall.Kill(pid, syscall.SIGKILL)
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			e.JSON(&info, "vm", "show", "mnt")
			if !info.Mounts[0].Alive && strings.Contains(info.Runtime.LastError, "virtiofsd") {
				break
			}
		}
		if info.Mounts[0].Alive || !strings.Contains(info.Runtime.LastError, "virtiofsd") {
			t.Fatalf("a killed virtiofsd was not noticed: %+v, last error %q", info.Mounts[0], info.Runtime.LastError)
		}
		if r := e.MustBanger("vm", "show", "mnt"); !strings.Contains(r.Stdout, "virtiofsd not running") {
			t.Errorf("vm show does not say so:\n%s", r.Stdout)
		}
	})

	t.Run("delete", func(t *testing.T) {
		e.MustBanger("vm", "delete", "--force", "mnt")
		if c, err := net.DialTimeout("tcp", "127.0.0.1:18080", time.Second); err == nil {
			c.Close()
			t.Error("the published port listens after delete")
		}
		for _, m := range info.Mounts {
			if m.PID > 0 && harness.Alive(m.PID) {
				t.Errorf("virtiofsd pid %d outlived the VM", m.PID)
			}
		}
	})
}
