package workqueue_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/leasing"
	"github.com/clusterbus/clusterbus/workqueue"
	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

const lease = 3 * time.Second

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func logger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type rig struct {
	t     *testing.T
	clock *clockwork.FakeClock
	srv   *mem.Server
	queue string
	m     *workqueue.Metrics
}

func newRig(t *testing.T) *rig {
	fc := clockwork.NewFakeClock()
	srv := mem.NewServer(mem.WithClock(fc))
	t.Cleanup(srv.Close)
	return &rig{t: t, clock: fc, srv: srv, queue: strings.ReplaceAll("wq-"+t.Name()[4:min(len(t.Name()), 40)], "/", "-"),
		m: workqueue.NewMetrics(prometheus.NewRegistry())}
}

func (r *rig) config(maxAttempts int) workqueue.Config {
	return workqueue.Config{
		Queue:       adapters.QueueConfig{Name: r.queue, Lease: lease, MaxAttempts: maxAttempts},
		Concurrency: 1,
		Retry:       workqueue.Backoff{Initial: time.Second, Max: time.Minute, Multiplier: 2},
	}
}

func (r *rig) start(b adapters.Broker, cfg workqueue.Config, h workqueue.Handler) *workqueue.Worker {
	r.t.Helper()
	w, err := workqueue.New(b, cfg, h, workqueue.Options{Clock: r.clock, Logger: logger(r.t), Metrics: r.m})
	if err != nil {
		r.t.Fatal(err)
	}
	if err := w.Start(context.Background()); err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		w.Stop(ctx)
	})
	return w
}

func (r *rig) enqueue(b adapters.Broker, id string) {
	r.t.Helper()
	if err := b.Enqueue(context.Background(), r.queue, adapters.Message{ID: id, Body: []byte(id)}); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rig) stats() mem.QueueStats {
	st, err := r.srv.Stats(r.queue)
	if err != nil {
		r.t.Fatal(err)
	}
	return st
}

