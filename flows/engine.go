package flows

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/traced"
	"github.com/clusterbus/clusterbus/catalog"
	"github.com/clusterbus/clusterbus/workqueue"
	"github.com/google/uuid"
	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures an Engine. Zero fields take their defaults.
type Config struct {
	// Queue carries the executions' steps. Default "flows".
	Queue string
	// Concurrency is how many steps this node runs at once. Default 8.
	Concurrency int
	// Lease is the queue lease. Default 30s.
	Lease time.Duration
	// MaxAttempts is how often a step is tried before the execution is
	// dead-lettered. Default 5.
	MaxAttempts int
	// Retry is the backoff between attempts; default workqueue.DefaultBackoff().
	Retry workqueue.RetryPolicy
	// EventsTopic carries execution events. Default Queue + "-events".
	EventsTopic string
	// ResultsQueue, if set, receives one completion record per execution
	// (message ID "execution:done"; see the package doc).
	ResultsQueue string
	// IndexSize bounds the executions remembered for Status. Default 10000.
	IndexSize int
	// DrainGrace is how long Stop lets running steps finish. Default 0.
	DrainGrace time.Duration
}

// WithDefaults returns c with zero fields set.
func (c Config) WithDefaults() Config {
	if c.Queue == "" {
		c.Queue = "flows"
	}
	if c.Concurrency == 0 {
		c.Concurrency = 8
	}
	if c.Lease == 0 {
		c.Lease = 30 * time.Second
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 5
	}
	if c.EventsTopic == "" {
		c.EventsTopic = c.Queue + "-events"
	}
	if c.IndexSize == 0 {
		c.IndexSize = 10000
	}
	return c
}

// Options are the engine's optional dependencies.
type Options struct {
	// NodeID names this node in events and step headers. Default a random ID.
	NodeID string
	// Gate, if set, must answer true for the node to take work (bus.Node.Serving).
	Gate func() bool
	// Admit, if set, is asked before each Submit; an error refuses the
	// submission (bus.Node.Admit refuses while the node is degraded; an
	// error matching adapters.ErrUnavailable answers 503 over HTTP).
	Admit func() error
	// Clock defaults to the real clock.
	Clock clockwork.Clock
	// Logger defaults to slog.Default(). The engine adds the node ID to
	// its lines, so pass one without it.
	Logger *slog.Logger
	// Registry receives the flow and queue metrics, if set.
	Registry prometheus.Registerer
	// HTTPClient is used by http steps; default http.DefaultClient.
	HTTPClient *http.Client
	// TracerProvider makes the submit and step spans; default
	// otel.GetTracerProvider(). Trace context crosses nodes in the queue
	// items' headers when the broker is wrapped with adapters/traced.
	TracerProvider trace.TracerProvider
	// Definitions, if set, is the cluster's catalog of deployed flow
	// definitions (named DefinitionsCatalog, opened with FirstWriteWins
	// ImmutableDefinition, started and stopped by the caller): the engine
	// compiles every version it holds or delivers, and Deploy, Rollback
	// and Undeploy write it. See the package doc.
	Definitions *catalog.Catalog
}

// item is a queue item: one step of one execution, with its recorded state.
type item struct {
	V          int             `json:"v"`
	Exec       string          `json:"exec"`
	Flow       string          `json:"flow"`
	Version    int             `json:"version"`
	Step       string          `json:"step"`
	Seq        int             `json:"seq"`
	Input      map[string]any  `json:"input,omitempty"`
	Vars       map[string]any  `json:"vars,omitempty"`
	Checkpoint json.RawMessage `json:"checkpoint,omitempty"`
	NotBefore  time.Time       `json:"not_before,omitzero"`
	Started    time.Time       `json:"started"`
	// Gen is the retry generation: Engine.Retry resumes a failed execution
	// with Gen + 1, and items of an older generation are dropped.
	Gen int `json:"gen,omitempty"`
	// Await marks the continuation of an await step: "signal" (released by
	// Engine.Signal) or "timeout" (the delayed timeout item).
	Await string `json:"await,omitempty"`
}

