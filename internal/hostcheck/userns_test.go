package hostcheck

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSubIDs(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "subuid")
	os.WriteFile(file, []byte("# comment\n\nbob:100000:65536\nalice:165536:65536\nalice:300000:65536\n1002:231072:65536\ncarol:400000:1000\nbad:x:y\n"), 0o644)
	if r, err := SubIDs(file, "alice", 1001); err != nil || r != (SubIDRange{Start: 165536, Count: 65536}) {
		t.Errorf("alice: %+v %v (want the first entry)", r, err)
	}
	for _, c := range []struct {
		user string
		uid  int
		want string
	}{
		{"dave", 1002, "lists uid 1002 but not the name dave"},
		{"carol", 1003, "has 1000 subordinate ids, fewer than the 65536"},
		{"erin", 1004, "has no entry for erin"},
		{"bad", 1005, "has no entry for bad"}, // a malformed line is skipped, as newuidmap does
	} {
		_, err := SubIDs(file, c.user, c.uid)
		if !errors.Is(err, ErrNoSubIDs) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), file) {
			t.Errorf("%s: %v, want %q", c.user, err, c.want)
		}
	}
	if _, err := SubIDs(filepath.Join(dir, "missing"), "alice", 1001); !errors.Is(err, ErrNoSubIDs) {
		t.Errorf("missing file: %v", err)
	}
}

func TestUserNamespaces(t *testing.T) {
	dir := t.TempDir()
	write := func(name, v string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(v), 0o644)
		return p
	}
	max0, max1 := write("max0", "0\n"), write("max1", "31000\n")
	clone0, clone1 := write("clone0", "0\n"), write("clone1", "1\n")
	none := filepath.Join(dir, "absent")
	for _, c := range []struct {
		max, clone string
		ok         bool
	}{
		{max1, none, true}, {max1, clone1, true}, {max1, clone0, false}, {max0, none, false}, {none, none, false},
	} {
		if ok, detail := userNamespaces(c.max, c.clone); ok != c.ok || detail == "" {
			t.Errorf("%s %s: %v %q", filepath.Base(c.max), filepath.Base(c.clone), ok, detail)
		}
	}
}

func TestIDMapper(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "newuidmap")
	os.WriteFile(plain, []byte("#!/bin/sh\n"), 0o755)
	t.Setenv("PATH", dir)
	if _, err := IDMapper("newuidmap"); err == nil || !strings.Contains(err.Error(), "neither setuid root nor has file capabilities") {
		t.Errorf("a plain newuidmap: %v", err)
	}
	t.Setenv("PATH", "/usr/bin:/bin")
	if p, err := IDMapper("newuidmap"); err != nil {
		if _, statErr := os.Stat("/usr/bin/newuidmap"); statErr == nil {
			t.Errorf("the host's newuidmap: %s %v", p, err)
		}
	}
}

// SubIDOverlaps names every range that lets one account act as another:
// someone's range over the user's uid or gid, and the user's own range
// over another account's ids.
func TestSubIDOverlaps(t *testing.T) {
	dir := t.TempDir()
	w := func(name, text string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(text), 0o644)
		return p
	}
	subuid := w("subuid", "mallory:100000:65536\nalice:200000:65536\n")
	subgid := w("subgid", "mallory:300000:65536\nalice:400000:65536\n")
	passwd := w("passwd", "root:x:0:0::/root:/bin/sh\nbob:x:150000:150000::/home/bob:/bin/sh\ncarol:x:210000:1000::/:/bin/sh\nalice:x:1001:1001::/:/bin/sh\n")
	group := w("group", "root:x:0:\nbob:x:150000:\nproj:x:410000:\n")

	// bob: his uid lies in mallory's subordinate uids.
	got := subIDOverlaps(subuid, subgid, passwd, group, "bob", 150000, 150000)
	if len(got) != 1 || !strings.Contains(got[0], "mallory's subordinate uids 100000-165535") || !strings.Contains(got[0], "mallory can act as bob") {
		t.Errorf("bob: %q", got)
	}
	// alice: her ranges hold carol's uid and the group proj.
	got = subIDOverlaps(subuid, subgid, passwd, group, "alice", 1001, 1001)
	if len(got) != 2 || !strings.Contains(got[0], "uid 210000 of carol") || !strings.Contains(got[1], "gid 410000 of proj") {
		t.Errorf("alice: %q", got)
	}
	// Nobody else is concerned.
	if got := subIDOverlaps(subuid, subgid, passwd, group, "root", 0, 0); len(got) != 0 {
		t.Errorf("root: %q", got)
	}
	if got := subIDOverlaps(filepath.Join(dir, "none"), filepath.Join(dir, "none"), passwd, group, "bob", 150000, 150000); len(got) != 0 {
		t.Errorf("without subordinate id files: %q", got)
	}
}
