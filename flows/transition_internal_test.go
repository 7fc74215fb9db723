package flows

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/workqueue"
)

func transitionFlow(t *testing.T) *Flow {
	t.Helper()
	noop := func(context.Context, *StepContext) (Outcome, error) { return Outcome{}, nil }
	f := &Flow{Name: "t", Version: 1, Steps: []Step{
		{Name: "a", Run: noop, Targets: []string{"c"}},
		{Name: "b", Run: noop, Targets: []string{"late"}},
		{Name: "c", Run: noop},
		{Name: "late", Run: noop},
	}}
	if err := f.Validate(); err != nil {
		t.Fatal(err)
	}
	return f.prepared()
}

func TestTransition(t *testing.T) {
	f := transitionFlow(t)
	now := time.Unix(1000, 0)
	it := &item{V: 1, Exec: "x", Flow: "t", Version: 1, Step: "a", Seq: 3, Gen: 1, Vars: map[string]any{"k": 1}, Started: now}
	a, _ := f.step("a")
	b, _ := f.step("b")
	late, _ := f.step("late")
	boom := errors.New("boom")
	for _, tc := range []struct {
		name      string
		step      *Step
		r         stepResult
		kind      decisionKind
		state     string
		outcome   string
		next      string // Next.Step
		timeout   string // Timeout.Step
		errIs     error
		permanent bool
	}{
		{name: "default next", step: a, r: stepResult{}, kind: decContinue, state: StateRunning, outcome: StepDone, next: "b"},
		{name: "outcome next", step: a, r: stepResult{Out: Outcome{Next: "c"}}, kind: decContinue, state: StateRunning, outcome: StepDone, next: "c"},
		{name: "last step completes", step: late, r: stepResult{}, kind: decComplete, state: StateCompleted, outcome: StepDone, next: End},
		{name: "explicit end", step: a, r: stepResult{Out: Outcome{Next: End}}, kind: decComplete, state: StateCompleted, outcome: StepDone, next: End},
		{name: "missing next fails", step: a, r: stepResult{Out: Outcome{Next: "nope"}}, kind: decFail, state: StateFailed, outcome: StepFailed, errIs: ErrStepNotFound, permanent: true},
		{name: "checkpoint repeats the step", step: a, r: stepResult{Out: Outcome{Checkpoint: map[string]int{"i": 2}, Next: "c"}}, kind: decContinue, state: StateRunning, outcome: StepDone, next: "a"},
		{name: "error retried", step: a, r: stepResult{Err: boom, Attempt: 1, MaxAttempts: 3}, kind: decRetry, state: StateRunning, outcome: StepRetried, errIs: boom},
		{name: "last attempt dead-letters", step: a, r: stepResult{Err: boom, Attempt: 3, MaxAttempts: 3}, kind: decDeadLetter, state: StateDeadLettered, outcome: StepDeadLettered, errIs: boom},
		{name: "permanent fails", step: a, r: stepResult{Err: workqueue.Permanent(boom), Attempt: 1, MaxAttempts: 3}, kind: decFail, state: StateFailed, outcome: StepFailed, errIs: boom, permanent: true},
		{name: "draining hands back", step: a, r: stepResult{Err: boom, Attempt: 3, MaxAttempts: 3, Draining: true}, kind: decAbandon, errIs: boom},
		{name: "lease lost records nothing", step: a, r: stepResult{LeaseLost: true}, kind: decAbandon},
		{name: "cancel wins over success", step: a, r: stepResult{Cancelled: true, CancelReason: "r"}, kind: decCancel, state: StateCancelled, outcome: StepCancelled},
		{name: "cancel wins over error", step: a, r: stepResult{Err: context.Canceled, Cancelled: true, Attempt: 1, MaxAttempts: 3}, kind: decCancel, state: StateCancelled, outcome: StepCancelled},
		{name: "await parks", step: b, r: stepResult{Out: Outcome{Await: &Await{Signal: "go", Timeout: time.Minute, OnTimeout: "late"}}, Now: now},
			kind: decPark, state: StateAwaiting, outcome: StepAwaiting, next: "c", timeout: "late"},
		{name: "await without timeout", step: b, r: stepResult{Out: Outcome{Await: &Await{Signal: "go"}}}, kind: decPark, state: StateAwaiting, outcome: StepAwaiting, next: "c"},
		{name: "await to a missing step fails", step: b, r: stepResult{Out: Outcome{Await: &Await{Signal: "go", Timeout: time.Second, OnTimeout: "nope"}}}, kind: decFail, state: StateFailed, outcome: StepFailed, errIs: ErrStepNotFound, permanent: true},
		{name: "await without a signal fails", step: b, r: stepResult{Out: Outcome{Await: &Await{}}}, kind: decFail, state: StateFailed, outcome: StepFailed, permanent: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := transition(it, f, tc.step, tc.r)
			if d.Kind != tc.kind || d.State != tc.state || d.Outcome != tc.outcome {
				t.Fatalf("got %v state %q outcome %q (err %v), want %v %q %q", d.Kind, d.State, d.Outcome, d.Err, tc.kind, tc.state, tc.outcome)
			}
			if tc.errIs != nil && !errors.Is(d.Err, tc.errIs) {
				t.Errorf("err %v, want %v", d.Err, tc.errIs)
			}
			if tc.permanent != workqueue.IsPermanent(d.Err) {
				t.Errorf("err %v: permanent %v, want %v", d.Err, !tc.permanent, tc.permanent)
			}
			if (d.Kind == decAbandon || d.Kind == decRetry || d.Kind == decFail || d.Kind == decDeadLetter) != (d.Err != nil) {
				t.Errorf("kind %v with err %v", d.Kind, d.Err)
			}
			if tc.next != "" {
				if d.Next == nil || d.Next.Step != tc.next || d.Next.Seq != 4 || d.Next.Gen != 1 || d.Next.Exec != "x" || d.Next.Vars["k"] != 1 {
					t.Fatalf("next %+v, want step %q seq 4 gen 1 with the vars", d.Next, tc.next)
				}
			}
			if tc.timeout != "" {
				to := d.Timeout
				if to == nil || to.Step != tc.timeout || to.Seq != 4 || to.Await != awaitTimeout || !to.NotBefore.Equal(now.Add(time.Minute)) {
					t.Fatalf("timeout item %+v", to)
				}
				if d.Next.Await != awaitSignal || to.id() == d.Next.id() {
					t.Errorf("signal and timeout items: awaits %q/%q, IDs %q/%q: want distinct", d.Next.Await, to.Await, d.Next.id(), to.id())
				}
			} else if d.Timeout != nil {
				t.Errorf("unexpected timeout item %+v", d.Timeout)
			}
		})
	}
	// The checkpoint travels in the continuation.
	d := transition(it, f, a, stepResult{Out: Outcome{Checkpoint: map[string]int{"i": 2}}})
	if string(d.Next.Checkpoint) != `{"i":2}` {
		t.Errorf("checkpoint %s", d.Next.Checkpoint)
	}
	// A wait delays the continuation.
	d = transition(it, f, a, stepResult{Out: Outcome{Wait: time.Second}, Now: now})
	if !d.Next.NotBefore.Equal(now.Add(time.Second)) {
		t.Errorf("wait: not before %v", d.Next.NotBefore)
	}
}

