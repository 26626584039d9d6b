package imagebuild

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/banger-dev/banger/internal/hostcheck"
)

// doctor's image-build lines: each check is there, a suite without a
// keyring fails with the way out, and root needs no subordinate ids.
func TestHostChecks(t *testing.T) {
	byName := func(cs []hostcheck.Check) map[string]hostcheck.Check {
		m := map[string]hostcheck.Check{}
		for _, c := range cs {
			m[c.Name] = c
		}
		return m
	}
	cs := byName(HostChecks(context.Background(), "nosuchsuite"))
	if c := cs["keyring"]; c.Status != hostcheck.Fail || !strings.Contains(c.Detail, `suite "nosuchsuite" has no pinned archive keyring`) || c.Hint == "" {
		t.Errorf("keyring: %+v", c)
	}
	for _, name := range []string{"mmdebstrap", "subuid", "build tmp"} {
		if _, ok := cs[name]; !ok {
			t.Errorf("no %s check: %+v", name, cs)
		}
	}
	if os.Geteuid() == 0 {
		if c := cs["subuid"]; c.Status != hostcheck.OK || !strings.Contains(c.Detail, "not needed") {
			t.Errorf("subuid as root: %+v", c)
		}
	} else {
		for _, name := range []string{"uidmap", "userns", "subid overlap"} {
			if _, ok := cs[name]; !ok {
				t.Errorf("no %s check for a user", name)
			}
		}
	}
	if _, err := os.Stat(DebianKeyring); err == nil {
		if c := byName(HostChecks(context.Background(), "bookworm"))["keyring"]; c.Status != hostcheck.OK || !strings.Contains(c.Detail, DebianKeyring) {
			t.Errorf("bookworm keyring: %+v", c)
		}
	}
}
