// Package logging builds the slog loggers used by bangerd and the root
// helper: JSON lines, one level, and the op id of the context added to every
// record logged under it.
//
// Field names are fixed across the project: op_id, method, vm, image, stage,
// duration_ms, code.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/banger-dev/banger/internal/op"
)

// Field names shared by every component.
const (
	KeyOpID       = "op_id"
	KeyMethod     = "method"
	KeyVM         = "vm"
	KeyImage      = "image"
	KeyStage      = "stage"
	KeyDurationMS = "duration_ms"
	KeyCode       = "code"
	KeyComponent  = "component"
)

// New returns a JSON logger writing to w at level. Every record logged with a
// context that carries an op id gets an op_id attribute.
func New(w io.Writer, level slog.Leveler, component string) *slog.Logger {
	h := slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})
	l := slog.New(&contextHandler{Handler: h})
	if component != "" {
		l = l.With(KeyComponent, component)
	}
	return l
}

// Discard returns a logger that drops everything (tests, quiet tools).
func Discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// ParseLevel turns "debug", "info", "warn" or "error" into a slog.Level.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.TrimSpace(s))); err != nil {
		return slog.LevelInfo, fmt.Errorf("log level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// contextHandler adds the context's op id to each record.
type contextHandler struct {
	slog.Handler
}

func (h *contextHandler) Handle(ctx context.Context, r slog.Record) error {
	if id := op.From(ctx); id != "" {
		r.AddAttrs(slog.String(KeyOpID, id))
	}
	return h.Handler.Handle(ctx, r)
}

func (h *contextHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &contextHandler{Handler: h.Handler.WithAttrs(attrs)}
}

func (h *contextHandler) WithGroup(name string) slog.Handler {
	return &contextHandler{Handler: h.Handler.WithGroup(name)}
}