// id is the item's message ID: "execution:seq", with the retry generation
// ("execution:seq:rN") and an await's path ("execution:seq:timeout") when
// set, so that each is deduplicated apart from the others.
func (it *item) id() string {
	id := it.Exec + ":" + strconv.Itoa(it.Seq)
	if it.Gen > 0 {
		id += ":r" + strconv.Itoa(it.Gen)
	}
	if it.Await == awaitTimeout {
		id += ":timeout"
	}
	return id
}

// Result is the completion record enqueued on Config.ResultsQueue.
type Result struct {
	Execution string         `json:"execution"`
	Flow      string         `json:"flow"`
	Version   int            `json:"version"`
	Seq       int            `json:"seq"`
	Node      string         `json:"node"`
	Started   time.Time      `json:"started"`
	Completed time.Time      `json:"completed"`
	Output    map[string]any `json:"output"`
}

// Engine runs flow executions on a broker. Every node of a cluster runs one
// with the same Config and the same flows registered.
type Engine struct {
	b    adapters.Broker
	cfg  Config
	opts Options
	log  *slog.Logger
	idx  *index
	m    *metrics
	tr   trace.Tracer

	mu    sync.RWMutex
	flows map[string]map[int]*Flow
	rules map[string]*Rule
	// Deployed definitions (see deploy.go): the catalog, its watch, what
	// this node knows of each deployed flow, and the sync in progress.
	defs     *catalog.Catalog
	defStop  func()
	deployed map[string]*deployedFlow
	syncMu   sync.Mutex
	syncCh   chan struct{}
	worker   *workqueue.Worker
	sub      adapters.Subscription
	subStop  context.CancelFunc
	subDone  chan struct{}
	started  bool
	answers  sync.WaitGroup // catch-up replies being sent, catch-ups scheduled
	// A catch-up after a gap in the events: when the last was asked, and
	// whether one is scheduled.
	gapMu      sync.Mutex
	gapLast    time.Time
	gapPending bool
}

// New returns an engine; register flows, then Start it.
func New(b adapters.Broker, cfg Config, opts Options) (*Engine, error) {
	cfg = cfg.WithDefaults()
	if err := adapters.ValidateName("queue", cfg.Queue); err != nil {
		return nil, fmt.Errorf("flows: Config.Queue: %w", err)
	}
	if err := adapters.ValidateName("topic", cfg.EventsTopic); err != nil {
		return nil, fmt.Errorf("flows: Config.EventsTopic: %w", err)
	}
	if cfg.ResultsQueue != "" {
		if err := adapters.ValidateName("queue", cfg.ResultsQueue); err != nil {
			return nil, fmt.Errorf("flows: Config.ResultsQueue: %w", err)
		}
	}
	if cfg.IndexSize < 1 || cfg.Concurrency < 1 || cfg.MaxAttempts < 1 {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, "flows: config",
			"IndexSize %d, Concurrency %d, MaxAttempts %d: want each >= 1", cfg.IndexSize, cfg.Concurrency, cfg.MaxAttempts)
	}
	if opts.NodeID == "" {
		opts.NodeID = uuid.NewString()
	}
	if opts.Clock == nil {
		opts.Clock = clockwork.NewRealClock()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	opts.Logger = opts.Logger.With("node", opts.NodeID) // the engine's and its worker's lines
	e := &Engine{b: b, cfg: cfg, opts: opts, log: opts.Logger.With("component", "flows"),
		idx: newIndex(cfg.IndexSize), flows: map[string]map[int]*Flow{}, rules: map[string]*Rule{},
		defs: opts.Definitions, deployed: map[string]*deployedFlow{}}
	e.m = newMetrics(opts.Registry, e)
	if opts.TracerProvider == nil {
		opts.TracerProvider = otel.GetTracerProvider()
	}
	e.tr = opts.TracerProvider.Tracer("github.com/clusterbus/clusterbus/flows")
	w, err := workqueue.New(b, workqueue.Config{
		Queue: adapters.QueueConfig{Name: cfg.Queue, Lease: cfg.Lease, MaxAttempts: cfg.MaxAttempts,
			Dedupe: b.Capabilities().Dedupe.Available()},
		Concurrency: cfg.Concurrency,
		Retry:       cfg.Retry,
		DrainGrace:  cfg.DrainGrace,
		Gate:        opts.Gate,
	}, e.handle, workqueue.Options{Clock: opts.Clock, Logger: opts.Logger, Metrics: workqueue.NewMetrics(opts.Registry)})
	if err != nil {
		return nil, fmt.Errorf("flows: %w", err)
	}
	e.worker = w
	if e.defs != nil {
		e.watchDefinitions()
	}
	return e, nil
}

