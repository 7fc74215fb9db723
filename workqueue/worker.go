package workqueue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/leasing"
	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultMaxPrefetch is Config.MaxPrefetch's default: as many items as
// nats.go pulls at a time by default, which the fetch-ahead reaches only
// while handlers empty it within a tenth of the lease.
const DefaultMaxPrefetch = 500

// ErrDraining is the cause of a handler context cancelled by Stop.
var ErrDraining = errors.New("workqueue: draining")

// Handler processes one item. Its error chooses the outcome; see the
// package doc.
type Handler func(ctx context.Context, job *Job) error

// Job is one delivery handed to a Handler.
type Job struct {
	// Message is the item as enqueued.
	Message adapters.Message
	// Attempt counts deliveries of this item, starting at 1.
	Attempt int
	// MaxAttempts is the queue's limit; the item is dead-lettered when an
	// attempt that is the last one fails.
	MaxAttempts int
	// Queue is the queue's name.
	Queue string
	// Lease is the held lease; Lease.Valid says whether the result may
	// still be recorded.
	Lease *leasing.Lease
}

// Token returns the job's current fencing token.
func (j *Job) Token() leasing.Token { return j.Lease.Token() }

// Config configures a Worker.
type Config struct {
	// Queue is declared by Start. Queue.Lease and Queue.MaxAttempts also
	// drive the lease loop and the retry limit.
	Queue adapters.QueueConfig
	// Concurrency is the number of handlers that run at once. Default 1.
	Concurrency int
	// Prefetch is how many items the consumer may fetch ahead of free
	// handlers (adapters.ConsumeOptions.Prefetch). Default Concurrency.
	// More saves broker round trips with short handlers; each item fetched
	// ahead waits with its lease running (see the package doc).
	Prefetch int
	// MaxPrefetch lets an adapter that can resize what it fetches ahead
	// (NATS) fetch more than Prefetch, up to MaxPrefetch, while the handlers
	// take items fast enough that none waits in its buffer for more than
	// about a tenth of the lease (adapters.ConsumeOptions.MaxPrefetch).
	// Default DefaultMaxPrefetch, or Prefetch if that is larger; set it to
	// Prefetch for a fixed fetch-ahead. Below Prefetch is refused.
	MaxPrefetch int
	// Retry picks the delay after a failed attempt. Default DefaultBackoff().
	Retry RetryPolicy
	// Lease tunes renewal; Lease.Length is taken from Queue.Lease.
	Lease leasing.Config
	// DrainGrace is how long Stop lets running handlers finish before it
	// cancels them and hands their items back. Default 0: at once.
	DrainGrace time.Duration
	// Gate, if set, must answer true before each receive.
	Gate func() bool
	// GatePoll is how often a closed Gate is asked again. Default 200ms.
	GatePoll time.Duration
}

// Options are optional knobs.
type Options struct {
	Clock   clockwork.Clock
	Logger  *slog.Logger
	Metrics *Metrics // default: unregistered metrics
}

// Worker runs a Handler over one queue.
type Worker struct {
	b    adapters.Broker
	cfg  Config
	h    Handler
	opts Options
	log  *slog.Logger

	mu       sync.Mutex
	started  bool
	stopped  bool
	recvStop context.CancelFunc
	hctx     context.Context
	hcancel  context.CancelCauseFunc
	handlers sync.WaitGroup // the worker goroutines
	recvMu   sync.Mutex     // held by the handler that is receiving
	consMu   sync.Mutex
	cons     adapters.Consumer
	draining atomic.Bool
	inFlight atomic.Int64
	m        queueMetrics
	// leaseOpts are the Options of every lease the worker holds.
	leaseOpts leasing.Options
}

// queueMetrics are the worker's children of Metrics, looked up once.
type queueMetrics struct {
	inFlight                                     prometheus.Gauge
	received, acked, retried, deadLettered       prometheus.Counter
	handedBack, panics, renewals, losses, settle prometheus.Counter
}

func (m *Metrics) forQueue(q string) queueMetrics {
	return queueMetrics{
		inFlight:     m.InFlight.WithLabelValues(q),
		received:     m.Received.WithLabelValues(q),
		acked:        m.Acked.WithLabelValues(q),
		retried:      m.Retried.WithLabelValues(q),
		deadLettered: m.DeadLettered.WithLabelValues(q),
		handedBack:   m.HandedBack.WithLabelValues(q),
		panics:       m.Panics.WithLabelValues(q),
		renewals:     m.LeaseRenewals.WithLabelValues(q),
		losses:       m.LeaseLosses.WithLabelValues(q),
		settle:       m.SettleErrors.WithLabelValues(q),
	}
}

