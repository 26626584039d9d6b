package mcpserver

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"unicode/utf8"
)

// leftOut parses the count in a cut output's marker.
func leftOut(t *testing.T, s string) (head, tail string, n int64) {
	t.Helper()
	i := strings.Index(s, "\n[... ")
	j := strings.Index(s, " bytes left out ...]\n")
	if i < 0 || j < i {
		t.Fatalf("no marker in %d bytes", len(s))
	}
	if _, err := fmt.Sscanf(s[i+len("\n[... "):j], "%d", &n); err != nil {
		t.Fatal(err)
	}
	return s[:i], s[j+len(" bytes left out ...]\n"):], n
}

func TestCaptureKeepsShortOutput(t *testing.T) {
	for _, n := range []int{0, 1, keepHead, keepHead + 1, OutputLimit - 1, OutputLimit} {
		var c Capture
		want := strings.Repeat("ab", n/2) + strings.Repeat("c", n%2)
		for _, chunk := range []string{want[:n/3], want[n/3:]} {
			c.Write([]byte(chunk))
		}
		if c.Truncated() || c.String() != want {
			t.Errorf("%d bytes: truncated %v, kept %d bytes", n, c.Truncated(), len(c.String()))
		}
		if s, cut := truncate(want); cut || s != want {
			t.Errorf("%d bytes: truncate cut", n)
		}
	}
}

func TestCaptureCutsLongOutput(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, total := range []int{OutputLimit + 1, 2 * OutputLimit, 10*OutputLimit + 7, 3 << 20} {
		// A byte-exact, position-revealing output.
		var b strings.Builder
		for i := 0; b.Len() < total; i++ {
			fmt.Fprintf(&b, "%d,", i)
		}
		out := b.String()[:total]
		// Written in random pieces, some larger than what is kept.
		var c Capture
		for rest := out; rest != ""; {
			k := min(len(rest), 1+rng.IntN(3*OutputLimit))
			if rng.IntN(2) == 0 {
				k = min(len(rest), 1+rng.IntN(100))
			}
			if n, err := c.Write([]byte(rest[:k])); n != k || err != nil {
				t.Fatalf("Write = %d, %v", n, err)
			}
			rest = rest[k:]
		}
		got := c.String()
		if !c.Truncated() || len(got) > OutputLimit {
			t.Fatalf("%d bytes: truncated %v, kept %d", total, c.Truncated(), len(got))
		}
		head, tail, n := leftOut(t, got)
		if head != out[:keepHead] || tail != out[total-keepTail:] {
			t.Errorf("%d bytes: head or tail is not the output's start or end", total)
		}
		if int(n) != total-len(head)-len(tail) {
			t.Errorf("%d bytes: marker says %d left out, want %d", total, n, total-len(head)-len(tail))
		}
		if s, cut := truncate(out); !cut || s != got {
			t.Errorf("%d bytes: truncate differs from Capture", total)
		}
	}
}

func TestCaptureCutsBetweenCharacters(t *testing.T) {
	for _, r := range []string{"é", "€", "𝄞"} {
		for shift := range 4 {
			out := strings.Repeat("x", shift) + strings.Repeat(r, 2*OutputLimit/len(r))
			got, cut := truncate(out)
			if !cut || !utf8.ValidString(got) {
				t.Errorf("%q shift %d: cut %v, valid UTF-8 %v", r, shift, cut, utf8.ValidString(got))
			}
			head, tail, n := leftOut(t, got)
			if !strings.HasPrefix(out, head) || !strings.HasSuffix(out, tail) || int(n) != len(out)-len(head)-len(tail) {
				t.Errorf("%q shift %d: head %d, tail %d, left out %d of %d", r, shift, len(head), len(tail), n, len(out))
			}
			if len(head) < keepHead-3 || len(tail) < keepTail-3 {
				t.Errorf("%q shift %d: cut more than a character: head %d, tail %d", r, shift, len(head), len(tail))
			}
		}
	}
}