// Config returns the engine's configuration with defaults applied.
func (e *Engine) Config() Config { return e.cfg }

// Register adds a flow (validating it). Several versions of a flow may be
// registered; Submit uses the highest, running executions keep theirs.
func (e *Engine) Register(f *Flow) error {
	if err := f.Validate(); err != nil {
		return err
	}
	f = f.prepared()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.flows[f.Name] == nil {
		e.flows[f.Name] = map[int]*Flow{}
	}
	e.flows[f.Name][f.Version] = f
	e.m.initFlow(f)
	return nil
}

// RegisterRule adds a standalone rule. It can be evaluated with Evaluate,
// and submitted as an execution under its own name: a one-step flow whose
// output has the outcome under "outcome".
func (e *Engine) RegisterRule(r *Rule) error {
	if err := r.Compile(); err != nil {
		return fmt.Errorf("flows: %w", err)
	}
	if r.Version == 0 {
		r.Version = 1
	}
	f := &Flow{Name: r.Name, Version: r.Version, Source: "rule " + r.Name, Steps: []Step{{
		Name: "evaluate", Kind: "rule", Next: End, Run: ruleStep(r, nil, "outcome"),
	}}}
	if err := e.Register(f); err != nil {
		return err
	}
	e.mu.Lock()
	e.rules[r.Name] = r
	e.mu.Unlock()
	return nil
}

// Evaluate runs a registered standalone rule synchronously.
func (e *Engine) Evaluate(ctx context.Context, rule string, input map[string]any) (string, error) {
	e.mu.RLock()
	r, ok := e.rules[rule]
	e.mu.RUnlock()
	if !ok {
		return "", errorf(ErrRuleNotFound, "flows: evaluate", "no rule %q", rule)
	}
	return r.Evaluate(ctx, input, nil)
}

// LoadDir registers every flow and rule defined in the YAML files of dir.
// Nothing is registered if any file is bad; the error lists each problem
// with its file and line.
func (e *Engine) LoadDir(dir string) error {
	defs, err := CheckDir(dir)
	if err != nil {
		return err
	}
	for _, f := range defs.Flows {
		if err := e.Register(f); err != nil {
			return err
		}
	}
	for _, r := range defs.Rules {
		if err := e.RegisterRule(r); err != nil {
			return err
		}
	}
	return nil
}

// Flows lists the registered flows as "name@version", sorted.
func (e *Engine) Flows() []string {
	e.mu.RLock()
	defer e.mu.RUnlock()
	var out []string
	for n, vs := range e.flows {
		for v := range vs {
			out = append(out, fmt.Sprintf("%s@%d", n, v))
		}
	}
	sort.Strings(out)
	return out
}

func (e *Engine) lookup(name string, version int) (*Flow, bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	if f, ok, deployed := e.lookupDeployedLocked(name, version); deployed {
		return f, ok // the head, unless a version is named; none once undeployed
	}
	vs := e.flows[name]
	if version > 0 {
		f, ok := vs[version]
		return f, ok
	}
	var best *Flow
	for _, f := range vs {
		if best == nil || f.Version > best.Version {
			best = f
		}
	}
	return best, best != nil
}

// SubmitOption tunes Submit.
type SubmitOption func(*submitOpts)

type submitOpts struct {
	id      string
	version int
}

// WithExecutionID sets the execution ID instead of a random one. On a
// broker with dedupe, submitting the same ID twice within the dedupe window
// starts one execution.
func WithExecutionID(id string) SubmitOption { return func(o *submitOpts) { o.id = id } }

// WithVersion runs a given version of the flow instead of the highest.
func WithVersion(v int) SubmitOption { return func(o *submitOpts) { o.version = v } }