// New checks cfg and returns a Worker; Start runs it.
func New(b adapters.Broker, cfg Config, h Handler, opts Options) (*Worker, error) {
	cfg.Queue = cfg.Queue.WithDefaults()
	if err := cfg.Queue.Validate(b.Capabilities()); err != nil {
		return nil, fmt.Errorf("workqueue: %w", err)
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = 1
	}
	if cfg.Concurrency < 0 {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, "workqueue: config", "Concurrency %d: want >= 1", cfg.Concurrency)
	}
	if cfg.Prefetch == 0 {
		cfg.Prefetch = cfg.Concurrency
	}
	if cfg.Prefetch < 0 {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, "workqueue: config", "Prefetch %d: want >= 1 (0 means Concurrency)", cfg.Prefetch)
	}
	if cfg.MaxPrefetch < 0 || cfg.MaxPrefetch > 0 && cfg.MaxPrefetch < cfg.Prefetch {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, "workqueue: config", "MaxPrefetch %d: want at least Prefetch (%d); 0 means %d or Prefetch, if larger", cfg.MaxPrefetch, cfg.Prefetch, DefaultMaxPrefetch)
	}
	if cfg.MaxPrefetch == 0 {
		cfg.MaxPrefetch = max(DefaultMaxPrefetch, cfg.Prefetch)
	}
	if cfg.Retry == nil {
		cfg.Retry = DefaultBackoff()
	}
	cfg.Lease.Length = cfg.Queue.Lease
	cfg.Lease = cfg.Lease.WithDefaults()
	if err := cfg.Lease.Validate(); err != nil {
		return nil, fmt.Errorf("workqueue: %w", err)
	}
	if cfg.GatePoll <= 0 {
		cfg.GatePoll = 200 * time.Millisecond
	}
	if cfg.DrainGrace < 0 {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, "workqueue: config", "DrainGrace %s: want >= 0", cfg.DrainGrace)
	}
	if h == nil {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, "workqueue: config", "nil handler")
	}
	if opts.Clock == nil {
		opts.Clock = clockwork.NewRealClock()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(nil)
	}
	w := &Worker{b: b, cfg: cfg, h: h, opts: opts, log: opts.Logger.With("queue", cfg.Queue.Name),
		m: opts.Metrics.forQueue(cfg.Queue.Name)}
	w.leaseOpts = leasing.Options{
		Clock: opts.Clock, Logger: w.log,
		OnRenew: w.m.renewals.Inc,
		OnLost:  func(error) { w.m.losses.Inc() },
	}
	return w, nil
}

// Queue is the name of the worker's queue.
func (w *Worker) Queue() string { return w.cfg.Queue.Name }

// InFlight is the number of handlers running now.
func (w *Worker) InFlight() int { return int(w.inFlight.Load()) }

// Start declares the queue, opens a consumer and starts receiving. The
// worker runs until Stop; ctx only bounds the start-up calls.
func (w *Worker) Start(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.started {
		return adapters.Errorf(adapters.ErrInvalidArgument, "workqueue: start", "already started")
	}
	if err := w.b.DeclareQueue(ctx, w.cfg.Queue); err != nil {
		return fmt.Errorf("workqueue: declare %q: %w", w.cfg.Queue.Name, err)
	}
	cons, err := w.b.Consume(ctx, w.cfg.Queue.Name, w.consumeOptions())
	if err != nil {
		return fmt.Errorf("workqueue: consume %q: %w", w.cfg.Queue.Name, err)
	}
	w.cons = cons
	w.started = true
	rctx, rcancel := context.WithCancel(context.Background())
	w.recvStop = rcancel
	w.hctx, w.hcancel = context.WithCancelCause(context.Background())
	for range w.cfg.Concurrency {
		w.handlers.Add(1)
		go w.work(rctx)
	}
	return nil
}

