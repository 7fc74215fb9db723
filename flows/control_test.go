package flows_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
	"github.com/clusterbus/clusterbus/flows"
	"github.com/clusterbus/clusterbus/workqueue"
)

// brokerKind gives each engine of a test its own client of one broker.
type brokerKind struct {
	name   string
	client func(t *testing.T) adapters.Broker
}

// brokers: the mem adapter (with and without dedupe) and an embedded NATS
// server (JetStream, file store), each shared by the engines of one test.
func brokers(t *testing.T) []brokerKind {
	t.Helper()
	memSrv := mem.NewServer()
	t.Cleanup(memSrv.Close)
	noDedupe := mem.NewServer(mem.WithCapabilities(func(c *adapters.Capabilities) { c.Dedupe = adapters.Unsupported }))
	t.Cleanup(noDedupe.Close)
	var natsOnce sync.Once
	var natsURL string
	return []brokerKind{
		{name: "mem", client: func(t *testing.T) adapters.Broker {
			b := memSrv.Client()
			t.Cleanup(func() { b.Close() })
			return b
		}},
		{name: "mem-no-dedupe", client: func(t *testing.T) adapters.Broker {
			b := noDedupe.Client()
			t.Cleanup(func() { b.Close() })
			return b
		}},
		{name: "nats", client: func(t *testing.T) adapters.Broker {
			natsOnce.Do(func() {
				srv, err := natsserver.Start(natsserver.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
				if err != nil {
					t.Fatalf("embedded NATS: %v", err)
				}
				t.Cleanup(srv.Shutdown)
				natsURL = srv.ClientURL()
			})
			b, err := adapters.Open(context.Background(), natsURL)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			return b
		}},
	}
}

// counter counts runs by name.
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) inc(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[name]++
}

func (c *counter) get(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[name]
}

func counting(c *counter, name string) func(context.Context, *flows.StepContext) (flows.Outcome, error) {
	return func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
		c.inc(name)
		return flows.Outcome{}, nil
	}
}

// TestCancelStopsARunningStepAndRecordsTheReason: a cancel asked on
// another node cancels the context of the running step (cause
// ErrCancelled), the next step never runs, and every node reports the
// execution cancelled with the reason.
func TestCancelStopsARunningStepAndRecordsTheReason(t *testing.T) {
	for _, bk := range brokers(t) {
		t.Run(bk.name, func(t *testing.T) {
			var runs counter
			started := make(chan struct{}, 1)
			var cause atomic.Value
			flow := func() *flows.Flow {
				return &flows.Flow{Name: "slow", Version: 1, Steps: []flows.Step{
					{Name: "first", Run: counting(&runs, "first")},
					{Name: "block", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
						runs.inc("block")
						started <- struct{}{}
						<-ctx.Done()
						cause.Store(context.Cause(ctx))
						return flows.Outcome{}, ctx.Err()
					}},
					{Name: "after", Run: counting(&runs, "after")},
				}}
			}
			cfg := testConfig(t)
			cfg.Lease = 30 * time.Second // the step must end by the cancel, not by a lost lease
			reg := func(e *flows.Engine) {
				if err := e.Register(flow()); err != nil {
					t.Fatal(err)
				}
			}
			a := newEngine(t, bk.client(t), cfg, "a", reg)
			b := newEngine(t, bk.client(t), cfg, "b", reg)
			id, err := a.Submit(context.Background(), "slow", nil)
			if err != nil {
				t.Fatal(err)
			}
			select {
			case <-started:
			case <-time.After(20 * time.Second):
				t.Fatal("the blocking step never started")
			}
			waitStep(t, b, id, "block") // b's copy has the execution
			began := time.Now()
			if _, err := b.Cancel(context.Background(), id, "operator said so"); err != nil {
				t.Fatal(err)
			}
			st := waitState(t, a, id, flows.StateCancelled)
			t.Logf("cancelled %s after %v", id, time.Since(began))
			if c, _ := cause.Load().(error); !errors.Is(c, flows.ErrCancelled) {
				t.Errorf("the running step's context cause: %v, want ErrCancelled", c)
			}
			if st.Reason != "operator said so" || st.Ended.IsZero() {
				t.Errorf("status %+v: want the reason and an end", st)
			}
			sb := waitState(t, b, id, flows.StateCancelled)
			last := sb.Steps[len(sb.Steps)-1]
			if last.Step != "block" || last.Outcome != flows.StepCancelled {
				t.Errorf("history on the other node: %+v, want block cancelled last", sb.Steps)
			}
			if _, err := a.Cancel(context.Background(), id, "again"); !errors.Is(err, flows.ErrNotCancellable) {
				t.Errorf("second cancel: %v, want ErrNotCancellable", err)
			}
			if _, err := a.Cancel(context.Background(), "no-such-execution", ""); !errors.Is(err, flows.ErrExecutionNotFound) {
				t.Errorf("cancel of an unknown execution: %v, want ErrExecutionNotFound", err)
			}
			time.Sleep(200 * time.Millisecond)
			if runs.get("first") != 1 || runs.get("block") != 1 || runs.get("after") != 0 {
				t.Errorf("runs %v: want first and block once, after never", runs.n)
			}
		})
	}
}