// Submit starts an execution of the named flow and returns its ID. The
// execution is durable once Submit returns.
func (e *Engine) Submit(ctx context.Context, flow string, input map[string]any, opts ...SubmitOption) (string, error) {
	var o submitOpts
	for _, fn := range opts {
		fn(&o)
	}
	if e.opts.Admit != nil {
		if err := e.opts.Admit(); err != nil {
			return "", fmt.Errorf("flows: submit: %w", err)
		}
	}
	if e.defs != nil {
		e.mu.RLock()
		started := e.started
		e.mu.RUnlock()
		if !started {
			return "", adapters.Errorf(adapters.ErrUnavailable, "flows: submit", "the flow engine on node %s is not running yet", e.opts.NodeID)
		}
	}
	f, ok := e.lookup(flow, o.version)
	if !ok {
		f, ok = e.fetchFlow(ctx, flow, o.version) // deployed elsewhere a moment ago?
	}
	if !ok {
		return "", errorf(ErrFlowNotFound, "flows: submit", "no flow %q (version %d); registered: %s",
			flow, o.version, strings.Join(e.Flows(), ", "))
	}
	if o.id == "" {
		o.id = uuid.NewString()
	}
	if strings.ContainsAny(o.id, ":\r\n\x00") || len(o.id) > 100 {
		return "", adapters.Errorf(adapters.ErrInvalidArgument, "flows: submit", "execution ID %q: at most 100 bytes, no ':'", o.id)
	}
	if input == nil {
		input = map[string]any{}
	}
	now := e.opts.Clock.Now()
	it := &item{V: 1, Exec: o.id, Flow: f.Name, Version: f.Version, Step: f.Start, Seq: 0, Input: input,
		Vars: map[string]any{}, Started: now}
	ctx, span := e.tr.Start(ctx, "flow submit "+f.Name, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("clusterbus.flow", f.Name), attribute.Int("clusterbus.flow.version", f.Version),
			attribute.String("clusterbus.execution", o.id), attribute.String("clusterbus.node", e.opts.NodeID)))
	defer span.End()
	if err := e.enqueue(ctx, it); err != nil {
		span.SetStatus(codes.Error, err.Error())
		return "", err
	}
	e.publish(ctx, Event{Type: EventStarted, Execution: it.Exec, Flow: it.Flow, Version: it.Version, Step: it.Step, Node: e.opts.NodeID, Time: now})
	e.log.Info("flows: execution started", "flow", it.Flow, "version", it.Version, "execution", it.Exec, "trace_id", traceID(ctx))
	return o.id, nil
}

// Status says where execution id is, from this node's index of events.
// It returns an error matching adapters.ErrNotFound if this node has heard
// nothing of it: never submitted, forgotten, or silent since well before
// this node started (the catch-up at Start covers the last 15 minutes).
func (e *Engine) Status(ctx context.Context, id string) (Status, error) {
	s, ok := e.idx.get(id)
	if !ok {
		return Status{}, adapters.Errorf(adapters.ErrNotFound, "flows: status", "no execution %q known to this node", id)
	}
	return s, nil
}

// Start subscribes to the events topic, declares the queues and starts
// taking steps.
func (e *Engine) Start(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.started {
		return adapters.Errorf(adapters.ErrInvalidArgument, "flows: start", "already started")
	}
	if e.cfg.ResultsQueue != "" {
		if err := e.b.DeclareQueue(ctx, adapters.QueueConfig{Name: e.cfg.ResultsQueue,
			Dedupe: e.b.Capabilities().Dedupe.Available()}); err != nil {
			return fmt.Errorf("flows: declare results queue: %w", err)
		}
	}
	sub, err := e.b.Subscribe(ctx, e.cfg.EventsTopic)
	if err != nil {
		return fmt.Errorf("flows: subscribe to events: %w", err)
	}
	e.requestCatchUp(ctx)
	if err := e.worker.Start(ctx); err != nil {
		sub.Close()
		return fmt.Errorf("flows: %w", err)
	}
	e.sub = sub
	sctx, cancel := context.WithCancel(context.Background())
	e.subStop, e.subDone = cancel, make(chan struct{})
	go e.eventLoop(sctx, sub)
	e.started = true
	e.log.Info("flows: engine started", "queue", e.cfg.Queue, "flows", strings.Join(e.flowsLocked(), ","))
	return nil
}