// Stop drains the worker: no more receiving, DrainGrace for running
// handlers, then their contexts are cancelled and their items handed back.
// It returns when every handler has returned and its item is settled, or
// with ctx's error if ctx ends first (the consumer is closed then, which
// releases what it holds).
func (w *Worker) Stop(ctx context.Context) error {
	w.mu.Lock()
	if !w.started || w.stopped {
		w.mu.Unlock()
		return nil
	}
	w.stopped = true
	w.mu.Unlock()

	w.recvStop()
	all := make(chan struct{})
	go func() { w.handlers.Wait(); close(all) }()

	var err error
	grace := w.opts.Clock.NewTimer(w.cfg.DrainGrace)
	select {
	case <-all:
	case <-grace.Chan():
	case <-ctx.Done():
	}
	grace.Stop()
	w.draining.Store(true)
	w.hcancel(ErrDraining)
	select {
	case <-all:
	case <-ctx.Done():
		err = fmt.Errorf("workqueue: stop %q: %d handlers still running: %w", w.cfg.Queue.Name, w.inFlight.Load(), ctx.Err())
	}
	if cerr := w.cons.Close(); cerr != nil && err == nil && !errors.Is(cerr, adapters.ErrClosed) {
		err = fmt.Errorf("workqueue: close consumer %q: %w", w.cfg.Queue.Name, cerr)
	}
	return err
}

// consumeOptions asks the adapter to fetch ahead Prefetch items (by default
// one per handler), so a handler that finishes finds the next item waiting,
// and lets it fetch up to MaxPrefetch while handlers keep up.
func (w *Worker) consumeOptions() adapters.ConsumeOptions {
	return adapters.ConsumeOptions{Prefetch: w.cfg.Prefetch, MaxPrefetch: w.cfg.MaxPrefetch}
}

func (w *Worker) consumer() adapters.Consumer {
	w.consMu.Lock()
	defer w.consMu.Unlock()
	return w.cons
}

// reopen replaces a closed consumer, once for all handlers that saw it
// closed.
func (w *Worker) reopen(ctx context.Context, old adapters.Consumer) {
	w.consMu.Lock()
	defer w.consMu.Unlock()
	if w.cons != old {
		return
	}
	if c, err := w.b.Consume(ctx, w.cfg.Queue.Name, w.consumeOptions()); err == nil {
		w.cons = c
	} else {
		w.log.Warn("workqueue: reopen consumer failed", "err", err)
	}
}

// work is one of Concurrency handler goroutines: it receives an item (see
// next), runs the handler on it and settles it, until ctx ends.
func (w *Worker) work(ctx context.Context) {
	defer w.handlers.Done()
	// The handler contexts of this goroutine derive from its own child of
	// hctx, so creating and cancelling one per item does not contend with
	// the other handlers for hctx's lock.
	hctx, cancel := context.WithCancel(w.hctx)
	defer cancel()
	var s settleCtx
	defer s.release()
	// The leases of this goroutine's items, one at a time, on one timer.
	keeper := leasing.NewKeeper(w.cfg.Lease, w.leaseOpts)
	for {
		d, ok := w.next(ctx)
		if !ok {
			return
		}
		w.handle(hctx, &s, keeper, d)
	}
}

// settleTimeout bounds settling one item; settleCtx reuses one context for
// the items one handler settles within settleReuse, so each still has at
// least settleTimeout - settleReuse.
const (
	settleTimeout = 30 * time.Second
	settleReuse   = 10 * time.Second
)

// settleCtx is a handler goroutine's context for settling: a new one with
// settleTimeout is made only when the current one has less than
// settleTimeout - settleReuse left, so each settle has at least that long
// and a short handler does not pay for a timer per item.
type settleCtx struct {
	ctx      context.Context
	cancel   context.CancelFunc
	deadline time.Time
}

func (s *settleCtx) get() context.Context {
	now := time.Now()
	if s.ctx == nil || s.deadline.Sub(now) < settleTimeout-settleReuse {
		s.release()
		s.deadline = now.Add(settleTimeout)
		s.ctx, s.cancel = context.WithDeadline(context.Background(), s.deadline)
	}
	return s.ctx
}

func (s *settleCtx) release() {
	if s.cancel != nil {
		s.cancel()
	}
}

// next receives one item for a free handler. Handlers receive one at a
// time (recvMu), each after asking the gate, so at most one item is
// received after the gate closes (the one whose Receive was already
// waiting), however many handlers run; the handler that received an item
// runs it, with no hand-off to another goroutine. It returns false when
// ctx ends.
func (w *Worker) next(ctx context.Context) (adapters.Delivery, bool) {
	w.recvMu.Lock()
	defer w.recvMu.Unlock()
	clock := w.opts.Clock
	pause := func(d time.Duration) bool {
		t := clock.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-t.Chan():
			return true
		}
	}
	for ctx.Err() == nil {
		for closed := false; w.cfg.Gate != nil && !w.cfg.Gate(); closed = true {
			if p, ok := w.consumer().(adapters.Pauser); ok && !closed {
				// Nothing fetched ahead waits out its lease here while
				// the gate is closed: other nodes can take it.
				p.Pause()
			}
			if !pause(w.cfg.GatePoll) {
				return nil, false
			}
		}
		cons := w.consumer()
		d, err := cons.Receive(ctx)
		switch {
		case err == nil:
			return d, true
		case ctx.Err() != nil:
		case errors.Is(err, adapters.ErrClosed):
			w.log.Warn("workqueue: consumer closed; reopening", "err", err)
			if pause(time.Second) {
				w.reopen(ctx, cons)
			}
		default:
			w.log.Warn("workqueue: receive failed; retrying", "err", err)
			pause(500 * time.Millisecond)
		}
	}
	return nil, false
}

