package flows_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/flows"
	"github.com/clusterbus/clusterbus/workqueue"
)

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func logger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func queueName(t *testing.T) string {
	n := strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())
	if len(n) > 40 {
		n = n[len(n)-40:]
	}
	return "f" + n
}

func testConfig(t *testing.T) flows.Config {
	q := queueName(t)
	return flows.Config{Queue: q, Lease: 2 * time.Second, MaxAttempts: 3, Concurrency: 4,
		ResultsQueue: q + "-results", Retry: workqueue.Backoff{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond}}
}

func newEngine(t *testing.T, b adapters.Broker, cfg flows.Config, node string, register func(e *flows.Engine)) *flows.Engine {
	t.Helper()
	e, err := flows.New(b, cfg, flows.Options{NodeID: node, Logger: logger(t).With("node", node)})
	if err != nil {
		t.Fatal(err)
	}
	register(e)
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e.Stop(ctx)
	})
	return e
}

func waitState(t *testing.T, e *flows.Engine, id string, states ...string) flows.Status {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, err := e.Status(context.Background(), id)
		if err == nil {
			for _, st := range states {
				if s.State == st {
					return s
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("execution %s never reached %v: %+v %v", id, states, s, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// results drains the results queue and counts records per execution.
func results(t *testing.T, b adapters.Broker, queue string, want int) map[string]int {
	t.Helper()
	c, err := b.Consume(context.Background(), queue, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	out := map[string]int{}
	for n := 0; ; n++ {
		wait := 10 * time.Second
		if n >= want {
			wait = 300 * time.Millisecond // look for extra records
		}
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		d, err := c.Receive(ctx)
		cancel()
		if err != nil {
			return out
		}
		var r flows.Result
		if err := json.Unmarshal(d.Message().Body, &r); err != nil {
			t.Fatal(err)
		}
		out[r.Execution]++
		d.Ack(context.Background())
	}
}

const orderFlow = `flow: order
version: 1
steps:
  - name: assess
    rule:
      conditions:
        - when: input.amount > 1000
          outcome: review
      default: approve
      branches: {review: pause, approve: approved}
    save_as: decision
  - name: pause
    wait: 50ms
    next: approved
  - name: approved
    set:
      total: "input.amount * 2"
      label: "'order-' + input.id"
  - name: notify
    http:
      method: POST
      url: URL/notify
      body: "{'order': input.id, 'total': vars.total}"
      timeout: 2s
      retries: 1
`

type hook struct {
	mu    sync.Mutex
	calls []http.Header
	fail  atomic.Int64 // answer 503 this many times
}

func (h *hook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	hd := r.Header.Clone()
	hd.Set("X-Body", string(body))
	h.calls = append(h.calls, hd)
	h.mu.Unlock()
	if h.fail.Add(-1) >= 0 {
		http.Error(w, "try later", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"ok": true}`)
}

func TestYAMLFlowWithRuleWaitSetAndHTTPRunsToCompletion(t *testing.T) {
	h := &hook{}
	h.fail.Store(1)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	defs, err := flows.Parse("order.yaml", []byte(strings.ReplaceAll(orderFlow, "URL", srv.URL)))
	if err != nil {
		t.Fatal(err)
	}
	b := mem.New()
	t.Cleanup(func() { b.Close() })
	cfg := testConfig(t)
	e := newEngine(t, b, cfg, "n1", func(e *flows.Engine) {
		if err := e.Register(defs.Flows[0]); err != nil {
			t.Fatal(err)
		}
	})
	big, err := e.Submit(context.Background(), "order", map[string]any{"id": "o1", "amount": 5000})
	if err != nil {
		t.Fatal(err)
	}
	small, err := e.Submit(context.Background(), "order", map[string]any{"id": "o2", "amount": 10})
	if err != nil {
		t.Fatal(err)
	}
	sb := waitState(t, e, big, flows.StateCompleted)
	ss := waitState(t, e, small, flows.StateCompleted)
	if sb.Output["decision"] != "review" || ss.Output["decision"] != "approve" {
		t.Fatalf("decisions %v / %v", sb.Output["decision"], ss.Output["decision"])
	}
	if fmt.Sprint(sb.Output["total"]) != "10000" || sb.Output["label"] != "order-o1" {
		t.Fatalf("set step output %v", sb.Output)
	}
	if sb.Seq != 3 || ss.Seq != 2 {
		t.Fatalf("last seq %d/%d, want 3 (assess 0, pause 1, approved 2, notify 3) and 2", sb.Seq, ss.Seq)
	}
	h.mu.Lock()
	keys := map[string]int{}
	for _, c := range h.calls {
		keys[c.Get(flows.HeaderIdempotencyKey)]++
		if c.Get(flows.HeaderFencingToken) == "" || c.Get(flows.HeaderLeaseDeadline) == "" || c.Get(flows.HeaderNode) != "n1" {
			t.Errorf("missing fencing headers: %v", c)
		}
	}
	h.mu.Unlock()
	if len(keys) != 2 || keys[big+":notify:3"]+keys[small+":notify:2"] != 3 {
		t.Fatalf("idempotency keys %v: want %s:notify:3 and %s:notify:2, one of them twice (a 503 retried in the step)", keys, big, small)
	}
	if got := results(t, b, cfg.ResultsQueue, 2); got[big] != 1 || got[small] != 1 || len(got) != 2 {
		t.Fatalf("completion records %v, want one each", got)
	}
}

func TestStatusIsAnsweredByAnyNode(t *testing.T) {
	srv := mem.NewServer()
	t.Cleanup(srv.Close)
	cfg := testConfig(t)
	flow := func() *flows.Flow {
		return &flows.Flow{Name: "hello", Version: 1, Steps: []flows.Step{
			{Name: "a", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
				sc.Vars["a"] = sc.Node
				return flows.Outcome{}, nil
			}},
			{Name: "b", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) { return flows.Outcome{}, nil }},
		}}
	}
	a := newEngine(t, srv.Client(), cfg, "a", func(e *flows.Engine) { e.Register(flow()) })
	b := newEngine(t, srv.Client(), cfg, "b", func(e *flows.Engine) { e.Register(flow()) })
	id, err := a.Submit(context.Background(), "hello", nil)
	if err != nil {
		t.Fatal(err)
	}
	s := waitState(t, b, id, flows.StateCompleted)
	if s.Flow != "hello" || s.Seq != 1 {
		t.Fatalf("status on the other node: %+v", s)
	}
	if _, err := b.Status(context.Background(), "nope"); !errors.Is(err, flows.ErrExecutionNotFound) || errors.Is(err, adapters.ErrNotFound) {
		t.Fatalf("unknown execution: %v", err)
	}
}

func TestFailingStepIsRetriedWithTheSameIdempotencyKeyThenDeadLettered(t *testing.T) {
	b := mem.New()
	t.Cleanup(func() { b.Close() })
	cfg := testConfig(t)
	var mu sync.Mutex
	var keys []string
	var attempts []int
	e := newEngine(t, b, cfg, "n1", func(e *flows.Engine) {
		e.Register(&flows.Flow{Name: "flaky", Version: 1, Steps: []flows.Step{
			{Name: "first", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) { return flows.Outcome{}, nil }},
			{Name: "second", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
				mu.Lock()
				keys = append(keys, sc.IdempotencyKey)
				attempts = append(attempts, sc.Attempt)
				mu.Unlock()
				if sc.Input["fail"] == "always" {
					return flows.Outcome{}, errors.New("downstream down")
				}
				if sc.Attempt < 2 {
					return flows.Outcome{}, errors.New("transient")
				}
				return flows.Outcome{}, nil
			}},
		}})
	})
	ok, _ := e.Submit(context.Background(), "flaky", nil)
	waitState(t, e, ok, flows.StateCompleted)
	mu.Lock()
	if len(keys) != 2 || keys[0] != keys[1] || keys[0] != ok+":second:1" || fmt.Sprint(attempts) != "[1 2]" {
		t.Fatalf("keys %v attempts %v", keys, attempts)
	}
	keys, attempts = nil, nil
	mu.Unlock()
	bad, _ := e.Submit(context.Background(), "flaky", map[string]any{"fail": "always"})
	s := waitState(t, e, bad, flows.StateDeadLettered)
	if !strings.Contains(s.Error, "downstream down") || s.Attempt != 3 {
		t.Fatalf("status %+v", s)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(attempts) != "[1 2 3]" {
		t.Fatalf("attempts %v, want 3 (MaxAttempts)", attempts)
	}
}

func TestLongStepCheckpointsAndResumes(t *testing.T) {
	b := mem.New()
	t.Cleanup(func() { b.Close() })
	cfg := testConfig(t)
	var seen []string
	var mu sync.Mutex
	e := newEngine(t, b, cfg, "n1", func(e *flows.Engine) {
		e.Register(&flows.Flow{Name: "batch", Version: 1, Steps: []flows.Step{
			{Name: "import", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
				var done int
				if _, err := sc.Resume(&done); err != nil {
					return flows.Outcome{}, err
				}
				mu.Lock()
				seen = append(seen, fmt.Sprintf("%d@%d", done, sc.Seq))
				mu.Unlock()
				if done < 3 {
					return flows.Outcome{Checkpoint: done + 1}, nil
				}
				sc.Vars["imported"] = done
				return flows.Outcome{}, nil
			}},
			{Name: "report", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) { return flows.Outcome{}, nil }},
		}})
	})
	id, _ := e.Submit(context.Background(), "batch", nil)
	s := waitState(t, e, id, flows.StateCompleted)
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(seen) != "[0@0 1@1 2@2 3@3]" || fmt.Sprint(s.Output["imported"]) != "3" {
		t.Fatalf("runs %v output %v", seen, s.Output)
	}
}

func TestUndecodableItemIsDeadLetteredAndTheNodeKeepsRunning(t *testing.T) {
	b := mem.New()
	t.Cleanup(func() { b.Close() })
	cfg := testConfig(t)
	e := newEngine(t, b, cfg, "n1", func(e *flows.Engine) {
		e.Register(&flows.Flow{Name: "one", Version: 1, Steps: []flows.Step{
			{Name: "a", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) { return flows.Outcome{}, nil }},
		}})
	})
	for _, body := range []string{"not json", `{"v": 7}`} {
		if err := b.Enqueue(context.Background(), cfg.Queue, adapters.Message{Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := b.Consume(context.Background(), cfg.Queue, adapters.ConsumeOptions{DeadLetters: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 2; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		d, err := c.Receive(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		reason := d.Message().Headers[adapters.HeaderDeadLetterReason]
		t.Logf("dead-lettered %q: %s", d.Message().Body, reason)
		if !strings.Contains(reason, "does not decode") {
			t.Fatalf("reason %q", reason)
		}
		d.Ack(context.Background())
	}
	id, err := e.Submit(context.Background(), "one", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, e, id, flows.StateCompleted)
}

// crashingBroker disconnects its mem client instead of acking the first
// item whose ID ends in want: a node that dies between recording the
// continuation (or the completion) and the ack.
type crashingBroker struct {
	*mem.Broker
	want    string
	crashed atomic.Bool
}

func (c *crashingBroker) Consume(ctx context.Context, q string, o adapters.ConsumeOptions) (adapters.Consumer, error) {
	cons, err := c.Broker.Consume(ctx, q, o)
	return &crashingConsumer{cons, c}, err
}

type crashingConsumer struct {
	adapters.Consumer
	b *crashingBroker
}

func (c *crashingConsumer) Receive(ctx context.Context) (adapters.Delivery, error) {
	d, err := c.Consumer.Receive(ctx)
	if err != nil {
		return nil, err
	}
	return &crashingDelivery{d, c.b}, nil
}

type crashingDelivery struct {
	adapters.Delivery
	b *crashingBroker
}

func (d *crashingDelivery) Ack(ctx context.Context) error {
	if strings.HasSuffix(d.Message().ID, d.b.want) && d.b.crashed.CompareAndSwap(false, true) {
		d.b.Disconnect() // the item goes back at once, as after a crash
		return d.Delivery.Ack(ctx)
	}
	return d.Delivery.Ack(ctx)
}

func TestCrashBeforeAckRecordsCompletionOnce(t *testing.T) {
	for _, at := range []string{":1", ":2"} { // the middle step; the last step
		t.Run("seq"+at[1:], func(t *testing.T) {
			srv := mem.NewServer()
			t.Cleanup(srv.Close)
			cfg := testConfig(t)
			var mu sync.Mutex
			runs := map[string]int{}
			flow := func() *flows.Flow {
				step := func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
					mu.Lock()
					runs[sc.IdempotencyKey]++
					mu.Unlock()
					return flows.Outcome{}, nil
				}
				return &flows.Flow{Name: "three", Version: 1, Steps: []flows.Step{{Name: "a", Run: step}, {Name: "b", Run: step}, {Name: "c", Run: step}}}
			}
			crashing := &crashingBroker{Broker: srv.Client(), want: at}
			a := newEngine(t, crashing, cfg, "a", func(e *flows.Engine) { e.Register(flow()) })
			b := newEngine(t, srv.Client(), cfg, "b", func(e *flows.Engine) { e.Register(flow()) })
			id, err := b.Submit(context.Background(), "three", nil)
			if err != nil {
				t.Fatal(err)
			}
			// Whichever node ran it, the execution completes.
			waitState(t, b, id, flows.StateCompleted)
			got := results(t, srv.Client(), cfg.ResultsQueue, 1)
			if got[id] != 1 {
				t.Fatalf("completion records %v, want exactly 1", got)
			}
			mu.Lock()
			defer mu.Unlock()
			twice := 0
			for k, n := range runs {
				if n > 1 {
					twice++
					t.Logf("step %s ran %d times", k, n)
				}
			}
			// The crash loses every lease of the node: the step whose ack
			// failed and whatever else it held (at most Concurrency items).
			// The step whose ack failed runs again only if the node that
			// gets it back has not yet heard its step_done event (here the
			// item comes back at once, so that is a race); otherwise the
			// repeat is dropped.
			if crashing.crashed.Load() && twice > cfg.Concurrency {
				t.Fatalf("crashed once but %d steps ran twice: %v", twice, runs)
			}
			if !crashing.crashed.Load() && twice != 0 {
				t.Fatalf("no crash but steps ran twice: %v", runs)
			}
			t.Logf("crash injected: %v; runs %v", crashing.crashed.Load(), runs)
			_ = a
		})
	}
}

func TestHTTPAPISubmitsAndReportsStatus(t *testing.T) {
	b := mem.New()
	t.Cleanup(func() { b.Close() })
	cfg := testConfig(t)
	e := newEngine(t, b, cfg, "n1", func(e *flows.Engine) {
		defs, err := flows.Parse("rule.yaml", []byte("rule: size\nconditions:\n  - when: input.n > 10\n    outcome: big\ndefault: small\n"))
		if err != nil {
			t.Fatal(err)
		}
		if err := e.RegisterRule(defs.Rules[0]); err != nil {
			t.Fatal(err)
		}
	})
	srv := httptest.NewServer(e.Handler())
	t.Cleanup(srv.Close)
	resp, err := http.Post(srv.URL+"/api/flows", "application/json", bytes.NewBufferString(`{"flow": "size", "input": {"n": 42}}`))
	if err != nil {
		t.Fatal(err)
	}
	var sr flows.SubmitResponse
	json.NewDecoder(resp.Body).Decode(&sr)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || sr.ID == "" {
		t.Fatalf("submit: %d %+v", resp.StatusCode, sr)
	}
	deadline := time.Now().Add(15 * time.Second)
	var st flows.Status
	for st.State != flows.StateCompleted {
		if time.Now().After(deadline) {
			t.Fatalf("never completed: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
		r, err := http.Get(srv.URL + "/api/flows/" + sr.ID)
		if err != nil {
			t.Fatal(err)
		}
		json.NewDecoder(r.Body).Decode(&st)
		r.Body.Close()
	}
	if st.Output["outcome"] != "big" {
		t.Fatalf("rule outcome %v", st.Output)
	}
	if out, err := e.Evaluate(context.Background(), "size", map[string]any{"n": 1}); out != "small" || err != nil {
		t.Fatalf("Evaluate = %q, %v", out, err)
	}
	for path, want := range map[string]int{"/api/flows/missing": 404} {
		r, _ := http.Get(srv.URL + path)
		if r.StatusCode != want {
			t.Errorf("GET %s = %d, want %d", path, r.StatusCode, want)
		}
		r.Body.Close()
	}
	for body, want := range map[string]int{`{"flow": "nope"}`: 404, `{bad`: 400, `{}`: 400} {
		r, _ := http.Post(srv.URL+"/api/flows", "application/json", strings.NewReader(body))
		if r.StatusCode != want {
			t.Errorf("POST %s = %d, want %d", body, r.StatusCode, want)
		}
		r.Body.Close()
	}
}
