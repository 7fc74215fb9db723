package flows

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
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
	// Line is the line of the flow in Source, if any.
	Line int
	// YAML is the source of the flow's YAML document (nil for flows built
	// in Go): what Engine.Deploy stores as the definition.
	YAML []byte

	versioned bool // the YAML named a version
	startLine int  // the line of "start:", if any
	byName    map[string]*Step
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

	refLines map[string]int // the line naming each of Next and Targets, if from a file
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

// Validate checks the flow's names and references: the only validator of
// a flow's structure, whether it was built in Go or compiled from YAML. It
// changes nothing (Register runs it and then prepares a copy of the flow).
// Every problem found is returned, joined, each a *LoadError naming the
// file and line for flows from files.
func (f *Flow) Validate() error {
	var errs []error
	bad := func(line int, format string, args ...any) {
		errs = append(errs, &LoadError{File: f.Source, Line: line,
			Reason: fmt.Sprintf("flow %q: ", f.Name) + fmt.Sprintf(format, args...)})
	}
	if err := adapters.ValidateName("flow", f.Name); err != nil {
		bad(f.Line, "bad name: %v", err)
	}
	if f.Version < 1 {
		bad(f.Line, "version %d: want >= 1", f.Version)
	}
	if len(f.Steps) == 0 {
		bad(f.Line, "no steps")
		return errors.Join(errs...)
	}
	names := make(map[string]bool, len(f.Steps))
	for i := range f.Steps {
		s := &f.Steps[i]
		switch {
		case s.Name == "" || s.Name == End:
			bad(s.Line, "step %d: name %q: want a non-empty name other than %q", i+1, s.Name, End)
		case names[s.Name]:
			bad(s.Line, "step %q defined twice", s.Name)
		}
		if s.Run == nil {
			bad(s.Line, "step %q has no Run", s.Name)
		}
		names[s.Name] = true
	}
	for i := range f.Steps {
		s := &f.Steps[i]
		for _, t := range append([]string{f.next(i)}, s.Targets...) {
			if !names[t] && t != End {
				line := s.Line
				if l, ok := s.refLines[t]; ok {
					line = l
				}
				bad(line, "step %q refers to missing step %q", s.Name, t)
			}
		}
	}
	if f.Start != "" && !names[f.Start] {
		bad(cmp.Or(f.startLine, f.Line), "start refers to missing step %q", f.Start)
	}
	return errors.Join(errs...)
}

// next is the step after step i: its Next, else the one after it, else End.
func (f *Flow) next(i int) string {
	switch {
	case f.Steps[i].Next != "":
		return f.Steps[i].Next
	case i+1 < len(f.Steps):
		return f.Steps[i+1].Name
	}
	return End
}

// prepared returns a copy of f ready to run: defaults filled in (Kind "go",
// Next, Start) and the steps indexed. f must be valid.
func (f *Flow) prepared() *Flow {
	c := *f
	c.Steps = slices.Clone(f.Steps)
	c.byName = make(map[string]*Step, len(c.Steps))
	for i := range c.Steps {
		s := &c.Steps[i]
		s.Next = f.next(i)
		if s.Kind == "" {
			s.Kind = "go"
		}
		c.byName[s.Name] = s
	}
	if c.Start == "" {
		c.Start = c.Steps[0].Name
	}
	return &c
}

// VersionGiven reports whether the flow's YAML named its version (else
// Version is 1 from a file, or the deployed version).
func (f *Flow) VersionGiven() bool { return f.versioned }

func (f *Flow) step(name string) (*Step, bool) {
	s, ok := f.byName[name]
	return s, ok
}