func TestAdmit(t *testing.T) {
	now := time.Unix(1000, 0)
	for _, tc := range []struct {
		name string
		it   item
		b    boundary
		want admission
	}{
		{name: "new execution runs", it: item{Seq: 0}, want: admitRun},
		{name: "next step runs", it: item{Seq: 3}, b: boundary{Known: true, RecordedSeq: 3}, want: admitRun},
		{name: "repeat dropped", it: item{Seq: 2}, b: boundary{Known: true, RecordedSeq: 3}, want: admitDrop},
		{name: "old generation dropped", it: item{Seq: 5, Gen: 0}, b: boundary{Known: true, RecordedSeq: 3, Gen: 1}, want: admitDrop},
		{name: "retry resumes below the mark", it: item{Seq: 2, Gen: 1}, b: boundary{Known: true, RecordedSeq: 3, Gen: 1}, want: admitDrop},
		{name: "retried item runs", it: item{Seq: 3, Gen: 1}, b: boundary{Known: true, RecordedSeq: 3, Gen: 1}, want: admitRun},
		{name: "ended dropped", it: item{Seq: 3}, b: boundary{Known: true, RecordedSeq: 3, Ended: true}, want: admitDrop},
		{name: "cancel at the boundary", it: item{Seq: 3}, b: boundary{Known: true, RecordedSeq: 3, Cancel: true}, want: admitCancel},
		{name: "cancel before a wait is due", it: item{Seq: 3, NotBefore: now.Add(time.Hour)}, b: boundary{Cancel: true}, want: admitCancel},
		{name: "not due", it: item{Seq: 3, NotBefore: now.Add(time.Second)}, want: admitDefer},
		{name: "signal continuation runs", it: item{Seq: 3, Await: awaitSignal}, b: boundary{AwaitWinner: awaitSignal}, want: admitRun},
		{name: "timeout after the signal dropped at once", it: item{Seq: 3, Await: awaitTimeout, NotBefore: now.Add(time.Hour)}, b: boundary{AwaitWinner: awaitSignal}, want: admitDrop},
		{name: "signal after the timeout dropped", it: item{Seq: 3, Await: awaitSignal}, b: boundary{AwaitWinner: awaitTimeout}, want: admitDrop},
		{name: "timeout not due", it: item{Seq: 3, Await: awaitTimeout, NotBefore: now.Add(time.Second)}, want: admitDefer},
		{name: "timeout claims", it: item{Seq: 3, Await: awaitTimeout, NotBefore: now}, want: admitClaim},
		{name: "claimed timeout runs again", it: item{Seq: 3, Await: awaitTimeout, NotBefore: now}, b: boundary{AwaitWinner: awaitTimeout}, want: admitRun},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := admit(&tc.it, tc.b, now)
			if got.Verdict != tc.want {
				t.Fatalf("got %v (%s), want %v", got.Verdict, got.Why, tc.want)
			}
			if got.Verdict == admitDefer && got.Delay <= 0 {
				t.Errorf("defer without a delay")
			}
		})
	}
}
