package subid

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestParseHasFree(t *testing.T) {
	rs := Parse([]byte("alice:100000:65536\n# comment\nbob:165536:1000\nbad line\ncarol:x:1\ndave:300000:0\n\nbob:200000:65536\n"))
	if len(rs) != 3 {
		t.Fatalf("ranges %+v", rs)
	}
	if !Has(rs, "alice", Needed) || Has(rs, "bob", Needed) || Has(rs, "carol", 1) || Has(rs, "nobody", 1) {
		t.Errorf("Has wrong on %+v", rs)
	}
	if r, ok := First(rs, "bob"); !ok || r.Start != 165536 || r.Count != 1000 {
		t.Errorf("First(bob) = %+v, %v: want the first line of bob's", r, ok)
	}
	if f := Free(rs, Needed, nil); f != 265536 {
		t.Errorf("Free = %d", f)
	}
	if f := Free(nil, Needed, nil); f != 100000 {
		t.Errorf("Free on nothing = %d", f)
	}
	if got := Containing(rs, 165536+999); len(got) != 1 || got[0].Owner != "bob" {
		t.Errorf("Containing = %+v", got)
	}
	if got := Containing(rs, 165536+1000); len(got) != 0 {
		t.Errorf("Containing past bob's first range = %+v", got)
	}
}

// Free never hands out a range over an account's id: it moves past each
// one that would fall inside.
func TestFreeSkipsAccounts(t *testing.T) {
	rs := []Range{{Owner: "alice", Start: 100000, Count: Needed}}
	// An LDAP-sized uid right after alice's range, and another further on.
	taken := []uint64{0, 1000, 65534, 165536 + 10, 165536 + 10 + Needed}
	f := Free(rs, Needed, taken)
	if f != 165536+10+Needed+1 {
		t.Errorf("Free = %d, want %d (past both accounts)", f, 165536+10+Needed+1)
	}
	for _, id := range taken {
		if id >= f && id < f+Needed {
			t.Errorf("Free's range %d-%d holds account id %d", f, f+Needed-1, id)
		}
	}
	if f := Free(nil, Needed, []uint64{99999, 165536}); f != 100000 {
		t.Errorf("Free = %d, want 100000 (neither account inside 100000-165535)", f)
	}
}

func TestAccountIDs(t *testing.T) {
	dir := t.TempDir()
	passwd, group := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	os.WriteFile(passwd, []byte("root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1001::/home/alice:/bin/sh\nldap:x:170000:170001::/:/bin/sh\nbroken\n"), 0o644)
	os.WriteFile(group, []byte("root:x:0:\nstaff:x:50:\nbig:x:180000:alice\n"), 0o644)
	ids, err := AccountIDs(passwd, group)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	if want := []uint64{0, 50, 1000, 1001, 170000, 170001, 180000}; !slices.Equal(ids, want) {
		t.Errorf("ids %v, want %v", ids, want)
	}
	if ids, err := AccountIDs(filepath.Join(dir, "none"), filepath.Join(dir, "none")); err != nil || len(ids) != 0 {
		t.Errorf("missing files: %v, %v", ids, err)
	}
	acc, err := Accounts(passwd)
	if err != nil || len(acc) != 3 || acc[2] != (Account{Name: "ldap", ID: 170000}) {
		t.Errorf("Accounts = %+v, %v", acc, err)
	}
}
