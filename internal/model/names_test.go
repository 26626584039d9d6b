package model

import "testing"

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"a", "demo", "web-1", "0x", "a23456789012345678901234567890123456789012345678901234567890123"} {
		if err := ValidateName("vm", ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "a-", "A", "a_b", "a.b", "a b", "a/b", "..", "a\nb", "a234567890123456789012345678901234567890123456789012345678901234"} {
		if err := ValidateName("vm", bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
