package flows

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"
)

// Execution control from any node: every operation reads and writes the
// executions catalog (and the flows queue), so it needs no node in
// particular.

// ListOptions filter Engine.List.
type ListOptions struct {
	// State keeps executions in this state ("" any).
	State string
	// Flow keeps executions of this flow ("" any).
	Flow string
	// Since keeps executions started at or after it (zero: any).
	Since time.Time
	// Limit bounds the answer (0: 100).
	Limit int
}

// List returns the executions of the executions catalog that match o, most
// recently updated first, without outputs and step histories (Status has
// them).
func (e *Engine) List(o ListOptions) []Status {
	if o.Limit <= 0 {
		o.Limit = 100
	}
	out := e.list(func(s *Status) bool {
		return (o.State == "" || s.State == o.State) && (o.Flow == "" || s.Flow == o.Flow) &&
			(o.Since.IsZero() || !s.Started.Before(o.Since))
	})
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Updated.Equal(out[j].Updated) {
			return out[i].Updated.After(out[j].Updated)
		}
		return out[i].Execution < out[j].Execution
	})
	if len(out) > o.Limit {
		out = out[:o.Limit]
	}
	return out
}

// list returns the summaries (no output, no steps) of the records keep
// accepts.
func (e *Engine) list(keep func(*Status) bool) []Status {
	return e.rec.summaries(keep)
}

// History is Status: execution id's record with every step attempt (node,
// attempt, start, end, outcome, error), from any node, as long as the
// record is kept (Config.Retention).
func (e *Engine) History(ctx context.Context, id string) (Status, error) { return e.Status(ctx, id) }

// Cancel asks for execution id to stop: a cancel request in the executions
// catalog, which every node watches. A step of it that is running has its
// context cancelled (cause ErrCancelled); the execution stops at its next
// step boundary and is recorded as cancelled with reason by the node there.
// A parked (awaiting), failed or dead-lettered execution has no step to
// stop: it is recorded as cancelled here. It returns the record as it is
// after the request, an error matching ErrExecutionNotFound if there is
// none, ErrNotCancellable if the execution completed or was cancelled.
func (e *Engine) Cancel(ctx context.Context, id, reason string) (Status, error) {
	r, err := e.record(ctx, id)
	if err != nil {
		return Status{}, err
	}
	if r.State == StateCompleted || r.State == StateCancelled {
		return Status{}, errorf(ErrNotCancellable, "flows: cancel", "execution %s is %s", id, r.State)
	}
	if len(reason) > 1000 {
		reason = reason[:1000]
	}
	now := e.opts.Clock.Now()
	if err := e.putJSON(ctx, keyOf(prefixCancel, id), cancelRequest{Execution: id, Reason: reason, Node: e.opts.NodeID, At: now}); err != nil {
		return Status{}, fmt.Errorf("flows: cancel %s: %w", id, err)
	}
	e.cancelRunning(id, reason) // the watch does it too, a moment later
	if r.State != StateRunning {
		if err := e.updatePark(ctx, id, func(p *park) (*park, error) {
			if p == nil || p.Winner != "" {
				return nil, nil
			}
			p.Winner, p.At = "cancel", now
			return p, nil
		}); err != nil {
			return Status{}, fmt.Errorf("flows: cancel %s: resolve its await: %w", id, err)
		}
		nr, err := e.rec.updateNow(ctx, id, func(r *record) {
			if r.State != StateCompleted && r.State != StateCancelled && r.State != StateRunning {
				r.State, r.Reason, r.Ended, r.Await, r.Node = StateCancelled, reason, now, nil, e.opts.NodeID
			}
		})
		if err != nil {
			return Status{}, fmt.Errorf("flows: cancel %s: %w", id, err)
		}
		r = nr
	}
	e.log.Info("flows: execution cancel requested", "execution", id, "reason", reason, "state", r.State)
	return r.Status, nil
}

