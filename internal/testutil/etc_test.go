package testutil

import (
	"os"
	"testing"
)

// Both ways of PrivateEtcFiles, in a private mount namespace (InNetNS's
// child): bound over files the host has, an overlay for one it lacks; the
// host's /etc is never written.
func TestPrivateEtcFilesNetNS(t *testing.T) {
	const absent = "/etc/banger-test-absent"
	if !InNetNS(t) {
		if _, err := os.Stat(absent); !os.IsNotExist(err) {
			t.Errorf("%s reached the host's /etc: %v", absent, err)
		}
		return
	}
	hosts, err := os.ReadFile("/etc/hosts")
	if err != nil {
		t.Fatal(err)
	}
	for _, files := range []map[string]string{
		{"hosts": "bound\n"},
		{"hosts": "overlaid\n", "banger-test-absent": "new\n"},
	} {
		undo, err := PrivateEtcFiles(t.TempDir(), files)
		if err != nil {
			t.Fatal(err)
		}
		for name, want := range files {
			if got, err := os.ReadFile("/etc/" + name); err != nil || string(got) != want {
				t.Errorf("/etc/%s = %q, %v; want %q", name, got, err, want)
			}
		}
		undo()
		if got, _ := os.ReadFile("/etc/hosts"); string(got) != string(hosts) {
			t.Errorf("/etc/hosts after undo: %q", got)
		}
		if _, err := os.Stat(absent); !os.IsNotExist(err) {
			t.Errorf("%s after undo: %v", absent, err)
		}
	}
}