// eventually waits (in real time) for cond.
func (r *rig) eventually(what string, cond func() bool) {
	r.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out waiting for %s (stats %+v)", what, r.stats())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func counter(c *prometheus.CounterVec, q string) float64 {
	var m dto.Metric
	if err := c.WithLabelValues(q).Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

func (r *rig) deadReason(b adapters.Broker) string {
	r.t.Helper()
	c, err := b.Consume(context.Background(), r.queue, adapters.ConsumeOptions{DeadLetters: true})
	if err != nil {
		r.t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := c.Receive(ctx)
	if err != nil {
		r.t.Fatal(err)
	}
	return d.Message().Headers[adapters.HeaderDeadLetterReason]
}

func TestSuccessfulHandlerAcks(t *testing.T) {
	r := newRig(t)
	b := r.srv.Client()
	done := make(chan string, 1)
	r.start(b, r.config(3), func(ctx context.Context, j *workqueue.Job) error {
		done <- string(j.Message.Body)
		return nil
	})
	r.enqueue(b, "a")
	if got := <-done; got != "a" {
		t.Fatalf("got %q", got)
	}
	r.eventually("ack", func() bool { return counter(r.m.Acked, r.queue) == 1 })
	if st := r.stats(); st.Ready+st.Leased+st.Delayed+st.Dead != 0 {
		t.Fatalf("queue not empty after ack: %+v", st)
	}
}

func TestFailingHandlerRetriesWithExponentialBackoffThenDeadLetters(t *testing.T) {
	r := newRig(t)
	b := r.srv.Client()
	var attempts []int
	var mu sync.Mutex
	r.start(b, r.config(3), func(ctx context.Context, j *workqueue.Job) error {
		mu.Lock()
		attempts = append(attempts, j.Attempt)
		mu.Unlock()
		return fmt.Errorf("boom %d", j.Attempt)
	})
	ran := func(n int) func() bool {
		return func() bool { mu.Lock(); defer mu.Unlock(); return len(attempts) >= n }
	}
	r.enqueue(b, "a")
	r.eventually("attempt 1 nacked with delay", func() bool { return r.stats().Delayed == 1 })
	// Backoff after attempt 1 is 1s: not before.
	r.clock.Advance(999 * time.Millisecond)
	if st := r.stats(); st.Delayed != 1 {
		t.Fatalf("redelivered before the 1s backoff: %+v", st)
	}
	r.clock.Advance(time.Millisecond)
	r.eventually("attempt 2", ran(2))
	r.eventually("attempt 2 nacked with delay", func() bool { return r.stats().Delayed == 1 })
	// Backoff after attempt 2 is 2s.
	r.clock.Advance(1999 * time.Millisecond)
	if st := r.stats(); st.Delayed != 1 {
		t.Fatalf("redelivered before the 2s backoff: %+v", st)
	}
	r.clock.Advance(time.Millisecond)
	r.eventually("attempt 3", ran(3))
	r.eventually("dead letter", func() bool { return r.stats().Dead == 1 })
	reason := r.deadReason(b)
	if !strings.Contains(reason, "attempt 3 of 3") || !strings.Contains(reason, "boom 3") {
		t.Fatalf("dead-letter reason %q: want the attempt count and the last error", reason)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(attempts) != "[1 2 3]" {
		t.Fatalf("attempts %v", attempts)
	}
	if counter(r.m.Retried, r.queue) != 2 || counter(r.m.DeadLettered, r.queue) != 1 {
		t.Fatalf("retried %v dead-lettered %v, want 2 and 1", counter(r.m.Retried, r.queue), counter(r.m.DeadLettered, r.queue))
	}
}

func TestBackoffGrowsCapsAndJitters(t *testing.T) {
	b := workqueue.Backoff{Initial: time.Second, Max: 10 * time.Second, Multiplier: 2}
	for attempt, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 5: 10 * time.Second, 50: 10 * time.Second} {
		if got := b.Backoff(attempt); got != want {
			t.Errorf("Backoff(%d) = %s, want %s", attempt, got, want)
		}
	}
	b.Jitter = 0.5
	b.Rand = func() float64 { return 0.5 }
	if got := b.Backoff(3); got != 3*time.Second {
		t.Errorf("jittered Backoff(3) = %s, want 4s - 4s*0.5*0.5 = 3s", got)
	}
	b.Rand = nil
	for i := 0; i < 100; i++ {
		if d := b.Backoff(2); d <= time.Second || d > 2*time.Second {
			t.Fatalf("jittered Backoff(2) = %s, want in (1s, 2s]", d)
		}
	}
}

func TestPermanentErrorDeadLettersAtOnceWithTheReason(t *testing.T) {
	r := newRig(t)
	b := r.srv.Client()
	var calls atomic.Int64
	r.start(b, r.config(5), func(ctx context.Context, j *workqueue.Job) error {
		calls.Add(1)
		return workqueue.Permanent(errors.New("order 42 does not exist"))
	})
	r.enqueue(b, "a")
	r.eventually("dead letter", func() bool { return r.stats().Dead == 1 })
	if reason := r.deadReason(b); !strings.Contains(reason, "order 42 does not exist") {
		t.Fatalf("reason %q", reason)
	}
	if calls.Load() != 1 {
		t.Fatalf("handler ran %d times, want 1", calls.Load())
	}
}

func TestRetryAfterUsesTheAskedDelay(t *testing.T) {
	r := newRig(t)
	b := r.srv.Client()
	var calls atomic.Int64
	r.start(b, r.config(5), func(ctx context.Context, j *workqueue.Job) error {
		if calls.Add(1) == 1 {
			return workqueue.RetryAfter(10*time.Second, errors.New("rate limited"))
		}
		return nil
	})
	r.enqueue(b, "a")
	r.eventually("delayed", func() bool { return r.stats().Delayed == 1 })
	r.clock.Advance(9 * time.Second) // more than the 1s backoff, less than 10s
	if st := r.stats(); st.Delayed != 1 || calls.Load() != 1 {
		t.Fatalf("redelivered before the asked 10s: %+v calls %d", st, calls.Load())
	}
	r.clock.Advance(time.Second)
	r.eventually("ack after the delay", func() bool { return counter(r.m.Acked, r.queue) == 1 })
}

func TestPanicIsRecoveredCountedAndRetried(t *testing.T) {
	r := newRig(t)
	b := r.srv.Client()
	var calls atomic.Int64
	r.start(b, r.config(5), func(ctx context.Context, j *workqueue.Job) error {
		if calls.Add(1) == 1 {
			panic("nil map")
		}
		return nil
	})
	r.enqueue(b, "a")
	r.eventually("retry after panic", func() bool { return r.stats().Delayed == 1 })
	r.clock.Advance(time.Second)
	r.eventually("ack", func() bool { return counter(r.m.Acked, r.queue) == 1 })
	if counter(r.m.Panics, r.queue) != 1 || counter(r.m.Retried, r.queue) != 1 {
		t.Fatalf("panics %v retried %v", counter(r.m.Panics, r.queue), counter(r.m.Retried, r.queue))
	}
}

func TestDrainHandsInFlightItemsBackAtOnce(t *testing.T) {
	r := newRig(t)
	a, b := r.srv.Client(), r.srv.Client()
	started := make(chan struct{}, 1)
	wa := r.start(a, r.config(5), func(ctx context.Context, j *workqueue.Job) error {
		started <- struct{}{}
		<-ctx.Done()
		return context.Cause(ctx)
	})
	r.enqueue(a, "a")
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := wa.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if counter(r.m.HandedBack, r.queue) != 1 {
		t.Fatalf("handed back %v, want 1", counter(r.m.HandedBack, r.queue))
	}
	// Another node gets the item without the clock moving: no lease wait.
	got := make(chan int, 1)
	r.start(b, r.config(5), func(ctx context.Context, j *workqueue.Job) error {
		got <- j.Attempt
		return nil
	})
	select {
	case att := <-got:
		if att != 2 {
			t.Fatalf("attempt %d, want 2", att)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the other worker never got the handed-back item (stats %+v)", r.stats())
	}
}

func TestDrainLetsHandlersFinishWithinTheGrace(t *testing.T) {
	r := newRig(t)
	b := r.srv.Client()
	cfg := r.config(5)
	cfg.DrainGrace = 5 * time.Second
	started, finish := make(chan struct{}, 1), make(chan struct{})
	w := r.start(b, cfg, func(ctx context.Context, j *workqueue.Job) error {
		started <- struct{}{}
		select {
		case <-finish:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	r.enqueue(b, "a")
	<-started
	stopped := make(chan error, 1)
	go func() { stopped <- w.Stop(context.Background()) }()
	close(finish)
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	if counter(r.m.Acked, r.queue) != 1 || counter(r.m.HandedBack, r.queue) != 0 {
		t.Fatalf("acked %v handed back %v, want the handler to finish", counter(r.m.Acked, r.queue), counter(r.m.HandedBack, r.queue))
	}
}

func TestLeaseLossCancelsTheHandlerAndLeavesTheItemToTheBroker(t *testing.T) {
	r := newRig(t)
	a, b := r.srv.Client(), r.srv.Client()
	cause := make(chan error, 1)
	r.start(a, r.config(5), func(ctx context.Context, j *workqueue.Job) error {
		<-ctx.Done()
		cause <- context.Cause(ctx)
		return ctx.Err()
	})
	r.enqueue(a, "a")
	r.eventually("leased", func() bool { return r.stats().Leased == 1 })
	a.Disconnect() // renewals now fail; the broker takes the item back
	var err error
	r.eventually("handler cancelled", func() bool {
		select {
		case err = <-cause:
			return true
		default:
			r.clock.Advance(100 * time.Millisecond)
			return false
		}
	})
	if !errors.Is(err, leasing.ErrLost) {
		t.Fatalf("cause %v, want leasing.ErrLost", err)
	}
	r.eventually("loss counted", func() bool { return counter(r.m.LeaseLosses, r.queue) == 1 })
	if counter(r.m.Retried, r.queue)+counter(r.m.DeadLettered, r.queue)+counter(r.m.Acked, r.queue) != 0 {
		t.Fatal("a lost item was settled")
	}
	got := make(chan int, 1)
	r.start(b, r.config(5), func(ctx context.Context, j *workqueue.Job) error { got <- j.Attempt; return nil })
	select {
	case att := <-got:
		t.Logf("another node got the item on attempt %d", att)
	case <-time.After(10 * time.Second):
		t.Fatal("the item never came back")
	}
}

func TestConcurrencyLimitsHandlersPerQueue(t *testing.T) {
	r := newRig(t)
	b := r.srv.Client()
	cfg := r.config(5)
	cfg.Concurrency = 3
	var running, peak atomic.Int64
	release := make(chan struct{})
	r.start(b, cfg, func(ctx context.Context, j *workqueue.Job) error {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-release
		running.Add(-1)
		return nil
	})
	for i := 0; i < 10; i++ {
		r.enqueue(b, fmt.Sprint("item-", i))
	}
	r.eventually("3 running", func() bool { return running.Load() == 3 })
	if st := r.stats(); st.Leased != 3 {
		t.Fatalf("leased %d with concurrency 3: %+v", st.Leased, st)
	}
	close(release)
	r.eventually("all acked", func() bool { return counter(r.m.Acked, r.queue) == 10 })
	if peak.Load() != 3 {
		t.Fatalf("peak %d, want 3", peak.Load())
	}
}

// pausingBroker's consumers count their Pause calls (adapters.Pauser).
type pausingBroker struct {
	adapters.Broker
	pauses atomic.Int64
}

func (b *pausingBroker) Consume(ctx context.Context, queue string, opts adapters.ConsumeOptions) (adapters.Consumer, error) {
	c, err := b.Broker.Consume(ctx, queue, opts)
	return pausingConsumer{c, b}, err
}

type pausingConsumer struct {
	adapters.Consumer
	b *pausingBroker
}

func (c pausingConsumer) Pause() { c.b.pauses.Add(1) }

// While the gate is closed nothing is received, and a consumer that can
// give back what it fetched ahead (adapters.Pauser) is asked to, once.
func TestClosedGateReceivesNothingUntilItOpens(t *testing.T) {
	r := newRig(t)
	b := &pausingBroker{Broker: r.srv.Client()}
	cfg := r.config(5)
	var open atomic.Bool
	var asked atomic.Int64
	cfg.Gate = func() bool { asked.Add(1); return open.Load() }
	cfg.GatePoll = 100 * time.Millisecond
	done := make(chan struct{}, 1)
	r.start(b, cfg, func(ctx context.Context, j *workqueue.Job) error { done <- struct{}{}; return nil })
	r.enqueue(b, "a")
	r.eventually("gate asked again", func() bool {
		if asked.Load() >= 3 {
			return true
		}
		r.clock.Advance(100 * time.Millisecond)
		return false
	})
	if st := r.stats(); st.Ready != 1 {
		t.Fatalf("item taken while the gate was closed: %+v", st)
	}
	if n := b.pauses.Load(); n != 1 {
		t.Fatalf("consumer paused %d times while the gate stayed closed, want once", n)
	}
	open.Store(true)
	r.eventually("handled after the gate opened", func() bool {
		select {
		case <-done:
			return true
		default:
			r.clock.Advance(100 * time.Millisecond)
			return false
		}
	})
}

func TestNewRejectsBadConfig(t *testing.T) {
	b := mem.New()
	defer b.Close()
	_, err := workqueue.New(b, workqueue.Config{Queue: adapters.QueueConfig{Name: "bad name!"}}, func(context.Context, *workqueue.Job) error { return nil }, workqueue.Options{})
	if !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Fatalf("err %v, want ErrInvalidArgument", err)
	}
	_, err = workqueue.New(b, workqueue.Config{Queue: adapters.QueueConfig{Name: "q", Lease: time.Second}, Lease: leasing.Config{RenewEvery: time.Second}}, func(context.Context, *workqueue.Job) error { return nil }, workqueue.Options{})
	if !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Fatalf("renew every = lease: err %v, want ErrInvalidArgument", err)
	}
	t.Log(err)
}

// consumeRecorder records the options the worker consumes with.
type consumeRecorder struct {
	adapters.Broker
	mu   sync.Mutex
	opts []adapters.ConsumeOptions
}

func (c *consumeRecorder) Consume(ctx context.Context, queue string, opts adapters.ConsumeOptions) (adapters.Consumer, error) {
	c.mu.Lock()
	c.opts = append(c.opts, opts)
	c.mu.Unlock()
	return c.Broker.Consume(ctx, queue, opts)
}

// The worker opens one consumer that fetches ahead one item per handler by
// default, Config.Prefetch when set, and may grow that up to MaxPrefetch
// (default DefaultMaxPrefetch, never below Prefetch); a negative Prefetch is
// refused.
func TestPrefetchFollowsConcurrency(t *testing.T) {
	r := newRig(t)
	for _, c := range []struct{ concurrency, prefetch, maxPrefetch, want, wantMax int }{
		{4, 0, 0, 4, workqueue.DefaultMaxPrefetch},
		{4, 32, 0, 32, workqueue.DefaultMaxPrefetch},
		{4, 0, 100, 4, 100},      // MaxPrefetch as set
		{4, 1000, 0, 1000, 1000}, // Prefetch above the default maximum
	} {
		rec := &consumeRecorder{Broker: r.srv.Client()}
		cfg := r.config(3)
		cfg.Concurrency, cfg.Prefetch, cfg.MaxPrefetch = c.concurrency, c.prefetch, c.maxPrefetch
		w := r.start(rec, cfg, func(context.Context, *workqueue.Job) error { return nil })
		if err := w.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
		rec.mu.Lock()
		if len(rec.opts) != 1 || rec.opts[0].Prefetch != c.want || rec.opts[0].MaxPrefetch != c.wantMax {
			t.Errorf("Concurrency %d, Prefetch %d, MaxPrefetch %d: consumed with %+v, want one consumer with Prefetch %d, MaxPrefetch %d",
				c.concurrency, c.prefetch, c.maxPrefetch, rec.opts, c.want, c.wantMax)
		}
		rec.mu.Unlock()
	}
	cfg := r.config(3)
	cfg.Prefetch, cfg.MaxPrefetch = 32, 16
	if _, err := workqueue.New(r.srv.Client(), cfg, func(context.Context, *workqueue.Job) error { return nil }, workqueue.Options{}); !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Errorf("MaxPrefetch 16 below Prefetch 32: %v, want ErrInvalidArgument", err)
	}
	cfg = r.config(3)
	cfg.Prefetch = -1
	if _, err := workqueue.New(r.srv.Client(), cfg, func(context.Context, *workqueue.Job) error { return nil }, workqueue.Options{}); !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Errorf("Prefetch -1: %v, want ErrInvalidArgument", err)
	}
}
