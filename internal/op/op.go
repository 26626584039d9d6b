// Package op carries the operation id: the one identifier that follows a
// request from the CLI through bangerd to the root helper and into every log
// line and error it produces.
//
// An op id is "op-" followed by six lowercase hex characters, for example
// "op-3f9a1c". Dispatch mints one at entry unless the request carries one.
package op

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"regexp"
)

// Prefix starts every op id.
const Prefix = "op-"

// validID accepts what New produces and, for forward compatibility, somewhat
// longer ids of the same alphabet. Nothing else crosses a socket as an op id.
var validID = regexp.MustCompile(`^op-[0-9a-z]{6,32}$`)

type ctxKey struct{}

// New returns a fresh op id.
func New() string {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand does not fail on Linux; keep a usable id if it ever does.
		return Prefix + "000000"
	}
	return Prefix + hex.EncodeToString(b[:])
}

// Valid reports whether id is a well-formed op id.
func Valid(id string) bool { return validID.MatchString(id) }

// With returns a context carrying id.
func With(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// From returns the op id carried by ctx, or "".
func From(ctx context.Context) string {
	if ctx == nil {
		return ""
	}
	id, _ := ctx.Value(ctxKey{}).(string)
	return id
}
