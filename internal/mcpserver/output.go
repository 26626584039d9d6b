package mcpserver

import (
	"fmt"
	"io"
	"unicode/utf8"
)

// markerReserve is the room kept in OutputLimit for the line that says how
// much was left out (a 19-digit count fits).
const markerReserve = 64

// keepHead and keepTail are how much of a longer output is kept.
const (
	keepHead = (OutputLimit - markerReserve) / 2
	keepTail = OutputLimit - markerReserve - keepHead
)

// Capture is an io.Writer that keeps what a vm_exec result may hold of an
// output, so a Backend need not hold all of a command's output: everything
// up to OutputLimit bytes, and of a longer output its start and its end
// with, between them, a line saying how many bytes were left out
// ("[... N bytes left out ...]"), at most OutputLimit bytes in all. Cuts
// fall between UTF-8 characters. The zero value is ready; it is not safe
// for concurrent writes.
type Capture struct {
	head  []byte
	tail  []byte // what followed head, the last bytes of it at least
	total int64
}

var _ io.Writer = (*Capture)(nil)

// Write keeps what it must of p; it never fails.
func (c *Capture) Write(p []byte) (int, error) {
	n := len(p)
	c.total += int64(n)
	if room := keepHead - len(c.head); room > 0 {
		k := min(room, len(p))
		c.head = append(c.head, p[:k]...)
		p = p[k:]
	}
	// tail holds at least the last OutputLimit-keepHead bytes after head:
	// all of them while the output still fits, the end of it otherwise.
	const keep = OutputLimit - keepHead
	if len(p) > keep {
		c.tail = append(c.tail[:0], p[len(p)-keep:]...)
		return n, nil
	}
	c.tail = append(c.tail, p...)
	if len(c.tail) > 2*keep {
		c.tail = c.tail[:copy(c.tail, c.tail[len(c.tail)-keep:])]
	}
	return n, nil
}

// Truncated reports whether more than OutputLimit bytes were written, so
// that String leaves some out.
func (c *Capture) Truncated() bool { return c.total > OutputLimit }

// String returns the output kept: all of it, or its start and end.
func (c *Capture) String() string {
	if !c.Truncated() {
		return string(c.head) + string(c.tail)
	}
	h := c.head[:runeStart(c.head)]
	t := c.tail[len(c.tail)-keepTail:]
	for i := 0; i < utf8.UTFMax-1 && len(t) > 0 && !utf8.RuneStart(t[0]); i++ {
		t = t[1:]
	}
	return fmt.Sprintf("%s\n[... %d bytes left out ...]\n%s", h, c.total-int64(len(h))-int64(len(t)), t)
}

// runeStart returns where b's last, incomplete UTF-8 character starts, or
// len(b) when b does not end in one.
func runeStart(b []byte) int {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				return i
			}
			break
		}
	}
	return len(b)
}

// truncate cuts s as Capture would, reporting whether it did.
func truncate(s string) (string, bool) {
	if len(s) <= OutputLimit {
		return s, false
	}
	var c Capture
	_, _ = io.WriteString(&c, s)
	return c.String(), true
}