func (e *Engine) flowsLocked() []string {
	var out []string
	for n, vs := range e.flows {
		for v := range vs {
			out = append(out, fmt.Sprintf("%s@%d", n, v))
		}
	}
	sort.Strings(out)
	return out
}

// Stop drains the worker (see workqueue.Worker.Stop) and ends the events
// subscription.
func (e *Engine) Stop(ctx context.Context) error {
	if e.defStop != nil {
		e.defStop()
	}
	e.mu.Lock()
	if !e.started {
		e.mu.Unlock()
		return nil
	}
	e.started = false
	e.mu.Unlock()
	err := e.worker.Stop(ctx)
	e.subStop()
	e.sub.Close()
	<-e.subDone
	e.answers.Wait()
	return err
}

func (e *Engine) eventLoop(ctx context.Context, sub adapters.Subscription) {
	defer close(e.subDone)
	for {
		m, err := sub.Receive(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, adapters.ErrClosed) {
				return
			}
			if errors.Is(err, adapters.ErrGap) {
				// Statuses here may be stale (an execution "running" that
				// ended meanwhile): ask the others again, as at start.
				e.log.Info("flows: events may have been missed; catching up from the other nodes", "err", err)
				e.catchUpAfterGap(ctx)
				continue
			}
			e.log.Warn("flows: events subscription", "err", err)
			e.catchUpAfterGap(ctx)
			t := e.opts.Clock.NewTimer(time.Second)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.Chan():
			}
			continue
		}
		if m.Headers[headerSync] != "" {
			e.handleSync(ctx, m)
			continue
		}
		var ev Event
		if err := json.Unmarshal(m.Body, &ev); err != nil || ev.Execution == "" {
			e.log.Warn("flows: dropping an event that does not decode", "err", err)
			continue
		}
		e.idx.apply(ev)
	}
}

func (e *Engine) enqueue(ctx context.Context, it *item) error {
	body, err := json.Marshal(it)
	if err != nil {
		return workqueue.Permanent(fmt.Errorf("flows: encode state of %s: %w", it.id(), err))
	}
	err = e.b.Enqueue(ctx, e.cfg.Queue, adapters.Message{ID: it.id(), Key: it.Exec, Body: body})
	if errors.Is(err, adapters.ErrTooLarge) || errors.Is(err, adapters.ErrInvalidArgument) {
		return workqueue.Permanent(fmt.Errorf("flows: record state of %s: %w", it.id(), err))
	}
	if err != nil {
		return fmt.Errorf("flows: record state of %s: %w", it.id(), err)
	}
	return nil
}

func (e *Engine) publish(ctx context.Context, ev Event) {
	if ev.ID == "" {
		ev.ID = uuid.NewString()
	}
	e.idx.apply(ev)
	body, err := json.Marshal(ev)
	if err != nil {
		e.log.Warn("flows: encode event", "err", err)
		return
	}
	if err := e.b.Publish(ctx, e.cfg.EventsTopic, adapters.Message{Body: body}); err != nil {
		e.log.Warn("flows: publish event", "type", ev.Type, "execution", ev.Execution, "err", err)
	}
}

