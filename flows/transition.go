package flows

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/workqueue"
)

// An execution moves by two pure functions, so that what happens at a step
// boundary can be tested without a broker: admit decides whether an item
// that arrives runs at all, transition decides what follows a step's run.
// Engine.handle gathers their inputs (the item, the execution's record, the
// cancel request, the step's outcome) and carries their decision out.

// boundary is what the node knows of an execution when one of its items
// arrives (from the executions catalog).
type boundary struct {
	// Known: a record of the execution exists.
	Known bool
	// RecordedSeq: every step below this sequence number has recorded its
	// continuation (or the execution's end).
	RecordedSeq int
	// Gen is the record's retry generation (Engine.Retry increments it).
	Gen int
	// Ended: the execution has completed or was cancelled.
	Ended bool
	// Cancel: a cancel request exists, with CancelReason.
	Cancel       bool
	CancelReason string
	// AwaitWinner: for an await's continuation, which path won ("signal",
	// "timeout"), "" if neither has yet.
	AwaitWinner string
}

// admission is admit's verdict on an arriving item.
type admission int

const (
	admitRun    admission = iota // run the step
	admitDrop                    // acknowledge without running: a repeat, stale or the losing await path
	admitDefer                   // not due yet: hand it back for Delay (no lease held)
	admitCancel                  // record the execution as cancelled and acknowledge
	admitClaim                   // an await timeout that nobody resolved: claim it, then run
)

func (a admission) String() string {
	return [...]string{"run", "drop", "defer", "cancel", "claim"}[a]
}

// admitted is admit's answer.
type admitted struct {
	Verdict admission
	Delay   time.Duration // admitDefer
	Why     string        // for the log
}

// admit decides what to do with item it given what the node knows of its
// execution, at time now. Checks, in order: a repeat or stale copy is
// dropped before anything else (so that a cancelled or ended execution's
// late items end quietly); a cancel request stops the execution at this
// boundary; the losing path of an await is dropped; an item not due yet
// waits.
func admit(it *item, b boundary, now time.Time) admitted {
	switch {
	case it.Gen < b.Gen:
		return admitted{Verdict: admitDrop, Why: fmt.Sprintf("stale: retry generation %d, the execution is at %d", it.Gen, b.Gen)}
	case it.Gen == b.Gen && it.Seq < b.RecordedSeq:
		return admitted{Verdict: admitDrop, Why: fmt.Sprintf("repeat: step %d already recorded (the execution is at %d)", it.Seq, b.RecordedSeq)}
	case b.Ended:
		return admitted{Verdict: admitDrop, Why: "the execution has ended"}
	case b.Cancel:
		return admitted{Verdict: admitCancel, Why: "cancel requested: " + b.CancelReason}
	}
	if it.Await != "" {
		if b.AwaitWinner != "" && b.AwaitWinner != it.Await {
			return admitted{Verdict: admitDrop, Why: fmt.Sprintf("the await was resolved by %s before its %s", b.AwaitWinner, it.Await)}
		}
		if wait := it.NotBefore.Sub(now); wait > 0 {
			return admitted{Verdict: admitDefer, Delay: wait, Why: "not due"}
		}
		if it.Await == awaitTimeout && b.AwaitWinner == "" {
			return admitted{Verdict: admitClaim, Why: "await timed out"}
		}
		return admitted{Verdict: admitRun}
	}
	if wait := it.NotBefore.Sub(now); wait > 0 {
		return admitted{Verdict: admitDefer, Delay: wait, Why: "not due"}
	}
	return admitted{Verdict: admitRun}
}

// The two paths out of an await step (item.Await).
const (
	awaitSignal  = "signal"
	awaitTimeout = "timeout"
)

// stepResult is how a step's run went, transition's input.
type stepResult struct {
	Out Outcome
	Err error
	// Attempt of MaxAttempts deliveries of the item.
	Attempt, MaxAttempts int
	// LeaseLost: the lease ended while the step ran (the result must not
	// be recorded).
	LeaseLost bool
	// Draining: the node is stopping and interrupted the step.
	Draining bool
	// Cancelled: the execution was cancelled (before or while the step
	// ran), with CancelReason.
	Cancelled    bool
	CancelReason string
	Now          time.Time
}

// decisionKind is what the engine does after a step.
type decisionKind int

const (
	decContinue   decisionKind = iota // enqueue Next, record the step, acknowledge
	decComplete                       // record the completion, acknowledge
	decRetry                          // record the attempt, return Err: the queue retries
	decFail                           // record failed, return Err (permanent): dead-lettered now
	decDeadLetter                     // record dead-lettered, return Err: the last attempt failed
	decCancel                         // record cancelled, acknowledge
	decPark                           // park Next until a signal, enqueue Timeout, acknowledge
	decAbandon                        // lease lost or draining: record nothing, return Err
)

