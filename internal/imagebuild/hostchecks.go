package imagebuild

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/banger-dev/banger/internal/hostcheck"
	"github.com/banger-dev/banger/internal/rpc"
)

// HostChecks are `banger doctor`'s lines about image builds by this
// process's user for suite: mmdebstrap and its merged-/usr hooks; for a
// user other than root, newuidmap and newgidmap able to map ids, a range
// of at least 65536 subordinate uids and gids, unprivileged user
// namespaces; the suite's pinned keyring; room for the temporary chroot.
func HostChecks(ctx context.Context, suite string) []hostcheck.Check {
	var out []hostcheck.Check
	add := func(name string, st hostcheck.Status, detail, hint string) {
		out = append(out, hostcheck.Check{Name: name, Status: st, Detail: detail, Hint: hint})
	}
	if p, v, err := hostcheck.BinaryVersion(ctx, "mmdebstrap"); err != nil {
		add("mmdebstrap", hostcheck.Fail, "image builds need mmdebstrap: "+err.Error(), "sudo apt-get install mmdebstrap uidmap")
	} else if _, err := os.Stat(mergedUsrHooks); err != nil {
		add("mmdebstrap", hostcheck.Fail, fmt.Sprintf("%s (%s) has no %s", p, v, mergedUsrHooks), "reinstall it: sudo apt-get install --reinstall mmdebstrap")
	} else {
		add("mmdebstrap", hostcheck.OK, p+": "+v, "")
	}

	if os.Geteuid() == 0 {
		add("subuid", hostcheck.OK, "not needed: bangerd runs as root, so image builds make no user namespace (package scripts run as root, in private mount and PID namespaces)", "")
	} else {
		name := userName()
		var bad []string
		for _, tool := range []string{"newuidmap", "newgidmap"} {
			if _, err := hostcheck.IDMapper(tool); err != nil {
				bad = append(bad, err.Error())
			}
		}
		if len(bad) > 0 {
			add("uidmap", hostcheck.Fail, "image builds as "+name+" need newuidmap and newgidmap: "+strings.Join(bad, "; "), installHint)
		} else {
			add("uidmap", hostcheck.OK, "newuidmap and newgidmap can map subordinate ids", "")
		}
		var ranges []string
		var fails []string
		for _, f := range []string{hostcheck.SubUIDFile, hostcheck.SubGIDFile} {
			r, err := hostcheck.SubIDs(f, name, os.Getuid())
			if err != nil {
				fails = append(fails, err.Error())
				continue
			}
			ranges = append(ranges, fmt.Sprintf("%s %d-%d", f, r.Start, r.Start+r.Count-1))
		}
		if len(fails) > 0 {
			add("subuid", hostcheck.Fail, "image builds run package scripts as subordinate ids of "+name+": "+strings.Join(fails, "; "), subidHint(name))
		} else {
			add("subuid", hostcheck.OK, name+": "+strings.Join(ranges, ", "), "")
		}
		// A range over an account's id lets its owner act as that account
		// (to the root helper, to a TAP's group): the host's to fix.
		if o := hostcheck.SubIDOverlaps(name, uint64(os.Getuid()), uint64(os.Getgid())); len(o) > 0 {
			add("subid overlap", hostcheck.Fail, strings.Join(o, "; "), hostcheck.SubIDOverlapHint)
		} else {
			add("subid overlap", hostcheck.OK, "no subordinate range holds "+name+"'s ids, nor do "+name+"'s hold another account's", "")
		}
		if ok, detail := hostcheck.UserNamespaces(); ok {
			add("userns", hostcheck.OK, "unprivileged user namespaces allowed ("+detail+")", "")
		} else {
			add("userns", hostcheck.Fail, "image builds as a user need unprivileged user namespaces: "+detail,
				"sudo sysctl -w user.max_user_namespaces=65536 (and kernel.unprivileged_userns_clone=1 where it exists)")
		}
	}

	if k, err := DefaultKeyrings().For(suite); err != nil {
		add("keyring", hostcheck.Fail, err.Error(), rpc.HintOf(err))
	} else {
		add("keyring", hostcheck.OK, fmt.Sprintf("suite %s is verified against %s only", suite, k), "")
	}

	if free, err := hostcheck.FreeBytes(DefaultTempDir); err != nil {
		add("build tmp", hostcheck.Warn, err.Error(), "")
	} else if free < 2<<30 {
		add("build tmp", hostcheck.Warn, fmt.Sprintf("%.1f GiB free under %s, where a build's temporary chroot (about 0.5 GiB) goes", float64(free)/(1<<30), DefaultTempDir),
			"free space under "+DefaultTempDir)
	} else {
		add("build tmp", hostcheck.OK, fmt.Sprintf("%.1f GiB free under %s for a build's temporary chroot", float64(free)/(1<<30), DefaultTempDir), "")
	}
	return out
}
