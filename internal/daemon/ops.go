package daemon

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/op"
	"github.com/banger-dev/banger/internal/rpc"
)

// opRetention is how long a finished operation stays queryable.
const opRetention = time.Hour

// operation is a long-running job. Its id is the op id of the call that
// began it; its stages are reported as they complete.
type operation struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change
	st      api.Operation
	started time.Time // of the running stage
	// progress, when set, is asked for a one-line progress note (the last
	// line of a build log) whenever the status is read.
	progress func() string
}

type opRegistry struct {
	mu  sync.Mutex
	ops map[string]*operation
}

func newOpRegistry() *opRegistry { return &opRegistry{ops: map[string]*operation{}} }

// start registers a new operation under the context's op id.
func (r *opRegistry) start(ctx context.Context, kind, target string, stages []string) *operation {
	o := &operation{changed: make(chan struct{})}
	o.st = api.Operation{ID: op.From(ctx), Kind: kind, Target: target, State: api.OpRunning, StartedAt: time.Now().UTC()}
	for _, s := range stages {
		o.st.Stages = append(o.st.Stages, api.Stage{Name: s, State: api.StagePending})
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gcLocked()
	r.ops[o.st.ID] = o
	return o
}

func (r *opRegistry) get(id string) (*operation, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	o, ok := r.ops[id]
	if !ok {
		return nil, rpc.WithHint(rpc.Errorf(rpc.ErrNotFound, "operation %s", id), "operations are kept for an hour after they end, and not across daemon restarts; see: banger daemon logs --op "+id)
	}
	return o, nil
}

func (r *opRegistry) gcLocked() {
	for id, o := range r.ops {
		o.mu.Lock()
		old := o.st.EndedAt != nil && time.Since(*o.st.EndedAt) > opRetention
		o.mu.Unlock()
		if old {
			delete(r.ops, id)
		}
	}
}

// status returns a snapshot, waiting up to wait for a change first when the
// operation is still running.
func (r *opRegistry) status(ctx context.Context, p api.OperationStatusParams) (api.Operation, error) {
	if !op.Valid(p.OpID) {
		return api.Operation{}, rpc.Errorf(rpc.ErrBadRequest, "op_id %q is not an op id", p.OpID)
	}
	o, err := r.get(p.OpID)
	if err != nil {
		return api.Operation{}, err
	}
	if p.WaitMS > 0 {
		o.mu.Lock()
		ch, running := o.changed, o.st.State == api.OpRunning
		o.mu.Unlock()
		if running {
			wait := min(time.Duration(p.WaitMS)*time.Millisecond, 30*time.Second)
			select {
			case <-ch:
			case <-time.After(wait):
			case <-ctx.Done():
			}
		}
	}
	return o.snapshot(), nil
}

func (o *operation) snapshot() api.Operation {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.st
	s.Stages = append([]api.Stage(nil), o.st.Stages...)
	if o.progress != nil && s.State == api.OpRunning {
		s.Progress = o.progress()
	}
	return s
}

func (o *operation) notifyLocked() {
	close(o.changed)
	o.changed = make(chan struct{})
}

// stage runs fn as the named stage: marks it running, then done or failed
// with its duration, and logs "stage completed" or "stage failed" with the
// stage name and duration_ms under the operation's op id.
func (o *operation) stage(ctx context.Context, log *slog.Logger, name string, fn func() (detail string, err error)) error {
	i := o.stageIndex(name)
	o.mu.Lock()
	o.st.Stages[i].State = api.StageRunning
	o.started = time.Now()
	o.notifyLocked()
	o.mu.Unlock()
	log.InfoContext(ctx, "stage started", "kind", o.st.Kind, "target", o.st.Target, "stage", name)

	detail, err := fn()
	dur := time.Since(o.started)

	o.mu.Lock()
	st := &o.st.Stages[i]
	st.DurationMS, st.Detail = dur.Milliseconds(), detail
	if err != nil {
		st.State = api.StageFailed
	} else {
		st.State = api.StageDone
	}
	o.notifyLocked()
	o.mu.Unlock()
	if err != nil {
		log.WarnContext(ctx, "stage failed", "kind", o.st.Kind, "target", o.st.Target, "stage", name, "duration_ms", dur.Milliseconds(), "error", err.Error())
		return err
	}
	log.InfoContext(ctx, "stage completed", "kind", o.st.Kind, "target", o.st.Target, "stage", name, "duration_ms", dur.Milliseconds(), "detail", detail)
	return nil
}

// renameStage renames a pending stage (a create whose image turns out to
// have no agent becomes ready by SSH instead).
func (o *operation) renameStage(from, to string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i := range o.st.Stages {
		if o.st.Stages[i].Name == from {
			o.st.Stages[i].Name = to
		}
	}
	o.notifyLocked()
}

// hasStage reports whether the operation has a stage of that name.
func (o *operation) hasStage(name string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, s := range o.st.Stages {
		if s.Name == name {
			return true
		}
	}
	return false
}

func (o *operation) stageIndex(name string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, s := range o.st.Stages {
		if s.Name == name {
			return i
		}
	}
	o.st.Stages = append(o.st.Stages, api.Stage{Name: name, State: api.StagePending})
	return len(o.st.Stages) - 1
}

// finish ends the operation with result or err.
func (o *operation) finish(result any, err error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now().UTC()
	o.st.EndedAt = &now
	if err != nil {
		o.st.State = api.OpFailed
		o.st.Error = rpc.NewErrorResponse(err, o.st.ID)
	} else {
		o.st.State = api.OpSucceeded
		if result != nil {
			if raw, merr := json.Marshal(result); merr == nil {
				o.st.Result = raw
			}
		}
	}
	o.notifyLocked()
}
