package flows

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/workqueue"
)

type repeatLogWriter struct{ t *testing.T }

func (w repeatLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// TestRepeatedItemOfARecordedStepIsDroppedWithoutDedupe stands for a crash
// between recording a continuation and the ack, on a broker without dedupe:
// after an execution completed, copies of its step items (seq 0 and seq 1)
// come back. The engine must not run those steps again nor record the
// completion a second time.
func TestRepeatedItemOfARecordedStepIsDroppedWithoutDedupe(t *testing.T) {
	b := mem.NewServer(mem.WithCapabilities(func(c *adapters.Capabilities) { c.Dedupe = adapters.Unsupported })).Client()
	t.Cleanup(func() { b.Close() })
	cfg := Config{Queue: "repeat", ResultsQueue: "repeat-results", Lease: 2 * time.Second, MaxAttempts: 3,
		Concurrency: 1, Retry: workqueue.Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}}
	e, err := New(b, cfg, Options{NodeID: "n1", Logger: slog.New(slog.NewTextHandler(repeatLogWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	runs := map[string]int{} // execution:step -> runs
	step := func(name string) Step {
		return Step{Name: name, Run: func(ctx context.Context, sc *StepContext) (Outcome, error) {
			mu.Lock()
			runs[sc.Execution+":"+name]++
			mu.Unlock()
			return Outcome{}, nil
		}}
	}
	if err := e.Register(&Flow{Name: "two", Version: 1, Steps: []Step{step("a"), step("b")}}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Stop(context.Background()) })
	results, err := b.Consume(ctx, cfg.ResultsQueue, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer results.Close()
	nextResult := func() string {
		t.Helper()
		d, err := results.Receive(ctx)
		if err != nil {
			t.Fatalf("waiting for a completion record: %v", err)
		}
		_ = d.Ack(ctx)
		var r Result
		if err := json.Unmarshal(d.Message().Body, &r); err != nil {
			t.Fatal(err)
		}
		return r.Execution
	}

	id, err := e.Submit(ctx, "two", map[string]any{"x": 1}, WithExecutionID("first"))
	if err != nil {
		t.Fatal(err)
	}
	if got := nextResult(); got != id {
		t.Fatalf("completion of %q, want %q", got, id)
	}
	// The copies: the items of steps a (seq 0) and b (seq 1) again.
	for seq, name := range []string{"a", "b"} {
		it := &item{V: 1, Exec: id, Flow: "two", Version: 1, Step: name, Seq: seq, Input: map[string]any{"x": 1}, Vars: map[string]any{}}
		if err := e.enqueue(ctx, it); err != nil {
			t.Fatal(err)
		}
	}
	// With Concurrency 1 on a FIFO queue, a later execution's completion
	// comes after the copies were handled.
	if _, err := e.Submit(ctx, "two", nil, WithExecutionID("second")); err != nil {
		t.Fatal(err)
	}
	if got := nextResult(); got != "second" {
		t.Fatalf("completion of %q, want second (a repeated step recorded %q again)", got, got)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, k := range []string{"first:a", "first:b", "second:a", "second:b"} {
		if runs[k] != 1 {
			t.Errorf("step %s ran %d times, want 1 (all runs: %v)", k, runs[k], fmt.Sprint(runs))
		}
	}
}

// TestRestartedNodeCatchesUpAndDropsRepeats: a node that starts after an
// execution ended learns of it from the others (catch-up), so it answers
// Status for it and, on a broker without dedupe, drops copies of its
// recorded steps (a crash before the ack) instead of running them again.
func TestRestartedNodeCatchesUpAndDropsRepeats(t *testing.T) {
	b := mem.NewServer(mem.WithCapabilities(func(c *adapters.Capabilities) { c.Dedupe = adapters.Unsupported })).Client()
	t.Cleanup(func() { b.Close() })
	cfg := Config{Queue: "catchup", ResultsQueue: "catchup-results", Lease: 2 * time.Second, MaxAttempts: 3,
		Concurrency: 1, Retry: workqueue.Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}}
	var mu sync.Mutex
	runs := map[string]int{} // execution:step -> runs
	flow := func() *Flow {
		step := func(name string) Step {
			return Step{Name: name, Run: func(ctx context.Context, sc *StepContext) (Outcome, error) {
				mu.Lock()
				runs[sc.Execution+":"+name]++
				mu.Unlock()
				return Outcome{}, nil
			}}
		}
		return &Flow{Name: "two", Version: 1, Steps: []Step{step("a"), step("b")}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(repeatLogWriter{t}, nil))
	var n1Works sync.Mutex // held: n1 takes no more work
	n1Gate := func() bool {
		if n1Works.TryLock() {
			n1Works.Unlock()
			return true
		}
		return false
	}
	n1, err := New(b, cfg, Options{NodeID: "n1", Logger: logger, Gate: n1Gate})
	if err != nil {
		t.Fatal(err)
	}
	if err := n1.Register(flow()); err != nil {
		t.Fatal(err)
	}
	if err := n1.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n1.Stop(context.Background()) })
	results, err := b.Consume(ctx, cfg.ResultsQueue, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer results.Close()
	nextResult := func() string {
		t.Helper()
		d, err := results.Receive(ctx)
		if err != nil {
			t.Fatalf("waiting for a completion record: %v", err)
		}
		_ = d.Ack(ctx)
		var r Result
		if err := json.Unmarshal(d.Message().Body, &r); err != nil {
			t.Fatal(err)
		}
		return r.Execution
	}
	if _, err := n1.Submit(ctx, "two", nil, WithExecutionID("first")); err != nil {
		t.Fatal(err)
	}
	if got := nextResult(); got != "first" {
		t.Fatalf("completion of %q, want first", got)
	}
	n1Works.Lock() // from now on only n2 works; n1 still answers

	n2, err := New(b, cfg, Options{NodeID: "n2", Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	if err := n2.Register(flow()); err != nil {
		t.Fatal(err)
	}
	if err := n2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n2.Stop(context.Background()) })
	var st Status
	for {
		if st, err = n2.Status(ctx, "first"); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the new node never learned of the execution that ended before it started: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st.State != StateCompleted || st.Completions != 1 {
		t.Fatalf("status on the new node: %+v, want completed once", st)
	}
	for seq, name := range []string{"a", "b"} {
		it := &item{V: 1, Exec: "first", Flow: "two", Version: 1, Step: name, Seq: seq, Vars: map[string]any{}}
		if err := n2.enqueue(ctx, it); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := n2.Submit(ctx, "two", nil, WithExecutionID("second")); err != nil {
		t.Fatal(err)
	}
	if got := nextResult(); got != "second" {
		t.Fatalf("completion of %q, want second (a repeated step recorded %q again)", got, got)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, k := range []string{"first:a", "first:b", "second:a", "second:b"} {
		if runs[k] != 1 {
			t.Errorf("step %s ran %d times, want 1 (all runs: %v)", k, runs[k], fmt.Sprint(runs))
		}
	}
}
