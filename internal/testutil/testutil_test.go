package testutil

import (
	"net"
	"os"
	"slices"
	"testing"
)

func TestRunPattern(t *testing.T) {
	for name, want := range map[string]string{
		"TestX":            "^TestX$",
		"TestX/sub":        "^TestX$/^sub$",
		"TestX/a.b(c)+":    `^TestX$/^a\.b\(c\)\+$`,
		"TestX/with_space": "^TestX$/^with_space$",
	} {
		if got := runPattern(name); got != want {
			t.Errorf("runPattern(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestNewEntries(t *testing.T) {
	got := newEntries([]string{"link lo", "link eth0"}, []string{"link lo", "link eth0", "link banger0", "nftables table ip banger0"})
	if !slices.Equal(got, []string{"link banger0", "nftables table ip banger0"}) {
		t.Errorf("newEntries = %q", got)
	}
}

// Inside, the namespace is fresh: lo alone, up, and /sys/class/net agrees.
func TestInNetNSIsolated(t *testing.T) {
	if !InNetNS(t) {
		return
	}
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	if len(ifs) != 1 || ifs[0].Name != "lo" || ifs[0].Flags&net.FlagUp == 0 {
		t.Errorf("interfaces in the namespace: %v", ifs)
	}
	ents, err := os.ReadDir("/sys/class/net")
	if err != nil || len(ents) != 1 || ents[0].Name() != "lo" {
		t.Errorf("/sys/class/net in the namespace: %v, %v", ents, err)
	}
}

func TestInNetNSSubtest(t *testing.T) {
	t.Run("inner", func(t *testing.T) {
		if !InNetNS(t) {
			return
		}
		if os.Getenv(EnvNetNS) != "TestInNetNSSubtest/inner" {
			t.Errorf("marker %q", os.Getenv(EnvNetNS))
		}
	})
}
