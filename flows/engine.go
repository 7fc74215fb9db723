package flows

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
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
	// ResultsQueue, if set, receives one completion record per execution
	// (message ID "execution:done"; see the package doc).
	ResultsQueue string
	// Cluster names the executions catalog's topic,
	// "<Cluster>-catalog-executions" (see package catalog). Default Queue.
	Cluster string
	// DataDir is where this node keeps its copy of the executions catalog
	// ("" keeps it in memory: on a broker that cannot retain it, history
	// then lives only as long as some node runs).
	DataDir string
	// Retention is how long the record of an ended execution is kept.
	// Default 7 days.
	Retention time.Duration
	// MaxRecords bounds the executions catalog (records, cancel requests
	// and parks): past nine tenths of it, the records of the executions
	// that ended longest ago are dropped early. Default 100000.
	MaxRecords int
	// DrainGrace is how long Stop lets running steps finish. Default 0.
	DrainGrace time.Duration
}

// catalogSuffix is what package catalog appends to Config.Cluster to name
// the executions catalog's topic.
const catalogSuffix = "-catalog-executions"

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
	if c.Cluster == "" {
		c.Cluster = c.Queue
	}
	if c.Retention == 0 {
		c.Retention = 7 * 24 * time.Hour
	}
	if c.MaxRecords == 0 {
		c.MaxRecords = catalog.DefaultMaxEntries
	}
	return c
}

