package subid

import "testing"

func TestParseHasFree(t *testing.T) {
	rs := Parse([]byte("alice:100000:65536\n# comment\nbob:165536:1000\nbad line\ncarol:x:1\ndave:300000:0\n\nbob:200000:65536\n"))
	if len(rs) != 3 {
		t.Fatalf("ranges %+v", rs)
	}
	if !Has(rs, "alice", Needed) || Has(rs, "bob", Needed) || Has(rs, "carol", 1) || Has(rs, "nobody", 1) {
		t.Errorf("Has wrong on %+v", rs)
	}
	if f := Free(rs, Needed); f != 265536 {
		t.Errorf("Free = %d", f)
	}
	if f := Free(nil, Needed); f != 100000 {
		t.Errorf("Free on nothing = %d", f)
	}
}