// handle runs one step: the workqueue handler. What to do is decided by
// admit (before the step) and transition (after it); handle gathers their
// inputs and carries their decisions out.
func (e *Engine) handle(ctx context.Context, job *workqueue.Job) error {
	var it item
	if err := decodeItem(job.Message.Body, &it); err != nil || it.V != 1 || it.Exec == "" {
		if err == nil {
			err = fmt.Errorf("want a flow item (v 1 with exec), got v %d exec %q", it.V, it.Exec)
		}
		e.log.Warn("flows: dead-lettering an item that does not decode", "id", job.Message.ID, "err", err)
		return workqueue.Permanent(fmt.Errorf("flows: item %q does not decode: %w", job.Message.ID, err))
	}
	now := e.opts.Clock.Now()
	switch a := admit(&it, e.boundary(&it), now); a.Verdict {
	case admitDrop:
		// A repeat: the step at this sequence already recorded its
		// continuation (or the completion), but its item was not
		// acknowledged (a crash in between), or it is a copy from a fork,
		// or the losing path of an await. Running it again would fork the
		// execution on a broker without dedupe; drop it.
		e.log.Info("flows: dropping an item", "item", it.id(), "attempt", job.Attempt, "why", a.Why)
		return nil
	case admitDefer:
		return workqueue.RetryAfter(a.Delay, errNotDue)
	case admitCancel:
		return e.settle(ctx, &it, job, nil, nil, decision{Kind: decCancel, State: StateCancelled}, stepTimes{})
	}
	// The step continues the trace of whoever enqueued it: the submission
	// or the step before, on whichever node.
	ctx, span := e.tr.Start(traced.Context(ctx, job.Message), "flow step "+it.Flow+"/"+it.Step,
		trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
			attribute.String("clusterbus.flow", it.Flow), attribute.String("clusterbus.step", it.Step),
			attribute.String("clusterbus.execution", it.Exec), attribute.Int("clusterbus.seq", it.Seq),
			attribute.Int("clusterbus.attempt", job.Attempt), attribute.String("clusterbus.node", e.opts.NodeID)))
	defer span.End()
	f, ok := e.lookup(it.Flow, it.Version)
	if !ok && e.defs != nil {
		// A version deployed a moment ago, or while this node was away:
		// fetch it, else try again later (never dead-letter for that).
		if f, ok = e.fetchFlow(ctx, it.Flow, it.Version); !ok {
			return e.definitionMissing(ctx, job, &it)
		}
	}
	var s *Step
	if ok {
		s, ok = f.step(it.Step)
	}
	if !ok {
		err := errorf(ErrFlowNotFound, "flows: "+it.id(), "flow %q version %d step %q is not registered on node %s", it.Flow, it.Version, it.Step, e.opts.NodeID)
		d := failure(err, stepResult{Attempt: job.Attempt, MaxAttempts: job.MaxAttempts, Draining: e.draining(ctx)})
		return e.settle(ctx, &it, job, f, s, d, stepTimes{Start: now, End: now})
	}
	if it.Vars == nil {
		it.Vars = map[string]any{}
	}
	sc := &StepContext{Execution: it.Exec, Flow: it.Flow, Version: it.Version, Step: it.Step, Seq: it.Seq,
		Attempt: job.Attempt, IdempotencyKey: it.Exec + ":" + it.Step + ":" + strconv.Itoa(it.Seq),
		Node: e.opts.NodeID, Input: it.Input, Vars: maps.Clone(it.Vars), Token: job.Token(),
		LeaseDeadline: job.Lease.Deadline(), checkpoint: it.Checkpoint, lease: job.Lease, engine: e}
	times := stepTimes{Start: e.opts.Clock.Now()}
	out, err := s.Run(ctx, sc)
	times.End = e.opts.Clock.Now()
	e.m.stepDuration.WithLabelValues(it.Flow, it.Step).Observe(times.End.Sub(times.Start).Seconds())
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	run := it
	run.Vars = sc.Vars
	d := transition(&run, f, s, stepResult{Out: out, Err: err, Attempt: job.Attempt, MaxAttempts: job.MaxAttempts,
		LeaseLost: !job.Lease.Valid(), Draining: e.draining(ctx), Now: e.opts.Clock.Now()})
	return e.settle(ctx, &it, job, f, s, d, times)
}

// stepTimes are when a step's run began and ended.
type stepTimes struct{ Start, End time.Time }

func (e *Engine) draining(ctx context.Context) bool {
	return errors.Is(context.Cause(ctx), workqueue.ErrDraining)
}