func (k decisionKind) String() string {
	return [...]string{"continue", "complete", "retry", "fail", "dead-letter", "cancel", "park", "abandon"}[k]
}

// Step outcomes in an execution's history (StepRecord.Outcome).
const (
	StepDone         = "done"
	StepRetried      = "retried"
	StepFailed       = "failed"
	StepDeadLettered = "dead_lettered"
	StepCancelled    = "cancelled"
	StepAwaiting     = "awaiting"
)

// decision is transition's answer.
type decision struct {
	Kind decisionKind
	// Next is the continuation (decContinue, decComplete with Step End,
	// decPark: the continuation a signal releases).
	Next *item
	// Timeout is an await's timeout item (decPark with a timeout).
	Timeout *item
	// Await describes the park (decPark).
	Await *Await
	// Err is what the handler returns to the queue; nil acknowledges.
	Err error
	// Outcome is the step's outcome in the history ("" records no step).
	Outcome string
	// State is the execution's state after the step.
	State string
}

// transition decides what follows the run of step s of flow f for item it.
// It is pure: the engine carries the decision out.
func transition(it *item, f *Flow, s *Step, r stepResult) decision {
	if r.LeaseLost {
		err := r.Err
		if err == nil {
			err = fmt.Errorf("flows: %s: lease lost before the step could be recorded: %w", it.id(), adapters.ErrLeaseLost)
		}
		return decision{Kind: decAbandon, Err: err}
	}
	if r.Cancelled {
		return decision{Kind: decCancel, Outcome: StepCancelled, State: StateCancelled}
	}
	if r.Err != nil {
		return failure(r.Err, r)
	}
	next := &item{V: 1, Exec: it.Exec, Flow: it.Flow, Version: it.Version, Seq: it.Seq + 1, Gen: it.Gen,
		Input: it.Input, Vars: it.Vars, Started: it.Started}
	if r.Out.Checkpoint != nil {
		cp, err := json.Marshal(r.Out.Checkpoint)
		if err != nil {
			return failure(workqueue.Permanent(fmt.Errorf("flows: %s: encode checkpoint: %w", it.id(), err)), r)
		}
		next.Step, next.Checkpoint = it.Step, cp
		return decision{Kind: decContinue, Next: next, Outcome: StepDone, State: StateRunning}
	}
	next.Step = s.Next
	if r.Out.Next != "" {
		next.Step = r.Out.Next
	}
	if next.Step != End {
		if _, ok := f.step(next.Step); !ok {
			return failure(workqueue.Permanent(errorf(ErrStepNotFound, "flows: "+it.id(), "step %q chose missing step %q", it.Step, next.Step)), r)
		}
	}
	if a := r.Out.Await; a != nil {
		if a.Signal == "" {
			return failure(workqueue.Permanent(fmt.Errorf("flows: %s: step %q awaits a signal without a name", it.id(), it.Step)), r)
		}
		d := decision{Kind: decPark, Next: next, Await: a, Outcome: StepAwaiting, State: StateAwaiting}
		next.Await = awaitSignal
		if a.Timeout > 0 {
			to := *next
			to.Await, to.NotBefore, to.Step = awaitTimeout, r.Now.Add(a.Timeout), cmpOr(a.OnTimeout, End)
			if to.Step != End {
				if _, ok := f.step(to.Step); !ok {
					return failure(workqueue.Permanent(errorf(ErrStepNotFound, "flows: "+it.id(), "step %q times out to missing step %q", it.Step, to.Step)), r)
				}
			}
			d.Timeout = &to
		}
		return d
	}
	if next.Step == End {
		return decision{Kind: decComplete, Next: next, Outcome: StepDone, State: StateCompleted}
	}
	if r.Out.Wait > 0 {
		next.NotBefore = r.Now.Add(r.Out.Wait)
	}
	return decision{Kind: decContinue, Next: next, Outcome: StepDone, State: StateRunning}
}

// failure is the decision for a step that returned err.
func failure(err error, r stepResult) decision {
	switch {
	case r.Draining && !workqueue.IsPermanent(err):
		return decision{Kind: decAbandon, Err: err} // handed back: not an attempt of the step's own
	case workqueue.IsPermanent(err):
		return decision{Kind: decFail, Err: err, Outcome: StepFailed, State: StateFailed}
	case r.Attempt >= r.MaxAttempts:
		return decision{Kind: decDeadLetter, Err: err, Outcome: StepDeadLettered, State: StateDeadLettered}
	}
	return decision{Kind: decRetry, Err: err, Outcome: StepRetried, State: StateRunning}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