func (w *Worker) handle(hctx context.Context, s *settleCtx, keeper *leasing.Keeper, d adapters.Delivery) {
	q := w.cfg.Queue.Name
	m := &w.m
	m.received.Inc()
	m.inFlight.Inc()
	w.inFlight.Add(1)
	defer func() { m.inFlight.Dec(); w.inFlight.Add(-1) }()

	ctx, lease := keeper.Hold(hctx, d)
	job := &Job{Message: d.Message(), Attempt: d.Attempt(), MaxAttempts: w.cfg.Queue.MaxAttempts, Queue: q, Lease: lease}
	err := w.run(ctx, job)
	lease.Release()
	w.settle(s.get(), d, job, lease, err)
}

func (w *Worker) run(ctx context.Context, job *Job) (err error) {
	defer func() {
		if r := recover(); r != nil {
			w.m.panics.Inc()
			pe := &PanicError{Value: r, Stack: debug.Stack()}
			w.log.Error("workqueue: handler panicked", "id", job.Message.ID, "attempt", job.Attempt, "panic", r, "stack", string(pe.Stack))
			err = pe
		}
	}()
	return w.h(ctx, job)
}

// settle settles d as herr asks, within sctx (see settleCtx).
func (w *Worker) settle(sctx context.Context, d adapters.Delivery, job *Job, lease *leasing.Lease, herr error) {
	m := &w.m
	// Built only on the unhappy paths below.
	log := func() *slog.Logger { return w.log.With("id", job.Message.ID, "attempt", job.Attempt) }
	var err error
	switch {
	case lease.Err() != nil:
		log().Warn("workqueue: lease lost while the handler ran; leaving the item to the broker", "err", lease.Err(), "handler_err", herr)
		return
	case herr == nil:
		if err = d.Ack(sctx); err == nil {
			m.acked.Inc()
		}
	case w.draining.Load() && errors.Is(context.Cause(w.hctx), ErrDraining) && !IsPermanent(herr):
		if err = d.Nack(sctx, 0); err == nil {
			m.handedBack.Inc()
			log().Info("workqueue: handed back during drain", "err", herr)
		}
	case IsPermanent(herr):
		err = w.deadLetter(sctx, d, job, herr)
	default:
		delay, asked := RetryDelay(herr)
		if job.Attempt >= job.MaxAttempts {
			err = w.deadLetter(sctx, d, job, fmt.Errorf("attempt %d of %d failed: %w", job.Attempt, job.MaxAttempts, herr))
			break
		}
		if !asked {
			delay = w.cfg.Retry.Backoff(job.Attempt)
		}
		if caps := w.b.Capabilities(); caps.MaxDelay > 0 && delay > caps.MaxDelay {
			delay = caps.MaxDelay
		}
		if !w.b.Capabilities().DelayedNack.Available() {
			delay = 0
		}
		if err = d.Nack(sctx, delay); err == nil {
			m.retried.Inc()
			lvl := slog.LevelInfo
			if asked {
				lvl = slog.LevelDebug // the handler chose the delay (a wait, a RetryAfter): not a failure
			}
			log().Log(context.Background(), lvl, "workqueue: retrying", "delay", delay, "err", herr)
		}
	}
	if err != nil {
		m.settle.Inc()
		log().Warn("workqueue: settling failed", "err", err, "handler_err", herr)
	}
}

func (w *Worker) deadLetter(ctx context.Context, d adapters.Delivery, job *Job, cause error) error {
	reason := cause.Error()
	if len(reason) > 1000 {
		reason = reason[:1000] + "…"
	}
	err := d.DeadLetter(ctx, reason)
	if err == nil {
		w.m.deadLettered.Inc()
		w.log.Warn("workqueue: dead-lettered", "id", job.Message.ID, "attempt", job.Attempt, "reason", reason)
	}
	return err
}
