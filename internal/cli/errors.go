package cli

import (
	"errors"
	"fmt"

	"github.com/banger-dev/banger/internal/rpc"
)

// Exit codes of banger. docs/cli.md documents them; keep both in step.
const (
	ExitOK          = 0
	ExitError       = 1 // internal or unclassified failure
	ExitUsage       = 2 // bad flags or arguments
	ExitNotFound    = 3 // no such VM, image or operation
	ExitConflict    = 4 // name taken, object busy or in use
	ExitUnavailable = 5 // daemon, helper or a host feature missing
	ExitTimeout     = 6 // an operation did not finish in time
	ExitBadRequest  = 7 // the daemon refused an argument
	ExitForbidden   = 8 // not allowed to use a socket or method
)

var exitCodes = map[rpc.Code]int{
	rpc.CodeBadVersion:    ExitUnavailable,
	rpc.CodeUnknownMethod: ExitUnavailable,
	rpc.CodeBadRequest:    ExitBadRequest,
	rpc.CodeNotFound:      ExitNotFound,
	rpc.CodeConflict:      ExitConflict,
	rpc.CodeForbidden:     ExitForbidden,
	rpc.CodeUnavailable:   ExitUnavailable,
	rpc.CodeTimeout:       ExitTimeout,
	rpc.CodeInternal:      ExitError,
}

// codeUsage is the code of a usage error (exit 2) in the CLI's error
// output. It is the CLI's own: a usage error never crosses the wire.
const codeUsage rpc.Code = "usage"

// usageError is a command line the CLI refuses before asking anyone:
// bad flags or arguments, an unknown command. Its hint, when empty, becomes
// the failing command's --help (see execute).
type usageError struct{ msg, hint string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// exitError ends the CLI with a given code and no message of its own (the
// remote command's status of `vm run`, say).
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// printError renders err for a human (or as JSON with -o json) and returns
// the exit code. Every error names the op id, so `banger daemon logs --op`
// finds what happened.
func (a *app) printError(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var er *rpc.ErrorResponse
	code := ExitError
	var ue *usageError
	if errors.As(err, &ue) {
		er, code = &rpc.ErrorResponse{Code: codeUsage, Message: ue.msg, Hint: ue.hint, OpID: a.opID}, ExitUsage
	} else {
		er = asErrorResponse(err, a.opID)
		if c := exitCodes[er.Code]; c != 0 {
			code = c
		}
	}
	if a.output == "json" {
		writeJSON(a.stdout, map[string]any{"error": er})
		return code
	}
	fmt.Fprintf(a.stderr, "banger: %s\n", er.Message)
	fmt.Fprintf(a.stderr, "  code:  %s\n", er.Code)
	if ue != nil {
		// Refused before any call: the daemon's log has nothing of it.
		fmt.Fprintf(a.stderr, "  op id: %s\n", er.OpID)
	} else {
		fmt.Fprintf(a.stderr, "  op id: %s (see: banger daemon logs --op %s)\n", er.OpID, er.OpID)
	}
	if er.Hint != "" {
		fmt.Fprintf(a.stderr, "  hint:  %s\n", er.Hint)
	}
	return code
}

// asErrorResponse turns any error into the wire form: a daemon error keeps
// its code, op id and hint (and any context the CLI wrapped around it); a
// local one is classified and given the invocation's op id.
func asErrorResponse(err error, opID string) *rpc.ErrorResponse {
	var wire *rpc.ErrorResponse
	if errors.As(err, &wire) && wire.OpID != "" {
		opID = wire.OpID
	}
	return rpc.NewErrorResponse(err, opID)
}