// Retry resumes a failed or dead-lettered execution from its last recorded
// state: the step that failed, with the vars it had then, as a new retry
// generation with fresh attempts (earlier steps do not run again). Items of
// the execution's earlier generations (its dead-lettered item, should it be
// replayed) are dropped when they arrive. It returns an error matching
// ErrNotRetryable for an execution in another state, or one recorded
// without its state (too large for the catalog: use Replay).
func (e *Engine) Retry(ctx context.Context, id string) (Status, error) {
	r, err := e.record(ctx, id)
	if err != nil {
		return Status{}, err
	}
	if r.State != StateFailed && r.State != StateDeadLettered {
		return Status{}, errorf(ErrNotRetryable, "flows: retry", "execution %s is %s; only failed or dead-lettered executions can be retried", id, r.State)
	}
	if r.Resume == nil {
		return Status{}, errorf(ErrNotRetryable, "flows: retry", "execution %s has no recorded state to resume from (it did not fit the catalog); use replay", id)
	}
	if ok, _ := e.cancelRequested(id); ok {
		return Status{}, errorf(ErrNotRetryable, "flows: retry", "execution %s was cancelled", id)
	}
	it := *r.Resume
	it.Gen = r.Retries + 1
	if err := e.enqueue(ctx, &it); err != nil {
		return Status{}, fmt.Errorf("flows: retry %s: %w", id, err)
	}
	nr, err := e.rec.updateNow(ctx, id, func(rec *record) {
		if rec.Retries < it.Gen {
			rec.Retries, rec.State, rec.Step, rec.Seq, rec.Error, rec.Ended, rec.Resume, rec.Node =
				it.Gen, StateRunning, it.Step, it.Seq, "", time.Time{}, nil, e.opts.NodeID
		}
	})
	if err != nil {
		// The step is on the queue: its node records it.
		e.log.Warn("flows: the retry is not recorded yet", "execution", id, "err", err)
		r.State, r.Retries = StateRunning, it.Gen
		return r.Status, nil
	}
	e.log.Info("flows: execution retried", "execution", id, "step", it.Step, "seq", it.Seq, "retry", it.Gen)
	return nr.Status, nil
}

// Signal releases execution id parked at an await step for signal name:
// the continuation is enqueued with data in vars (under the step's save_as,
// default its name), and the await's timeout, when it comes, is dropped. It
// returns an error matching ErrNotAwaiting if the execution is not parked
// for that signal (not there yet, signalled already, timed out or
// cancelled), ErrExecutionNotFound if there is no record of it.
func (e *Engine) Signal(ctx context.Context, id, name string, data any) (Status, error) {
	if e.getPark(id) == nil {
		// Not known here: the record (asking the other nodes) says
		// whether the execution exists; updatePark says if it is parked.
		if _, err := e.record(ctx, id); err != nil {
			return Status{}, err
		}
	}
	if ok, _ := e.cancelRequested(id); ok {
		return Status{}, errorf(ErrNotAwaiting, "flows: signal", "execution %s was cancelled", id)
	}
	// An ended execution is not awaiting, whatever this node's copy of its
	// park says yet (the park's resolution and the record travel apart).
	if state, _, _, ok := e.rec.summary(id); ok && ended(state) {
		return Status{}, errorf(ErrNotAwaiting, "flows: signal", "execution %s has ended (%s)", id, state)
	}
	now := e.opts.Clock.Now()
	var next item
	// Resolved first, so that a timeout that arrives from now on is
	// dropped; then the continuation.
	if err := e.updatePark(ctx, id, func(p *park) (*park, error) {
		switch {
		case p == nil:
			return nil, errorf(ErrNotAwaiting, "flows: signal", "execution %s is not parked at an await step", id)
		case p.Winner != "":
			return nil, errorf(ErrNotAwaiting, "flows: signal", "execution %s: the await at step %q was resolved by %s", id, p.Step, p.Winner)
		case p.Signal != name:
			return nil, errorf(ErrNotAwaiting, "flows: signal", "execution %s awaits signal %q at step %q, not %q", id, p.Signal, p.Step, name)
		}
		next = *p.Next
		next.Vars = map[string]any{}
		for k, v := range p.Next.Vars {
			next.Vars[k] = v
		}
		next.Vars[p.SaveAs] = data
		next.Await = awaitSignal
		p.Winner, p.At = awaitSignal, now
		return p, nil
	}); err != nil {
		if errors.Is(err, ErrNotAwaiting) {
			return Status{}, err
		}
		return Status{}, fmt.Errorf("flows: signal %s: %w", id, err)
	}
	if err := e.enqueue(ctx, &next); err != nil {
		return Status{}, fmt.Errorf("flows: signal %s: the await is resolved but its continuation is not enqueued: %w", id, err)
	}
	r, err := e.rec.updateNow(ctx, id, func(r *record) {
		if r.State == StateAwaiting {
			r.State, r.Await, r.Step, r.Node = StateRunning, nil, next.Step, e.opts.NodeID
		}
	})
	if err != nil {
		return Status{}, fmt.Errorf("flows: signal %s: %w", id, err)
	}
	e.log.Info("flows: execution signalled", "execution", id, "signal", name, "next", next.Step)
	return r.Status, nil
}