// waitStep waits until e's record of id is at step.
func waitStep(t *testing.T, e *flows.Engine, id, step string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, err := e.Status(context.Background(), id)
		if err == nil && s.Step == step {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("execution %s never at step %s: %+v %v", id, step, s, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

const awaitFlow = `flow: approval
version: 1
steps:
  - name: prepare
    set: {n: "1"}
  - name: hold
    await: {signal: approve, timeout: TIMEOUT, on-timeout: late}
    next: ok
  - name: ok
    set: {result: "'approved by ' + vars.hold.by"}
    next: end
  - name: late
    set: {result: "'timed out'"}
`

// TestAwaitSignalBeforeAndAfterTimeout: a signal that comes first resumes
// the execution at next with its data in vars, and the timeout is dropped
// when it comes; a timeout that comes first resumes it at on-timeout, and
// a signal after it is refused (ErrNotAwaiting). Signalled from another
// node than the one that parked it.
func TestAwaitSignalBeforeAndAfterTimeout(t *testing.T) {
	for _, bk := range brokers(t) {
		t.Run(bk.name, func(t *testing.T) {
			var okRuns, lateRuns atomic.Int64
			engines := func(timeout string) (*flows.Engine, *flows.Engine) {
				defs, err := flows.Parse("approval.yaml", []byte(replace(awaitFlow, "TIMEOUT", timeout)))
				if err != nil {
					t.Fatal(err)
				}
				f := defs.Flows[0]
				for i := range f.Steps {
					s := &f.Steps[i]
					run, name := s.Run, s.Name
					s.Run = func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
						switch name {
						case "ok":
							okRuns.Add(1)
						case "late":
							lateRuns.Add(1)
						}
						return run(ctx, sc)
					}
				}
				cfg := testConfig(t)
				cfg.Queue += "-" + timeout
				cfg.ResultsQueue = ""
				reg := func(e *flows.Engine) {
					if err := e.Register(f); err != nil {
						t.Fatal(err)
					}
				}
				return newEngine(t, bk.client(t), cfg, "a", reg), newEngine(t, bk.client(t), cfg, "b", reg)
			}

			// Signal first.
			a, b := engines("1500ms")
			id, err := a.Submit(context.Background(), "approval", nil)
			if err != nil {
				t.Fatal(err)
			}
			st := waitState(t, b, id, flows.StateAwaiting)
			if st.Await == nil || st.Await.Signal != "approve" || st.Await.Step != "hold" || st.Await.Deadline.IsZero() {
				t.Fatalf("awaiting status %+v", st)
			}
			if _, err := b.Signal(context.Background(), id, "reject", nil); !errors.Is(err, flows.ErrNotAwaiting) {
				t.Errorf("signal of another name: %v, want ErrNotAwaiting", err)
			}
			if _, err := b.Signal(context.Background(), id, "approve", map[string]any{"by": "ann"}); err != nil {
				t.Fatal(err)
			}
			st = waitState(t, a, id, flows.StateCompleted)
			if st.Output["result"] != "approved by ann" {
				t.Errorf("output %v, want the signal's data used by the next step", st.Output)
			}
			if _, err := a.Signal(context.Background(), id, "approve", nil); !errors.Is(err, flows.ErrNotAwaiting) {
				t.Errorf("second signal: %v, want ErrNotAwaiting", err)
			}
			time.Sleep(2500 * time.Millisecond) // past the timeout: its item comes and is dropped
			if okRuns.Load() != 1 || lateRuns.Load() != 0 {
				t.Errorf("ok ran %d times, late %d: want 1 and 0", okRuns.Load(), lateRuns.Load())
			}
			if s, _ := a.Status(context.Background(), id); s.State != flows.StateCompleted || s.Output["result"] != "approved by ann" {
				t.Errorf("after the timeout passed: %+v", s)
			}

			// Timeout first.
			okRuns.Store(0)
			a, b = engines("300ms")
			id, err = a.Submit(context.Background(), "approval", nil)
			if err != nil {
				t.Fatal(err)
			}
			st = waitState(t, b, id, flows.StateCompleted)
			if st.Output["result"] != "timed out" {
				t.Errorf("output %v, want the on-timeout step's", st.Output)
			}
			if _, err := b.Signal(context.Background(), id, "approve", map[string]any{"by": "bob"}); !errors.Is(err, flows.ErrNotAwaiting) {
				t.Errorf("signal after the timeout: %v, want ErrNotAwaiting", err)
			}
			time.Sleep(200 * time.Millisecond)
			if okRuns.Load() != 0 || lateRuns.Load() != 1 {
				t.Errorf("ok ran %d times, late %d: want 0 and 1", okRuns.Load(), lateRuns.Load())
			}
		})
	}
}

func replace(s, old, new string) string {
	out := ""
	for {
		i := indexOf(s, old)
		if i < 0 {
			return out + s
		}
		out += s[:i] + new
		s = s[i+len(old):]
	}
}

func indexOf(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return -1
}

// TestRetryResumesADeadLetteredExecutionAtItsFailedStep: an execution
// dead-lettered at its second step resumes there on Retry (from another
// node), with the vars the first step set, and the first step does not run
// again; its old dead-lettered item, replayed, is dropped.
func TestRetryResumesADeadLetteredExecutionAtItsFailedStep(t *testing.T) {
	for _, bk := range brokers(t) {
		t.Run(bk.name, func(t *testing.T) {
			var runs counter
			var fixed atomic.Bool
			flow := func() *flows.Flow {
				return &flows.Flow{Name: "fragile", Version: 1, Steps: []flows.Step{
					{Name: "first", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
						runs.inc("first")
						sc.Vars["token"] = "t-1"
						return flows.Outcome{}, nil
					}},
					{Name: "flaky", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
						runs.inc("flaky")
						if !fixed.Load() {
							return flows.Outcome{}, errors.New("downstream is down")
						}
						if sc.Vars["token"] != "t-1" {
							return flows.Outcome{}, workqueue.Permanent(fmt.Errorf("vars %v: the first step's token is lost", sc.Vars))
						}
						return flows.Outcome{}, nil
					}},
					{Name: "last", Run: counting(&runs, "last")},
				}}
			}
			cfg := testConfig(t)
			cfg.MaxAttempts = 2
			reg := func(e *flows.Engine) {
				if err := e.Register(flow()); err != nil {
					t.Fatal(err)
				}
			}
			a := newEngine(t, bk.client(t), cfg, "a", reg)
			b := newEngine(t, bk.client(t), cfg, "b", reg)
			id, err := a.Submit(context.Background(), "fragile", nil)
			if err != nil {
				t.Fatal(err)
			}
			st := waitState(t, b, id, flows.StateDeadLettered)
			if st.Step != "flaky" || st.Error == "" {
				t.Fatalf("dead-lettered status %+v", st)
			}
			if _, err := b.Retry(context.Background(), "no-such-execution"); !errors.Is(err, flows.ErrExecutionNotFound) {
				t.Errorf("retry of an unknown execution: %v", err)
			}
			fixed.Store(true)
			if _, err := b.Retry(context.Background(), id); err != nil {
				t.Fatal(err)
			}
			st = waitState(t, a, id, flows.StateCompleted)
			if st.Retries != 1 {
				t.Errorf("retries %d, want 1", st.Retries)
			}
			if _, err := a.Retry(context.Background(), id); !errors.Is(err, flows.ErrNotRetryable) {
				t.Errorf("retry of a completed execution: %v, want ErrNotRetryable", err)
			}
			if runs.get("first") != 1 || runs.get("flaky") != 3 || runs.get("last") != 1 {
				t.Fatalf("runs %v: want first 1 (not again), flaky 3 (2 attempts + the retry), last 1", runs.n)
			}
			// The dead-lettered item is stale now: replayed, it is dropped.
			n, err := a.Replay(context.Background(), id, flows.ReplayOptions{Wait: 300 * time.Millisecond})
			if err != nil || n != 1 {
				t.Fatalf("replay of the old dead letter: %d %v", n, err)
			}
			time.Sleep(300 * time.Millisecond)
			if runs.get("flaky") != 3 || runs.get("last") != 1 {
				t.Errorf("runs after replaying the stale item %v", runs.n)
			}
			h, err := b.Status(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			var outcomes []string
			for _, s := range h.Steps {
				outcomes = append(outcomes, s.Step+":"+s.Outcome)
			}
			want := "[first:done flaky:retried flaky:dead_lettered flaky:done last:done]"
			if fmt.Sprint(outcomes) != want || h.State != flows.StateCompleted {
				t.Errorf("history %v (%s), want %s", outcomes, h.State, want)
			}
		})
	}
}

// TestHistoryAfterEveryEngineRestarted: on embedded NATS, two engines run
// an execution to completion and cancel another; both stop; two fresh
// engines (other node IDs, same broker) answer Status with the whole
// history and List with both. Where the broker retains the catalog the
// fresh engines have no data dir; elsewhere they reuse the old ones.
func TestHistoryAfterEveryEngineRestarted(t *testing.T) {
	srv, err := natsserver.Start(natsserver.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("embedded NATS: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	client := func() adapters.Broker {
		b, err := adapters.Open(context.Background(), srv.ClientURL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}
	_, retains := client().(adapters.Retainer)
	dirs := []string{"", ""}
	if !retains {
		dirs = []string{t.TempDir(), t.TempDir()}
	}
	t.Logf("broker retains the catalog: %v", retains)
	flow := func() *flows.Flow {
		return &flows.Flow{Name: "three", Version: 1, Steps: []flows.Step{
			{Name: "one", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) { return flows.Outcome{}, nil }},
			{Name: "two", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
				if sc.Input["block"] == true {
					<-ctx.Done()
					return flows.Outcome{}, ctx.Err()
				}
				return flows.Outcome{}, nil
			}},
			{Name: "three", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
				sc.Vars["done"] = true
				return flows.Outcome{}, nil
			}},
		}}
	}
	reg := func(e *flows.Engine) {
		if err := e.Register(flow()); err != nil {
			t.Fatal(err)
		}
	}
	cfg := testConfig(t)
	cfg.Lease = 30 * time.Second
	start := func(node string, dir string) *flows.Engine {
		c := cfg
		c.DataDir = dir
		e, err := flows.New(client(), c, flows.Options{NodeID: node, Logger: logger(t).With("node", node)})
		if err != nil {
			t.Fatal(err)
		}
		reg(e)
		if err := e.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		return e
	}
	stop := func(es ...*flows.Engine) {
		for _, e := range es {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := e.Stop(ctx); err != nil {
				t.Errorf("stop: %v", err)
			}
			cancel()
		}
	}
	a, b := start("a1", dirs[0]), start("b1", dirs[1])
	done, err := a.Submit(context.Background(), "three", nil)
	if err != nil {
		t.Fatal(err)
	}
	stuck, err := b.Submit(context.Background(), "three", map[string]any{"block": true})
	if err != nil {
		t.Fatal(err)
	}
	// Completed, with the step whose record write came after the completion.
	var before flows.Status
	waitUntilTrue(t, "the completed record with its three steps", func() bool {
		before = waitState(t, b, done, flows.StateCompleted)
		return len(before.Steps) == 3
	})
	waitStep(t, a, stuck, "two")
	if _, err := a.Cancel(context.Background(), stuck, "restart test"); err != nil {
		t.Fatal(err)
	}
	waitState(t, b, stuck, flows.StateCancelled)
	waitState(t, a, done, flows.StateCompleted)
	stop(a, b)

	a2, b2 := start("a2", dirs[0]), start("b2", dirs[1])
	t.Cleanup(func() { stop(a2, b2) })
	for _, e := range []*flows.Engine{a2, b2} {
		st := waitState(t, e, done, flows.StateCompleted)
		if len(st.Steps) != 3 || st.Output["done"] != true || fmt.Sprint(st.Steps) != fmt.Sprint(before.Steps) {
			t.Errorf("history after the restart: %+v\nbefore: %+v", st, before)
		}
		for _, s := range st.Steps {
			if (s.Node != "a1" && s.Node != "b1") || s.Started.IsZero() || s.Ended.Before(s.Started) || s.Outcome != flows.StepDone || s.Attempt != 1 {
				t.Errorf("step record %+v", s)
			}
		}
		sc := waitState(t, e, stuck, flows.StateCancelled)
		if sc.Reason != "restart test" {
			t.Errorf("cancelled execution after the restart: %+v", sc)
		}
		l := e.List(flows.ListOptions{Flow: "three", Since: time.Now().Add(-time.Minute)})
		if len(l) != 2 {
			t.Errorf("list after the restart: %+v", l)
		}
		if l := e.List(flows.ListOptions{State: flows.StateCancelled}); len(l) != 1 || l[0].Execution != stuck {
			t.Errorf("list --status cancelled: %+v", l)
		}
	}
}

