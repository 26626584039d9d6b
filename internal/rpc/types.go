// Package rpc is the wire protocol shared by the CLI, bangerd and the root
// helper: one newline-delimited JSON request per unix-socket connection, one
// response, a version, and an op id that travels in both directions.
//
//	Request       {version, method, params, op_id?}
//	Response      {result} or {error: ErrorResponse}
//	ErrorResponse {code, message, hint?, op_id?}
//
// The package has three parts: these types, the client (client.go) and the
// server with its dispatch (server.go). Error codes are a small fixed set
// (errors.go), mapped from sentinel errors at the server's edge and returned
// to callers as a typed *ErrorResponse.
package rpc

import (
	"encoding/json"
	"strings"
)

// Version is the protocol version this build speaks. A request with another
// version is refused with CodeBadVersion.
const Version = 1

// DefaultMaxRequestBytes bounds what a server reads of one request.
const DefaultMaxRequestBytes = 1 << 20

// Request is what a client sends. OpID is omitted when empty so that older
// peers that do not know it ignore it.
type Request struct {
	Version int             `json:"version"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params,omitempty"`
	OpID    string          `json:"op_id,omitempty"`
}

// Response is what a server answers: a result or an error, never both.
type Response struct {
	Result json.RawMessage `json:"result,omitempty"`
	Error  *ErrorResponse  `json:"error,omitempty"`
}

// ErrorResponse is an error as it crosses the wire. Hint, when set, tells the
// user what to do next. OpID is omitted when empty, for older peers.
type ErrorResponse struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
	Hint    string `json:"hint,omitempty"`
	OpID    string `json:"op_id,omitempty"`
}

// Error renders the message, then the op id in parentheses when set.
func (e *ErrorResponse) Error() string {
	var b strings.Builder
	b.WriteString(e.Message)
	if e.OpID != "" {
		b.WriteString(" (")
		b.WriteString(e.OpID)
		b.WriteString(")")
	}
	return b.String()
}

// Is lets errors.Is(err, rpc.ErrNotFound) and friends work on errors that
// came back over the wire.
func (e *ErrorResponse) Is(target error) bool {
	c, ok := codeOf[target]
	return ok && c == e.Code
}