// settle carries out decision d for item it, whose step ran as times say,
// and returns what the handler returns to the queue.
func (e *Engine) settle(ctx context.Context, it *item, job *workqueue.Job, f *Flow, s *Step, d decision, times stepTimes) error {
	ev := Event{Execution: it.Exec, Flow: it.Flow, Version: it.Version, Step: it.Step, Seq: it.Seq,
		Attempt: job.Attempt, Node: e.opts.NodeID, Duration: times.End.Sub(times.Start)}
	switch d.Kind {
	case decAbandon:
		return d.Err
	case decRetry, decFail, decDeadLetter:
		e.failed(ctx, ev, job, d)
		return d.Err
	case decCancel, decPark:
		// Recorded in the executions catalog (see control.go).
		return nil
	case decComplete:
		if err := e.complete(ctx, it, d.Next, job); err != nil {
			return err
		}
		ev.Type, ev.Next, ev.Time = EventStepDone, End, e.opts.Clock.Now()
		e.publish(ctx, ev)
		e.publish(ctx, Event{Type: EventCompleted, Execution: it.Exec, Flow: it.Flow, Version: it.Version,
			Step: it.Step, Seq: it.Seq, Attempt: job.Attempt, Node: e.opts.NodeID, Time: e.opts.Clock.Now(), Output: d.Next.Vars})
		e.m.executions.WithLabelValues(it.Flow, OutcomeCompleted).Inc()
		e.log.Info("flows: execution completed", "flow", it.Flow, "version", it.Version, "execution", it.Exec,
			"steps", it.Seq+1, "took", e.opts.Clock.Since(it.Started), "trace_id", traceID(ctx))
		return nil
	}
	// decContinue
	if err := e.enqueue(ctx, d.Next); err != nil {
		return err
	}
	ev.Type, ev.Next, ev.Time = EventStepDone, d.Next.Step, e.opts.Clock.Now()
	e.publish(ctx, ev)
	return nil
}

// boundary gathers what this node knows of it's execution for admit.
func (e *Engine) boundary(it *item) boundary {
	var b boundary
	if e.idx.recorded(it.Exec, it.Seq) {
		b.Known, b.RecordedSeq = true, it.Seq+1
	}
	return b
}

var errNotDue = errors.New("flows: waiting")

// complete records the completion: one record on the results queue (ID
// "execution:done", dropped as a duplicate where the broker dedupes).
func (e *Engine) complete(ctx context.Context, it, next *item, job *workqueue.Job) error {
	if e.cfg.ResultsQueue == "" {
		return nil
	}
	r := Result{Execution: it.Exec, Flow: it.Flow, Version: it.Version, Seq: it.Seq, Node: e.opts.NodeID,
		Started: it.Started, Completed: e.opts.Clock.Now(), Output: next.Vars}
	body, err := json.Marshal(r)
	if err != nil {
		return workqueue.Permanent(fmt.Errorf("flows: encode result of %s: %w", it.Exec, err))
	}
	if !job.Lease.Valid() {
		return fmt.Errorf("flows: %s: lease lost before completion could be recorded: %w", it.id(), adapters.ErrLeaseLost)
	}
	if err := e.b.Enqueue(ctx, e.cfg.ResultsQueue, adapters.Message{ID: it.Exec + ":done", Key: it.Exec, Body: body}); err != nil {
		return fmt.Errorf("flows: record completion of %s: %w", it.Exec, err)
	}
	return nil
}

// failed publishes the event that matches what the workqueue will do with d.Err.
func (e *Engine) failed(ctx context.Context, ev Event, job *workqueue.Job, d decision) {
	ev.Error, ev.Time = d.Err.Error(), e.opts.Clock.Now()
	switch d.Kind {
	case decFail:
		ev.Type = EventFailed
	case decDeadLetter:
		ev.Type = EventDeadLettered
	default:
		ev.Type = EventRetried
	}
	e.publish(context.WithoutCancel(ctx), ev)
	if ev.Type != EventRetried {
		flow := ev.Flow
		if _, ok := e.lookup(flow, 0); !ok {
			flow = "(unregistered)" // a label per name a peer makes up would grow without bound
		}
		e.m.executions.WithLabelValues(flow, string(ev.Type)).Inc()
		e.log.Info("flows: execution failed", "flow", ev.Flow, "version", ev.Version, "execution", ev.Execution,
			"outcome", ev.Type, "step", ev.Step, "attempt", ev.Attempt, "err", d.Err, "trace_id", traceID(ctx))
	}
}

// traceID is the trace of ctx, "" if none.
func traceID(ctx context.Context) string {
	if sc := trace.SpanContextFromContext(ctx); sc.HasTraceID() {
		return sc.TraceID().String()
	}
	return ""
}

func decodeItem(b []byte, it *item) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(it); err != nil {
		return err
	}
	var err error
	if it.Input, err = normalize(it.Input); err != nil {
		return err
	}
	it.Vars, err = normalize(it.Vars)
	return err
}