// TestLongWaitOutlivesItsAttempts: on a broker whose longest delay is 50
// ms, with 2 attempts per item, a 600 ms wait and a 600 ms await timeout
// are carried on by fresh copies of their items instead of being
// dead-lettered.
func TestLongWaitOutlivesItsAttempts(t *testing.T) {
	srv := mem.NewServer(mem.WithCapabilities(func(c *adapters.Capabilities) { c.MaxDelay = 50 * time.Millisecond }))
	t.Cleanup(srv.Close)
	b := srv.Client()
	t.Cleanup(func() { b.Close() })
	defs, err := flows.Parse("long.yaml", []byte(`flow: long
steps:
  - name: pause
    wait: 600ms
  - name: hold
    await: {signal: never, timeout: 600ms, on-timeout: late}
  - name: ok
    set: {r: "'signalled'"}
    next: end
  - name: late
    set: {r: "'timed out'"}
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.MaxAttempts = 2
	e := newEngine(t, b, cfg, "n1", func(e *flows.Engine) {
		if err := e.Register(defs.Flows[0]); err != nil {
			t.Fatal(err)
		}
	})
	began := time.Now()
	id, err := e.Submit(context.Background(), "long", nil)
	if err != nil {
		t.Fatal(err)
	}
	st := waitState(t, e, id, flows.StateCompleted, flows.StateDeadLettered)
	if st.State != flows.StateCompleted || st.Output["r"] != "timed out" {
		t.Fatalf("status %+v", st)
	}
	if took := time.Since(began); took < 1200*time.Millisecond {
		t.Errorf("done after %s: the wait and the timeout were cut short", took)
	}
}

func waitUntilTrue(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestANodeThatRunsNoStepsAnswersAndCancels: an engine with only its
// records started (StartRecords: no flow, no worker) answers History and
// List for an execution another node runs, and cancels it.
func TestANodeThatRunsNoStepsAnswersAndCancels(t *testing.T) {
	srv := mem.NewServer()
	t.Cleanup(srv.Close)
	cfg := testConfig(t)
	cfg.Lease = 30 * time.Second
	started := make(chan struct{}, 1)
	runner := newEngine(t, srv.Client(), cfg, "runner", func(e *flows.Engine) {
		e.Register(&flows.Flow{Name: "held", Version: 1, Steps: []flows.Step{{Name: "hold",
			Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
				started <- struct{}{}
				<-ctx.Done()
				return flows.Outcome{}, ctx.Err()
			}}}})
	})
	viewer, err := flows.New(srv.Client(), cfg, flows.Options{NodeID: "viewer", Logger: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := viewer.StartRecords(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { viewer.Stop(context.Background()) })
	id, err := runner.Submit(context.Background(), "held", nil)
	if err != nil {
		t.Fatal(err)
	}
	<-started
	waitStep(t, viewer, id, "hold")
	if l := viewer.List(flows.ListOptions{Flow: "held"}); len(l) != 1 || l[0].Execution != id {
		t.Fatalf("list on the viewer: %+v", l)
	}
	if _, err := viewer.Cancel(context.Background(), id, "from the viewer"); err != nil {
		t.Fatal(err)
	}
	st := waitState(t, viewer, id, flows.StateCancelled)
	if st.Reason != "from the viewer" || st.Node != "runner" {
		t.Fatalf("status on the viewer: %+v", st)
	}
}
