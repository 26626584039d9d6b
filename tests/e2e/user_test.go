package e2e

import (
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/helperapi"
	"github.com/banger-dev/banger/internal/testutil"
	"github.com/banger-dev/banger/tests/harness"
)

// TestUnprivilegedVMRun: the CLI and bangerd run as uid 65534 and only the
// helper, started here, runs as root. The image was built by uid 65534's
// own bangerd (harness.EnsureUserImage). vm run works across that boundary,
// on the network root granted, and the VMM runs as the unprivileged user.
func TestUnprivilegedVMRun(t *testing.T) {
	requireE2E(t)
	testutil.RequireTool(t, "mmdebstrap")
	image := harness.EnsureUserImage(t)
	if !testutil.InNetNS(t) {
		return
	}
	const uid = 65534
	e := harness.NewEnv(t)
	for _, d := range []string{e.StateDir, e.RunDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	// Root grants uid 65534 network 3: bridge banger3, TAPs tap3-*, and
	// the subnet; the user's config names no network of its own.
	grant := helperapi.Grant{User: "nobody", UID: uid, Net: 3, Subnet: "10.231.13.0/24"}
	helper := e.StartHelper(grant)

	e.Cred = &syscall.Credential{Uid: uid, Gid: uid}
	e.Setenv("HOME="+e.Root, "USER=nobody")
	e.WriteConfig("[network]\ntap_pool_size = 1\n[vm]\nmemory_mib = 512\ndisk_size = \"1G\"\nboot_timeout = \"240s\"\n")
	t.Cleanup(func() { e.Banger("vm", "delete", "--force", "u1") })

	e.MustBanger("image", "import", "--name", "default", image)
	// With a host folder of the user's: virtiofsd runs as the user (in a
	// user namespace), and what the guest's root writes there is the
	// user's on the host.
	share := filepath.Join(e.Root, "share")
	if err := os.Mkdir(share, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chown(share, uid, uid)
	r := e.Banger("vm", "run", "--name", "u1", "--mount", share+":/root/share", "--", "sh", "-c", "cat /etc/hostname && echo by-the-guest > /root/share/out")
	if r.Code != 0 || r.Stdout != "u1\n" {
		t.Fatalf("vm run as uid %d: %s", uid, r)
	}
	if fi, err := os.Stat(filepath.Join(share, "out")); err != nil {
		t.Fatalf("the guest's file in the host folder: %v", err)
	} else if st := fi.Sys().(*syscall.Stat_t); st.Uid != uid || st.Gid != uid {
		t.Fatalf("the guest root's file is uid %d gid %d on the host, want the daemon's user %d", st.Uid, st.Gid, uid)
	}
	var info api.VMInfo
	e.JSON(&info, "vm", "show", "u1")
	if info.Handles == nil || info.Handles.PID == 0 {
		t.Fatalf("no VMM pid: %+v", info)
	}
	status, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(info.Handles.PID), "status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "Uid:") {
			if f := strings.Fields(line); len(f) < 2 || f[1] != "65534" {
				t.Fatalf("VMM runs as %q, want uid 65534", line)
			}
		}
	}
	// DNS by name works too: the helper bound port 53 for the daemon.
	if r := e.MustBanger("vm", "ssh", "u1", "--", "getent", "hosts", "u1.banger"); !strings.HasPrefix(r.Stdout, info.Runtime.GuestIP+" ") {
		t.Fatalf("u1.banger resolves as %q, want %s", r.Stdout, info.Runtime.GuestIP)
	}
	// The VM is on the granted network: its address in the grant's
	// subnet, its TAP one of the grant's, on its bridge, owned by 65534.
	if !grant.Prefix().Contains(netip.MustParseAddr(info.Runtime.GuestIP)) || !strings.HasPrefix(info.Handles.TapDevice, grant.TapPrefix()) {
		t.Fatalf("VM at %s on %s, want inside %s on a %s* TAP", info.Runtime.GuestIP, info.Handles.TapDevice, grant.Subnet, grant.TapPrefix())
	}
	if l, err := netlink.LinkByName(info.Handles.TapDevice); err != nil {
		t.Fatal(err)
	} else if tt, ok := l.(*netlink.Tuntap); !ok || tt.Owner != uid {
		t.Fatalf("TAP %s: %+v", info.Handles.TapDevice, l)
	}
	// The helper saw calls from the daemon (uid 65534) only through its socket.
	if log, _ := os.ReadFile(helper.Log); !strings.Contains(string(log), `"method":"tap.open"`) {
		t.Fatalf("helper log lacks the tap.open that passed the TAP to the unprivileged qemu:\n%s", log)
	}
	if state, _ := os.ReadFile(helper.StateFile); !strings.Contains(string(state), `"bridge/banger3": 65534`) {
		t.Fatalf("the helper has no record of the user's bridge:\n%s", state)
	}
	e.MustBanger("vm", "delete", "u1")
}
