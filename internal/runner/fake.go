package runner

import (
	"context"
	"fmt"
	"strings"
	"sync"
)

// Fake is a Runner for unit tests. It records every call; each call must
// match the next expectation (or any expectation, when Unordered), else it
// fails with an error naming the unexpected argv.
type Fake struct {
	mu        sync.Mutex
	expect    []*Expectation
	Calls     [][]string
	Unordered bool
}

// Expectation is one expected command and what it returns.
type Expectation struct {
	Argv   []string
	Stdout string
	Err    error
	used   bool
}

var _ Runner = (*Fake)(nil)

// Expect adds an expected command. Use Returns/Fails on the result.
func (f *Fake) Expect(argv ...string) *Expectation {
	f.mu.Lock()
	defer f.mu.Unlock()
	e := &Expectation{Argv: argv}
	f.expect = append(f.expect, e)
	return e
}

// Returns sets the stdout of the expected command.
func (e *Expectation) Returns(stdout string) *Expectation { e.Stdout = stdout; return e }

// Fails makes the expected command fail with err.
func (e *Expectation) Fails(err error) *Expectation { e.Err = err; return e }

// Run implements Runner.
func (f *Fake) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	argv := append([]string{name}, args...)
	f.Calls = append(f.Calls, argv)
	for _, e := range f.expect {
		if e.used {
			continue
		}
		if equal(e.Argv, argv) {
			e.used = true
			if e.Err != nil {
				return []byte(e.Stdout), &Error{Argv: argv, Err: e.Err}
			}
			return []byte(e.Stdout), nil
		}
		if !f.Unordered {
			return nil, fmt.Errorf("runner fake: unexpected command %q; next expected %q", strings.Join(argv, " "), strings.Join(e.Argv, " "))
		}
	}
	return nil, fmt.Errorf("runner fake: unexpected command %q", strings.Join(argv, " "))
}

// Unmet lists the expected commands that were never run.
func (f *Fake) Unmet() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, e := range f.expect {
		if !e.used {
			out = append(out, strings.Join(e.Argv, " "))
		}
	}
	return out
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
