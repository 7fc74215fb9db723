package flows

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/leasing"
)

// End is the step name that finishes an execution.
const End = "end"

// Flow is a named, versioned set of steps. Steps run one at a time; after
// each, the execution's state is recorded (see the package doc).
type Flow struct {
	Name    string
	Version int
	// Start is the first step; default the first of Steps.
	Start string
	Steps []Step
	// Source names where the flow was defined (a file), for messages.
	Source string

	byName map[string]*Step
}

// Step is one named step of a Flow.
type Step struct {
	Name string
	// Next is the step that follows; default the next one in Flow.Steps, or
	// End after the last. Outcome.Next overrides it.
	Next string
	// Targets lists every other step Run may name in Outcome.Next, so that
	// Validate can check them.
	Targets []string
	// Kind describes the step ("go", "rule", "set", "http", "wait").
	Kind string
	// Run does the step's work.
	Run func(ctx context.Context, sc *StepContext) (Outcome, error)
	// Line is the line of the step in its source file, if any.
	Line int
}

// Outcome is what a step asks for next.
type Outcome struct {
	// Next overrides Step.Next; End finishes the execution.
	Next string
	// Wait delays the next step. The delay is kept by the broker (a delayed
	// redelivery of the continuation), not by holding a lease.
	Wait time.Duration
	// Checkpoint, if not nil, records progress of a long step: the same
	// step runs again (as a new sequence number) and reads it back with
	// StepContext.Resume. Next and Wait are ignored.
	Checkpoint any
	// Await, if set, parks the execution until Engine.Signal names it
	// (then Next, or Step.Next, follows) or its timeout passes (then
	// Await.OnTimeout follows). No lease is held while it waits.
	Await *Await
}

// Await parks an execution at a step until a signal or a timeout (the await
// step kind; see the package doc).
type Await struct {
	// Signal is the name Engine.Signal must give.
	Signal string
	// Timeout, if positive, resumes the execution at OnTimeout after it.
	Timeout time.Duration
	// OnTimeout is the step after a timeout; default End. Name it in
	// Step.Targets.
	OnTimeout string
	// SaveAs is the var that receives the signal's data; default the
	// step's name.
	SaveAs string
}

// StepContext is what a step sees.
type StepContext struct {
	Execution string
	Flow      string
	Version   int
	Step      string
	// Seq is the step sequence number of the execution, from 0.
	Seq int
	// Attempt counts deliveries of this step's queue item, from 1.
	Attempt int
	// IdempotencyKey is "execution:step:seq": the same on every retry of
	// this step at this point of the execution. Pass it to what the step
	// calls.
	IdempotencyKey string
	// Node is the ID of the node running the step.
	Node string
	// Input is the execution's input; treat it as read-only.
	Input map[string]any
	// Vars is the execution's state; changes are recorded with the step.
	Vars map[string]any
	// Token is the fencing token of the lease on the step's item.
	Token leasing.Token
	// LeaseDeadline is the current lease deadline.
	LeaseDeadline time.Time

	checkpoint json.RawMessage
	lease      *leasing.Lease
	engine     *Engine
}

// Resume decodes the checkpoint saved by the previous run of this step into
// v and reports whether there was one.
func (sc *StepContext) Resume(v any) (bool, error) {
	if len(sc.checkpoint) == 0 {
		return false, nil
	}
	if err := json.Unmarshal(sc.checkpoint, v); err != nil {
		return false, fmt.Errorf("flows: decode checkpoint: %w", err)
	}
	return true, nil
}

// LeaseValid reports whether the step still holds its lease.
func (sc *StepContext) LeaseValid() bool { return sc.lease == nil || sc.lease.Valid() }

// Validate checks names and references and prepares the flow for running.
// Errors name the step and, for flows from files, the line.
func (f *Flow) Validate() error {
	where := func(s *Step) string {
		if f.Source != "" && s != nil && s.Line > 0 {
			return fmt.Sprintf("%s:%d: ", f.Source, s.Line)
		}
		if f.Source != "" {
			return f.Source + ": "
		}
		return ""
	}
	bad := func(s *Step, format string, args ...any) error {
		return fmt.Errorf("flows: %sflow %q: %s: %w", where(s), f.Name, fmt.Sprintf(format, args...), adapters.ErrInvalidArgument)
	}
	if err := adapters.ValidateName("flow", f.Name); err != nil {
		return bad(nil, "bad name: %v", err)
	}
	if f.Version < 1 {
		return bad(nil, "version %d: want >= 1", f.Version)
	}
	if len(f.Steps) == 0 {
		return bad(nil, "no steps")
	}
	f.byName = make(map[string]*Step, len(f.Steps))
	for i := range f.Steps {
		s := &f.Steps[i]
		if s.Name == "" || s.Name == End {
			return bad(s, "step %d: name %q: want a non-empty name other than %q", i+1, s.Name, End)
		}
		if _, dup := f.byName[s.Name]; dup {
			return bad(s, "step %q defined twice", s.Name)
		}
		if s.Run == nil {
			return bad(s, "step %q has no Run", s.Name)
		}
		if s.Kind == "" {
			s.Kind = "go"
		}
		f.byName[s.Name] = s
	}
	for i := range f.Steps {
		s := &f.Steps[i]
		if s.Next == "" {
			if i+1 < len(f.Steps) {
				s.Next = f.Steps[i+1].Name
			} else {
				s.Next = End
			}
		}
		for _, t := range append([]string{s.Next}, s.Targets...) {
			if _, ok := f.byName[t]; !ok && t != End {
				return bad(s, "step %q refers to missing step %q", s.Name, t)
			}
		}
	}
	if f.Start == "" {
		f.Start = f.Steps[0].Name
	}
	if _, ok := f.byName[f.Start]; !ok {
		return bad(nil, "start refers to missing step %q", f.Start)
	}
	return nil
}

func (f *Flow) step(name string) (*Step, bool) {
	s, ok := f.byName[name]
	return s, ok
}