// Options are the engine's optional dependencies.
type Options struct {
	// NodeID names this node in execution records and step headers. Default a random ID.
	NodeID string
	// Settings, if set, gives the cluster settings that CEL expressions see
	// as "settings" (bus.Node.Settings().Map); called once per step that
	// evaluates CEL.
	Settings func() map[string]string
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
	// Executions, if set, is the executions catalog (not started: the
	// engine starts and stops it; its Expire is the caller's, so
	// Config.Retention and MaxRecords do not apply). Default one the
	// engine opens on the broker from Config.Cluster, DataDir, Retention
	// and MaxRecords.
	Executions *catalog.Catalog
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
	// Refresh counts the fresh copies of an item that waits longer than
	// its attempts allow (see handle).
	Refresh int `json:"refresh,omitempty"`
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
	if it.Refresh > 0 {
		id += "~w" + strconv.Itoa(it.Refresh)
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
	m    *metrics
	tr   trace.Tracer
	cat  *catalog.Catalog // the executions catalog
	rec  *recorder

	// beforePut, if set (by tests), runs between the read and the put of
	// a read-modify-write of the executions catalog (recorder.write,
	// updatePark).
	beforePut func(key string)

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
	answers  sync.WaitGroup // definition syncs in progress
	worker   *workqueue.Worker
	started  bool
	// catStarted: the executions catalog, its watch and the recorder run.
	catStarted bool
	stop       context.CancelFunc // the recorder's
	done       chan struct{}      // closed when the recorder has flushed
	unwatch    func()

	// runMu guards running: the cancel functions of the steps running on
	// this node, by execution.
	runMu   sync.Mutex
	running map[string]map[*int]context.CancelCauseFunc
}

// New returns an engine; register flows, then Start it.
func New(b adapters.Broker, cfg Config, opts Options) (*Engine, error) {
	cfg = cfg.WithDefaults()
	if err := adapters.ValidateName("queue", cfg.Queue); err != nil {
		return nil, fmt.Errorf("flows: Config.Queue: %w", err)
	}
	if cfg.ResultsQueue != "" {
		if err := adapters.ValidateName("queue", cfg.ResultsQueue); err != nil {
			return nil, fmt.Errorf("flows: Config.ResultsQueue: %w", err)
		}
	}
	if cfg.MaxRecords < 1 || cfg.Concurrency < 1 || cfg.MaxAttempts < 1 || cfg.Retention < 0 {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, "flows: config",
			"MaxRecords %d, Concurrency %d, MaxAttempts %d: want each >= 1; Retention %s: want >= 0",
			cfg.MaxRecords, cfg.Concurrency, cfg.MaxAttempts, cfg.Retention)
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
	if len(cfg.Cluster)+len(catalogSuffix) > 64 {
		// A long queue name: the catalog's topic keeps a prefix and a hash.
		sum := sha256.Sum256([]byte(cfg.Cluster))
		cfg.Cluster = cfg.Cluster[:64-len(catalogSuffix)-9] + "-" + hex.EncodeToString(sum[:4])
	}
	e := &Engine{b: b, cfg: cfg, opts: opts, log: opts.Logger.With("component", "flows"),
		flows: map[string]map[int]*Flow{}, rules: map[string]*Rule{}, running: map[string]map[*int]context.CancelCauseFunc{},
		defs: opts.Definitions, deployed: map[string]*deployedFlow{}}
	e.rec = newRecorder(e, nil)
	e.cat = opts.Executions
	if e.cat == nil {
		cat, err := catalog.Open(b, catalog.Config{Cluster: cfg.Cluster, NodeID: opts.NodeID, Name: "executions",
			Dir: cfg.DataDir, MaxEntries: cfg.MaxRecords, Expire: expireFunc(cfg.Retention, &e.rec.cutoff),
			Registerer: opts.Registry, Logger: opts.Logger, Clock: opts.Clock})
		if err != nil {
			return nil, fmt.Errorf("flows: executions catalog: %w", err)
		}
		e.cat = cat
	}
	e.rec.cat = e.cat
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
	if e.undeployed(flow) {
		return "", errorf(ErrFlowNotFound, "flows: submit", "flow %q is undeployed (clusterbus flow rollback or deploy brings it back)", flow)
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
	// Recorded off the submission's path; Status and the control
	// operations on this node write it first if it is still queued.
	e.rec.update(it.Exec, func(r *record) {
		if r.Flow == "" {
			r.Flow, r.Version, r.Step, r.Started, r.Node = it.Flow, it.Version, it.Step, now, e.opts.NodeID
		}
	})
	e.log.Info("flows: execution started", "flow", it.Flow, "version", it.Version, "execution", it.Exec, "trace_id", traceID(ctx))
	return o.id, nil
}

// Status returns execution id's record (with its step history) from this
// node's copy of the executions catalog; if it has none, it asks the other
// nodes first (for up to a second). It returns an error matching
// ErrExecutionNotFound if no node has a record: never submitted, or ended
// longer ago than Config.Retention.
func (e *Engine) Status(ctx context.Context, id string) (Status, error) {
	r, err := e.record(ctx, id)
	if err != nil {
		return Status{}, err
	}
	return r.Status, nil
}

// record returns the execution's record, syncing the catalog once if this
// node has none.
func (e *Engine) record(ctx context.Context, id string) (*record, error) {
	if e.rec.hasPending(id) {
		if r, err := e.rec.updateNow(ctx, id, nil); err == nil {
			return r, nil
		}
	}
	if r := e.rec.get(id); r != nil {
		return r, nil
	}
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	_ = e.cat.Sync(sctx)
	cancel()
	if r := e.rec.get(id); r != nil {
		return r, nil
	}
	return nil, errorf(ErrExecutionNotFound, "flows", "no record of execution %q", id)
}

// Start starts the executions catalog, declares the queues and starts
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
	// Started once, and kept running if the worker does not start, so that
	// a caller that retries Start finds it running.
	if err := e.startRecordsLocked(ctx); err != nil {
		return err
	}
	if err := e.worker.Start(ctx); err != nil {
		return fmt.Errorf("flows: %w", err)
	}
	e.started = true
	e.log.Info("flows: engine started", "queue", e.cfg.Queue, "flows", strings.Join(e.flowsLocked(), ","))
	return nil
}

// StartRecords starts the executions catalog without taking steps (Start
// does it too): a node that runs no step yet (no flow deployed) can answer
// Status, History and List and take Cancel, Retry and Signal. Stop stops it.
func (e *Engine) StartRecords(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.startRecordsLocked(ctx)
}

func (e *Engine) startRecordsLocked(ctx context.Context) error {
	if e.catStarted {
		return nil
	}
	unwatch := e.cat.Watch(e.watched)
	if err := e.cat.Start(ctx); err != nil {
		unwatch()
		return fmt.Errorf("flows: executions catalog: %w", err)
	}
	e.catStarted, e.unwatch = true, unwatch
	for _, en := range e.cat.List(prefixRecord) {
		e.rec.index(en) // what the catalog loaded before the watch saw it
	}
	rctx, stop := context.WithCancel(context.Background())
	e.stop, e.done = stop, make(chan struct{})
	go func() {
		defer close(e.done)
		e.rec.run(rctx)
	}()
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

// Stop drains the worker (see workqueue.Worker.Stop), writes the execution
// records still queued and stops the executions catalog.
func (e *Engine) Stop(ctx context.Context) error {
	if e.defStop != nil {
		e.defStop()
	}
	e.mu.Lock()
	started, catStarted := e.started, e.catStarted
	e.started, e.catStarted = false, false
	e.mu.Unlock()
	var err error
	if started {
		err = e.worker.Stop(ctx)
	}
	e.answers.Wait()
	if !catStarted {
		return err
	}
	e.stop()
	<-e.done
	e.unwatch()
	return errors.Join(err, e.cat.Stop(ctx))
}

// watched follows the executions catalog: a cancel request cancels the
// execution's steps running here; a record that lost this node's write is
// written again.
func (e *Engine) watched(en catalog.Entry) {
	switch {
	case strings.HasPrefix(en.Key, prefixCancel) && !en.Deleted:
		var c cancelRequest
		var x struct {
			Execution string `json:"execution"`
		}
		_ = json.Unmarshal(en.Value, &c)
		if json.Unmarshal(en.Value, &x) != nil || x.Execution == "" {
			return
		}
		e.cancelRunning(x.Execution, c.Reason)
	case strings.HasPrefix(en.Key, prefixRecord):
		e.rec.index(en)
		if en.Deleted || en.Rev.Node == e.opts.NodeID {
			return
		}
		var x struct {
			Execution string `json:"execution"`
		}
		if json.Unmarshal(en.Value, &x) == nil && x.Execution != "" {
			e.rec.watched(x.Execution, en)
		}
	}
}

// cancelRunning cancels the contexts of execution id's steps running here.
func (e *Engine) cancelRunning(id, reason string) {
	e.runMu.Lock()
	defer e.runMu.Unlock()
	for _, cancel := range e.running[id] {
		cancel(fmt.Errorf("%w: %s", ErrCancelled, reason))
	}
}

// track registers a running step's cancel function; the returned func
// unregisters it.
func (e *Engine) track(id string, cancel context.CancelCauseFunc) func() {
	k := new(int)
	e.runMu.Lock()
	if e.running[id] == nil {
		e.running[id] = map[*int]context.CancelCauseFunc{}
	}
	e.running[id][k] = cancel
	e.runMu.Unlock()
	return func() {
		e.runMu.Lock()
		delete(e.running[id], k)
		if len(e.running[id]) == 0 {
			delete(e.running, id)
		}
		e.runMu.Unlock()
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
	// Tracked from here, so that a cancel request that arrives after the
	// boundary's check still reaches the step.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer e.track(it.Exec, cancel)()
	now := e.opts.Clock.Now()
	switch a := admit(&it, e.boundary(&it), now); a.Verdict {
	case admitDrop:
		// A repeat: the step at this sequence already recorded its
		// continuation (or the completion), but its item was not
		// acknowledged (a crash in between), or it is a copy from a fork,
		// an item of an ended execution or the losing path of an await.
		// Running it again would fork the execution on a broker without
		// dedupe; drop it.
		e.log.Info("flows: dropping an item", "item", it.id(), "attempt", job.Attempt, "why", a.Why)
		return nil
	case admitDefer:
		if job.Attempt >= job.MaxAttempts && job.MaxAttempts > 1 && e.b.Capabilities().DelayedNack.Available() {
			// Its last attempt, still not due (a wait or an await's
			// timeout longer than the broker's longest delay times the
			// attempts): a fresh copy with fresh attempts replaces it. Its
			// ID is the same for every node that does this at this point,
			// so a crash-repeat is deduplicated where the broker can.
			cp := it
			cp.Refresh++
			if err := e.enqueue(ctx, &cp); err != nil {
				return err
			}
			e.log.Debug("flows: a waiting item used up its attempts; a fresh copy replaces it", "item", it.id(), "copy", cp.id(), "due_in", a.Delay)
			return nil
		}
		return workqueue.RetryAfter(a.Delay, errNotDue)
	case admitCancel:
		return e.settle(ctx, &it, job, decision{Kind: decCancel, State: StateCancelled}, stepTimes{})
	case admitClaim:
		winner, err := e.claimTimeout(ctx, &it)
		if err != nil {
			return err
		}
		if winner != awaitTimeout {
			e.log.Info("flows: dropping an item", "item", it.id(), "attempt", job.Attempt,
				"why", "the await was resolved by "+winner+" before its timeout")
			return nil
		}
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
		return e.settle(ctx, &it, job, d, stepTimes{Start: now, End: now})
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
	cancelled, reason := e.cancelRequested(it.Exec)
	d := transition(&run, f, s, stepResult{Out: out, Err: err, Attempt: job.Attempt, MaxAttempts: job.MaxAttempts,
		LeaseLost: !job.Lease.Valid() && !cancelled, Draining: e.draining(ctx), Cancelled: cancelled, CancelReason: reason,
		Now: e.opts.Clock.Now()})
	return e.settle(ctx, &it, job, d, times)
}

// stepTimes are when a step's run began and ended.
type stepTimes struct{ Start, End time.Time }

func (e *Engine) draining(ctx context.Context) bool {
	return errors.Is(context.Cause(ctx), workqueue.ErrDraining)
}

// cancelRequested reports whether execution id has a cancel request, and
// its reason.
func (e *Engine) cancelRequested(id string) (bool, string) {
	en, ok := e.cat.Get(keyOf(prefixCancel, id))
	if !ok {
		return false, ""
	}
	var c cancelRequest
	_ = json.Unmarshal(en.Value, &c)
	return true, c.Reason
}

// getPark returns execution id's await park, nil if none.
func (e *Engine) getPark(id string) *park {
	en, ok := e.cat.Get(keyOf(prefixAwait, id))
	if !ok {
		return nil
	}
	var p park
	if json.Unmarshal(en.Value, &p) != nil || p.Next == nil {
		return nil
	}
	return &p
}

// boundary gathers what this node knows of it's execution for admit.
func (e *Engine) boundary(it *item) boundary {
	var b boundary
	if state, seq, gen, ok := e.rec.summary(it.Exec); ok {
		b.Known, b.RecordedSeq, b.Gen = true, seq, gen
		b.Ended = state == StateCompleted || state == StateCancelled
	}
	b.Cancel, b.CancelReason = e.cancelRequested(it.Exec)
	if it.Await != "" {
		if p := e.getPark(it.Exec); p != nil && p.Seq == it.Seq && p.Gen == it.Gen {
			b.AwaitWinner = p.Winner
		}
	}
	return b
}

// claimTimeout resolves an await by its timeout, before the timeout's step
// runs (a signal that comes later is refused). It returns the await's
// winner: awaitTimeout, or the path that resolved it first.
func (e *Engine) claimTimeout(ctx context.Context, it *item) (string, error) {
	winner := awaitTimeout
	err := e.updatePark(ctx, it.Exec, func(p *park) (*park, error) {
		if p == nil {
			p = &park{Seq: it.Seq, Gen: it.Gen, Next: it}
		}
		if p.Seq == it.Seq && p.Gen == it.Gen && p.Winner != "" && p.Winner != awaitTimeout {
			winner = p.Winner
			return nil, nil
		}
		winner = awaitTimeout
		p.Winner, p.At = awaitTimeout, e.opts.Clock.Now()
		return p, nil
	})
	if err != nil {
		return "", fmt.Errorf("flows: %s: resolve the await by its timeout: %w", it.id(), err)
	}
	if winner != awaitTimeout {
		return winner, nil
	}
	e.rec.update(it.Exec, func(r *record) {
		if r.State == StateAwaiting {
			r.State, r.Await = StateRunning, nil
		}
	})
	return winner, nil
}

// updatePark is a read-modify-write of execution id's await park: fn gets
// the park (nil if none) and returns the park to write, or nil to write
// nothing. The write is made only over the park fn saw (catalog.PutIf):
// when another path's resolution lands in between, fn runs again on it, so
// that a signal, a timeout and a cancel never overwrite one another on a
// node that has seen the first.
func (e *Engine) updatePark(ctx context.Context, id string, fn func(*park) (*park, error)) error {
	key := keyOf(prefixAwait, id)
	for round := 1; ; round++ {
		var cur *park
		var prev catalog.Rev
		if en, ok := e.cat.Get(key); ok {
			prev = en.Rev
			var p park
			if json.Unmarshal(en.Value, &p) == nil && p.Next != nil {
				cur = &p
			}
		}
		next, err := fn(cur)
		if err != nil || next == nil {
			return err
		}
		body, err := json.Marshal(next)
		if err != nil {
			return err
		}
		if e.beforePut != nil {
			e.beforePut(key)
		}
		_, err = e.cat.PutIf(ctx, key, body, prev)
		if errors.Is(err, catalog.ErrChanged) && round < maxWriteRounds {
			continue
		}
		return err
	}
}

func (e *Engine) putJSON(ctx context.Context, key string, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = e.cat.Put(ctx, key, body)
	return err
}

// settle carries out decision d for item it, whose step ran as times say,
// and returns what the handler returns to the queue.
func (e *Engine) settle(ctx context.Context, it *item, job *workqueue.Job, d decision, times stepTimes) error {
	if d.Kind == decAbandon {
		return d.Err
	}
	now := e.opts.Clock.Now()
	step := StepRecord{Step: it.Step, Seq: it.Seq, Attempt: job.Attempt, Node: e.opts.NodeID, Outcome: d.Outcome,
		Started: times.Start, Ended: times.End, Duration: times.End.Sub(times.Start)}
	if d.Err != nil {
		step.Error = d.Err.Error()
	}
	base := func(r *record) {
		if it.Gen > r.Retries {
			// This node has not heard of the retry yet: its item has.
			r.Retries, r.State, r.Seq, r.Resume, r.Ended = it.Gen, StateRunning, it.Seq, nil, time.Time{}
		}
		if r.Flow == "" {
			r.Flow, r.Version, r.Started = it.Flow, it.Version, it.Started
		}
		if d.Outcome != "" && !times.Start.IsZero() {
			r.Steps = unionSteps(r.Steps, []StepRecord{step})
		}
		if !ended(r.State) || ended(d.State) {
			r.Node, r.Attempt = e.opts.NodeID, job.Attempt // not on a record another node ended
		}
	}
	// A step's result is recorded only while its lease is valid; a cancel
	// is recorded whatever the lease.
	bg := context.WithoutCancel(ctx)
	switch d.Kind {
	case decRetry:
		e.rec.update(it.Exec, func(r *record) {
			base(r)
			if r.Retries == it.Gen && r.Seq <= it.Seq && !ended(r.State) {
				r.State, r.Step, r.Seq, r.Error = StateRunning, it.Step, it.Seq, step.Error
			}
		})
		return d.Err
	case decFail, decDeadLetter:
		resume := *it
		resume.NotBefore, resume.Await, resume.Refresh = time.Time{}, "", 0
		e.countEnd(it.Flow, d.State) // before the record says so: a reader of both sees them agree
		_, err := e.rec.updateNow(bg, it.Exec, func(r *record) {
			base(r)
			if r.Retries > it.Gen || ended(r.State) && r.State != StateFailed && r.State != StateDeadLettered {
				return // a stale copy failed: the execution is elsewhere
			}
			r.State, r.Step, r.Seq, r.Error, r.Ended, r.Resume = d.State, it.Step, it.Seq, step.Error, now, &resume
		})
		if err != nil {
			e.log.Warn("flows: the failure is not recorded", "execution", it.Exec, "err", err)
		}
		e.log.Info("flows: execution failed", "flow", it.Flow, "version", it.Version, "execution", it.Exec,
			"outcome", d.State, "step", it.Step, "attempt", job.Attempt, "err", d.Err, "trace_id", traceID(ctx))
		return d.Err
	case decCancel:
		_, reason := e.cancelRequested(it.Exec)
		if _, err := e.rec.updateNow(bg, it.Exec, func(r *record) {
			base(r)
			r.State, r.Step, r.Seq, r.Reason, r.Ended, r.Await = StateCancelled, it.Step, max(r.Seq, it.Seq), reason, now, nil
		}); err != nil {
			return fmt.Errorf("flows: %s: record the cancellation: %w", it.id(), err)
		}
		e.countEnd(it.Flow, StateCancelled)
		e.log.Info("flows: execution cancelled", "flow", it.Flow, "execution", it.Exec, "step", it.Step, "reason", reason)
		return nil
	}
	if !job.Lease.Valid() {
		return fmt.Errorf("flows: %s: lease lost before the step could be recorded: %w", it.id(), adapters.ErrLeaseLost)
	}
	switch d.Kind {
	case decPark:
		p := park{Seq: d.Next.Seq, Gen: d.Next.Gen, Step: it.Step, Signal: d.Await.Signal, SaveAs: cmpOr(d.Await.SaveAs, it.Step),
			Next: d.Next, At: now}
		if d.Timeout != nil {
			p.Deadline = d.Timeout.NotBefore
		}
		resolved := false
		if err := e.updatePark(ctx, it.Exec, func(old *park) (*park, error) {
			resolved = old != nil && old.Seq == p.Seq && old.Gen == p.Gen && old.Winner != ""
			if resolved {
				return nil, nil
			}
			return &p, nil
		}); err != nil {
			return fmt.Errorf("flows: %s: park the execution: %w", it.id(), err)
		}
		if resolved {
			return nil // a repeat of a park that was resolved already
		}
		if _, err := e.rec.updateNow(ctx, it.Exec, func(r *record) {
			base(r)
			r.State, r.Step, r.Seq = StateAwaiting, it.Step, d.Next.Seq
			r.Await = &AwaitStatus{Step: it.Step, Signal: p.Signal, Deadline: p.Deadline}
		}); err != nil {
			return err
		}
		if d.Timeout != nil {
			if err := e.enqueue(ctx, d.Timeout); err != nil {
				return err
			}
		}
		return nil
	case decComplete:
		if err := e.complete(ctx, it, d.Next, job); err != nil {
			return err
		}
		e.countEnd(it.Flow, StateCompleted)
		if _, err := e.rec.updateNow(ctx, it.Exec, func(r *record) {
			base(r)
			r.State, r.Step, r.Seq, r.Output, r.Ended, r.Error = StateCompleted, it.Step, max(r.Seq, it.Seq), d.Next.Vars, now, ""
		}); err != nil {
			e.log.Warn("flows: the completion is not recorded in the execution's record", "execution", it.Exec, "err", err)
		}
		e.log.Info("flows: execution completed", "flow", it.Flow, "version", it.Version, "execution", it.Exec,
			"steps", it.Seq+1, "took", e.opts.Clock.Since(it.Started), "trace_id", traceID(ctx))
		return nil
	}
	// decContinue: the continuation is the recorded state; the record
	// follows, off the step's path.
	if err := e.enqueue(ctx, d.Next); err != nil {
		return err
	}
	e.rec.update(it.Exec, func(r *record) {
		base(r)
		if r.Retries == it.Gen && r.Seq <= d.Next.Seq && !ended(r.State) {
			r.State, r.Step, r.Seq, r.Error, r.Attempt = StateRunning, d.Next.Step, d.Next.Seq, "", 0
		}
	})
	return nil
}

// countEnd counts an execution that ended on this node.
func (e *Engine) countEnd(flow, state string) {
	if _, ok := e.lookup(flow, 0); !ok {
		flow = "(unregistered)" // a label per name a peer makes up would grow without bound
	}
	e.m.executions.WithLabelValues(flow, state).Inc()
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
