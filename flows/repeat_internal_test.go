package flows

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/workqueue"
)

// repeatRig is a broker without dedupe, a two-step flow "two" (steps a and
// b) that counts its runs, and a reader of the completion records.
type repeatRig struct {
	t       *testing.T
	ctx     context.Context
	b       adapters.Broker
	cfg     Config
	log     *slog.Logger
	mu      sync.Mutex
	runs    map[string]int // execution:step -> runs
	results adapters.Consumer
}

func newRepeatRig(t *testing.T, queue string) *repeatRig {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	b := mem.NewServer(mem.WithCapabilities(func(c *adapters.Capabilities) { c.Dedupe = adapters.Unsupported })).Client()
	t.Cleanup(func() { b.Close() })
	r := &repeatRig{t: t, ctx: ctx, b: b, runs: map[string]int{},
		log: slog.New(slog.NewTextHandler(t.Output(), nil)),
		cfg: Config{Queue: queue, ResultsQueue: queue + "-results", Lease: 2 * time.Second, MaxAttempts: 3,
			Concurrency: 1, Retry: workqueue.Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}}}
	return r
}

// engine starts an engine of node id with the flow registered.
func (r *repeatRig) engine(id string, gate func() bool) *Engine {
	r.t.Helper()
	e, err := New(r.b, r.cfg, Options{NodeID: id, Logger: r.log, Gate: gate})
	if err != nil {
		r.t.Fatal(err)
	}
	step := func(name string) Step {
		return Step{Name: name, Run: func(ctx context.Context, sc *StepContext) (Outcome, error) {
			r.mu.Lock()
			r.runs[sc.Execution+":"+name]++
			r.mu.Unlock()
			return Outcome{}, nil
		}}
	}
	if err := e.Register(&Flow{Name: "two", Version: 1, Steps: []Step{step("a"), step("b")}}); err != nil {
		r.t.Fatal(err)
	}
	if err := e.Start(r.ctx); err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { _ = e.Stop(context.Background()) })
	if r.results == nil {
		c, err := r.b.Consume(r.ctx, r.cfg.ResultsQueue, adapters.ConsumeOptions{})
		if err != nil {
			r.t.Fatal(err)
		}
		r.t.Cleanup(func() { c.Close() })
		r.results = c
	}
	return e
}

// nextResult returns the execution of the next completion record.
func (r *repeatRig) nextResult() string {
	r.t.Helper()
	d, err := r.results.Receive(r.ctx)
	if err != nil {
		r.t.Fatalf("waiting for a completion record: %v", err)
	}
	_ = d.Ack(r.ctx)
	var res Result
	if err := json.Unmarshal(d.Message().Body, &res); err != nil {
		r.t.Fatal(err)
	}
	return res.Execution
}

// submitAndComplete submits an execution on e and waits for its record.
func (r *repeatRig) submitAndComplete(e *Engine, id string) {
	r.t.Helper()
	if _, err := e.Submit(r.ctx, "two", map[string]any{"x": 1}, WithExecutionID(id)); err != nil {
		r.t.Fatal(err)
	}
	if got := r.nextResult(); got != id {
		r.t.Fatalf("completion of %q, want %q (a repeated step recorded %q again)", got, id, got)
	}
}

// replayCopies enqueues copies of the items of steps a (seq 0) and b (seq 1)
// of execution id, as a crash between recording and ack leaves them.
func (r *repeatRig) replayCopies(e *Engine, id string) {
	r.t.Helper()
	for seq, name := range []string{"a", "b"} {
		it := &item{V: 1, Exec: id, Flow: "two", Version: 1, Step: name, Seq: seq, Input: map[string]any{"x": 1}, Vars: map[string]any{}}
		if err := e.enqueue(r.ctx, it); err != nil {
			r.t.Fatal(err)
		}
	}
}

// wantEachStepOnce checks that each step of the executions ran once.
func (r *repeatRig) wantEachStepOnce(ids ...string) {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range ids {
		for _, step := range []string{"a", "b"} {
			if n := r.runs[id+":"+step]; n != 1 {
				r.t.Errorf("step %s:%s ran %d times, want 1 (all runs: %v)", id, step, n, fmt.Sprint(r.runs))
			}
		}
	}
}

// TestRepeatedItemOfARecordedStepIsDroppedWithoutDedupe stands for a crash
// between recording a continuation and the ack, on a broker without dedupe:
// after an execution completed, copies of its step items (seq 0 and seq 1)
// come back. The engine must not run those steps again nor record the
// completion a second time.
func TestRepeatedItemOfARecordedStepIsDroppedWithoutDedupe(t *testing.T) {
	r := newRepeatRig(t, "repeat")
	e := r.engine("n1", nil)
	r.submitAndComplete(e, "first")
	r.replayCopies(e, "first")
	// With Concurrency 1 on a FIFO queue, a later execution's completion
	// comes after the copies were handled.
	r.submitAndComplete(e, "second")
	r.wantEachStepOnce("first", "second")
}

// TestRestartedNodeCatchesUpAndDropsRepeats: a node that starts after an
// execution ended learns of it from the executions catalog, so it answers
// Status for it and, on a broker without dedupe, drops copies of its
// recorded steps (a crash before the ack) instead of running them again.
func TestRestartedNodeCatchesUpAndDropsRepeats(t *testing.T) {
	r := newRepeatRig(t, "catchup")
	var n1Works sync.Mutex // held: n1 takes no more work, but still answers
	n1 := r.engine("n1", func() bool {
		if n1Works.TryLock() {
			n1Works.Unlock()
			return true
		}
		return false
	})
	r.submitAndComplete(n1, "first")
	n1Works.Lock()

	n2 := r.engine("n2", nil)
	var st Status
	var err error
	for {
		if st, err = n2.Status(r.ctx, "first"); err == nil && st.State == StateCompleted {
			break
		}
		if r.ctx.Err() != nil {
			t.Fatalf("the new node never learned of the execution that ended before it started: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st.State != StateCompleted {
		t.Fatalf("status on the new node: %+v, want completed once", st)
	}
	r.replayCopies(n2, "first")
	r.submitAndComplete(n2, "second")
	r.wantEachStepOnce("first", "second")
}
