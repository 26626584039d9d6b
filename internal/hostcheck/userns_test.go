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
