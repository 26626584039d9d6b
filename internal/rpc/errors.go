package rpc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
)

// Code classifies an error for programs. The set is small on purpose; the
// message says the rest. Documented for users in docs/errors.md.
type Code string

const (
	// CodeBadVersion: the request's protocol version is not this server's.
	CodeBadVersion Code = "bad_version"
	// CodeUnknownMethod: no such method on this server.
	CodeUnknownMethod Code = "unknown_method"
	// CodeBadRequest: malformed, oversized or invalid request or argument.
	CodeBadRequest Code = "bad_request"
	// CodeNotFound: the named VM, image or operation does not exist.
	CodeNotFound Code = "not_found"
	// CodeConflict: the name is taken or the object is busy or in use.
	CodeConflict Code = "conflict"
	// CodeForbidden: the caller may not use this socket or method.
	CodeForbidden Code = "forbidden"
	// CodeUnavailable: a needed part (helper, VMM, host feature) is missing
	// or not answering.
	CodeUnavailable Code = "unavailable"
	// CodeTimeout: the operation did not finish in time.
	CodeTimeout Code = "timeout"
	// CodeInternal: anything else; a bug or an unexpected host failure.
	CodeInternal Code = "internal"
)

// Sentinel errors. Wrap them (fmt.Errorf("vm %q: %w", name, rpc.ErrNotFound))
// and the server maps them to their code at the edge.
var (
	ErrBadRequest  = errors.New("bad request")
	ErrNotFound    = errors.New("not found")
	ErrConflict    = errors.New("conflict")
	ErrForbidden   = errors.New("forbidden")
	ErrUnavailable = errors.New("unavailable")
	ErrTimeout     = errors.New("timed out")
)

var codeOf = map[error]Code{
	ErrBadRequest:            CodeBadRequest,
	ErrNotFound:              CodeNotFound,
	ErrConflict:              CodeConflict,
	ErrForbidden:             CodeForbidden,
	ErrUnavailable:           CodeUnavailable,
	ErrTimeout:               CodeTimeout,
	context.DeadlineExceeded: CodeTimeout,
}

// CodeOf maps err to its wire code: a wrapped *ErrorResponse keeps its code,
// a wrapped sentinel gives its own, anything else is internal.
func CodeOf(err error) Code {
	var er *ErrorResponse
	if errors.As(err, &er) {
		return er.Code
	}
	for sentinel, c := range codeOf {
		if errors.Is(err, sentinel) {
			return c
		}
	}
	if errors.Is(err, os.ErrNotExist) {
		return CodeNotFound
	}
	return CodeInternal
}

// hinted carries a next step for the user alongside an error.
type hinted struct {
	err  error
	hint string
}

func (h *hinted) Error() string { return h.err.Error() }
func (h *hinted) Unwrap() error { return h.err }

// WithHint attaches a next step ("run: banger image build --name default")
// that the server sends in ErrorResponse.Hint.
func WithHint(err error, hint string) error {
	if err == nil {
		return nil
	}
	return &hinted{err: err, hint: hint}
}

// HintOf returns the outermost hint attached to err, or "".
func HintOf(err error) string {
	for e := err; e != nil; {
		switch v := e.(type) {
		case *hinted:
			return v.hint
		case *ErrorResponse:
			return v.Hint
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			return ""
		}
		e = u.Unwrap()
	}
	return ""
}

// Errorf is fmt.Errorf for a sentinel: Errorf(ErrNotFound, "vm %q", name)
// reads "vm "x": not found" and maps to CodeNotFound.
func Errorf(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), sentinel)
}

// BadArg is the one shape of a refused argument: its name, its value
// (quoted, so a newline cannot forge a log line; at most 80 bytes shown)
// and what is wrong, as bad_request.
func BadArg(arg, value, reason string) error {
	if len(value) > 80 {
		value = value[:80] + "..."
	}
	return fmt.Errorf("argument %s %q: %s: %w", arg, value, reason, ErrBadRequest)
}

// NewErrorResponse builds the wire form of err for the op id: the code of
// its sentinel (or of a nested *ErrorResponse), its hint, and its message. An op id that
// an inner *ErrorResponse (from a nested call with the same id) already
// appended is not repeated.
func NewErrorResponse(err error, opID string) *ErrorResponse {
	msg := err.Error()
	if opID != "" {
		msg = strings.ReplaceAll(msg, " ("+opID+")", "")
	}
	return &ErrorResponse{Code: CodeOf(err), Message: msg, Hint: HintOf(err), OpID: opID}
}
