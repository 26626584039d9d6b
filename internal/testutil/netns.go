package testutil

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// EnvNetNS marks the child process of InNetNS: it holds the name of the
// test the child runs inside the namespace.
const EnvNetNS = "BANGER_TEST_NETNS"

// InNetNS reports whether the calling test runs inside its own network
// namespace. Called in the normal test process it skips t unless root,
// re-runs the test binary with only this test (-test.run ^Name$ -test.v) in
// new network and mount namespaces, streams the child's output into t.Log,
// fails t if the child fails (skips it if the child skipped), checks from the
// host namespace that no link and no nftables table appeared on the host, and
// returns false. In the child it brings lo up, mounts a private sysfs (so
// /sys/class/net shows the namespace's links) and returns true.
func InNetNS(t *testing.T) bool {
	t.Helper()
	if os.Getenv(EnvNetNS) == t.Name() {
		enterChild(t)
		return true
	}
	RequireRoot(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("finding the test binary: %v", err)
	}
	before := hostNet(t)

	args := []string{"-test.run", runPattern(t.Name()), "-test.v", "-test.count=1"}
	if f := flag.Lookup("test.timeout"); f != nil && f.Value.String() != "0s" {
		args = append(args, "-test.timeout", f.Value.String())
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), EnvNetNS+"="+t.Name())
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWNS,
		Pdeathsig:  syscall.SIGKILL,
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		w.Close()
		r.Close()
		t.Fatalf("starting %s in a new network namespace: %v", t.Name(), err)
	}
	w.Close()
	ran, passed, skipped := streamChild(t, r)
	r.Close()
	werr := cmd.Wait()

	after := hostNet(t)
	if leaked := newEntries(before, after); len(leaked) > 0 {
		t.Errorf("host namespace changed while %s ran in its own: new %s", t.Name(), strings.Join(leaked, ", "))
	}
	switch {
	case werr != nil:
		t.Fatalf("%s failed inside its network namespace: %v", t.Name(), werr)
	case !ran:
		t.Fatalf("the child process did not run %s (pattern %s)", t.Name(), runPattern(t.Name()))
	case skipped:
		t.Skip("skipped inside the network namespace (reason above)")
	case !passed:
		t.Fatalf("%s did not report a pass inside its network namespace", t.Name())
	}
	return false
}

// runPattern anchors each element of a (sub)test name for -test.run.
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

// streamChild copies the child's output into t.Log line by line and notes
// whether the test ran and how it ended.
func streamChild(t *testing.T, r io.Reader) (ran, passed, skipped bool) {
	t.Helper()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		t.Log("netns| " + line)
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, "=== RUN   "+t.Name()):
			ran = true
		case strings.HasPrefix(trimmed, "--- PASS: "+t.Name()+" "):
			passed = true
		case strings.HasPrefix(trimmed, "--- SKIP: "+t.Name()+" "):
			skipped = true
		}
	}
	return ran, passed, skipped
}

// enterChild prepares the namespace the child runs in.
func enterChild(t *testing.T) {
	t.Helper()
	// Mounts made here must not propagate to the host.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		t.Fatalf("making mounts private: %v", err)
	}
	if err := unix.Mount("sysfs", "/sys", "sysfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		t.Fatalf("mounting a sysfs for the namespace: %v", err)
	}
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatalf("finding lo: %v", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatalf("bringing lo up: %v", err)
	}
}

// hostNet lists the links and nftables tables of the current namespace.
func hostNet(t *testing.T) []string {
	t.Helper()
	var out []string
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatalf("listing links: %v", err)
	}
	for _, i := range ifs {
		out = append(out, "link "+i.Name)
	}
	if c, err := nftables.New(); err == nil {
		if tables, err := c.ListTables(); err == nil {
			for _, tb := range tables {
				out = append(out, fmt.Sprintf("nftables table %s %s", familyName(tb.Family), tb.Name))
			}
		}
	}
	return out
}

func newEntries(before, after []string) []string {
	var out []string
	for _, a := range after {
		if !slices.Contains(before, a) {
			out = append(out, a)
		}
	}
	return out
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyBridge:
		return "bridge"
	case nftables.TableFamilyARP:
		return "arp"
	case nftables.TableFamilyNetdev:
		return "netdev"
	}
	return fmt.Sprint(uint8(f))
}
