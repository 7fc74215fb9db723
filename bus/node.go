package bus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/catalog"
	"github.com/clusterbus/clusterbus/workqueue"
)

// Node states as carried in heartbeats and shown in the status.
const (
	StateStarting = "starting" // warming up: has not been up one FailureTimeout
	StateActive   = "active"   // in good standing: serving, may hold the lead
	StateDraining = "draining" // stopping: hands over the lead, takes no new work
	StateFenced   = "fenced"   // on a losing side of a split, or lost the broker
	StateDegraded = "degraded" // lost the broker under OnBrokerLoss "degrade": health 200, no lead, no work, caches bypassed
	StatePanic    = "panic"    // cluster panic: refuses to serve until restarted
	StateLeft     = "left"     // stopped gracefully
	// StateUnreachable is shown for a member whose heartbeats stopped
	// (failed, not yet forgotten); no node sends it.
	StateUnreachable = "unreachable"
)

// Option tunes New.
type Option func(*options)

type options struct {
	log    *slog.Logger
	clock  clockwork.Clock
	reg    prometheus.Registerer
	alerts func() []string
}

// WithLogger sets the logger; the node adds node=<id> to every line.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithAlerts adds the lines f returns to the "alerts" of /api/cluster and
// the status page (such as rejected messages, from adapters/signed).
func WithAlerts(f func() []string) Option { return func(o *options) { o.alerts = f } }

// WithClock sets the clock (a clockwork fake in tests).
func WithClock(c clockwork.Clock) Option { return func(o *options) { o.clock = c } }

// WithRegisterer registers the node's metrics there. If it is also a
// prometheus.Gatherer, Handler serves it on /metrics.
func WithRegisterer(r prometheus.Registerer) Option { return func(o *options) { o.reg = r } }

// Node is one member of a cluster. Create it with New, register duties,
// lead callbacks and cache regions, then Start it; Drain and Stop it on the
// way out. All methods are safe for concurrent use.
type Node struct {
	b     adapters.Broker
	cfg   Config
	log   *slog.Logger
	clock clockwork.Clock
	reg   prometheus.Registerer
	opts  options
	m     *metrics
	wqm   *workqueue.Metrics // the duty queue worker's, shared by its terms
	topic string
	inc   string
	start time.Time
	kick  chan struct{}
	// pubKick asks publishLoop for a heartbeat; a publish blocked by a
	// broker that does not answer must not hold up evaluate, which is
	// what turns health to 503 within the failure timeout.
	pubKick chan struct{}
	pubDone chan struct{} // a heartbeat publish finished
	pubMu   sync.Mutex    // serialises invalidation publishes so cseq order holds
	loopWG  sync.WaitGroup
	// ticks and handled count loop iterations, so tests on a fake clock
	// can tell when the node has caught up.
	ticks, handled atomic.Uint64

	mu         sync.Mutex
	started    bool
	stopped    bool
	stopCtx    context.Context
	stopFn     context.CancelFunc
	sub        adapters.Subscription
	ms         *membership
	senders    map[string]*sender // by incarnation
	seq        uint64
	cseq       uint64 // last invalidation seq assigned
	cseqPub    uint64 // last invalidation seq published
	maxTerm    uint64
	term       uint64 // held while leading
	leading    bool
	leadCancel context.CancelFunc
	leadWG     sync.WaitGroup
	lead       string
	state      string
	reason     string
	selfHeard  time.Time
	// connected is the last verdict on this node's own link; lostAt is
	// when it was last lost, and no member is taken for failed until one
	// failure timeout after holdUntil (set when the link comes back).
	connected bool
	lostAt    time.Time
	holdUntil time.Time
	// probe is the queue round trip that is part of "connected" (probe.go).
	probe      func(context.Context) error
	probeKick  chan struct{}
	probeOK    bool
	probeErr   error
	probeFails int
	// dupes is the evidence of another live incarnation of this node's
	// ID: when each was first and last heard. panicDup is set while that
	// evidence keeps the node in panic.
	dupes       map[string]*dupe
	panicDup    bool
	pubErrAt    time.Time
	pubErr      error
	panicReason string
	draining    bool
	servingCh   chan struct{}
	serving     bool
	regions     map[string][]func(keys []string)
	duties      map[string]*duty
	dutyDone    map[string]int64
	onGained    []func(ctx context.Context, term uint64)
	onLost      []func(term uint64)
	lastPublish time.Time
	obs         observed // what the console shows beyond membership (observe.go)
	// settings are the cluster settings; settingsUp once started.
	settings   *Settings
	settingsUp bool
}

// dupe is another incarnation of this node's ID, as heard.
type dupe struct {
	first, last time.Time
	hb          heartbeat
}

type sender struct{ last uint64 }

// New returns a node of the cluster cfg.Cluster on broker b. It validates
// cfg (errors match adapters.ErrInvalidArgument) and fills NodeID, Host and
// IP when empty. The node does nothing until Start.
func New(b adapters.Broker, cfg Config, opts ...Option) (*Node, error) {
	if b == nil {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, "bus: new", "nil broker")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	o := options{clock: clockwork.NewRealClock()}
	for _, opt := range opts {
		opt(&o)
	}
	if cfg.NodeID == "" {
		cfg.NodeID = NewNodeID()
	}
	cfg.detectHost()
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	if o.reg == nil {
		o.reg = prometheus.NewRegistry()
	}
	n := &Node{
		b:         b,
		cfg:       cfg,
		log:       o.log.With("node", cfg.NodeID),
		clock:     o.clock,
		reg:       o.reg,
		wqm:       workqueue.NewMetrics(o.reg),
		opts:      o,
		m:         newMetrics(o.reg),
		topic:     "clusterbus-" + cfg.Cluster,
		inc:       randomID(8),
		kick:      make(chan struct{}, 1),
		pubKick:   make(chan struct{}, 1),
		probeKick: make(chan struct{}, 1),
		pubDone:   make(chan struct{}, 1),
		ms:        newMembership(),
		dupes:     map[string]*dupe{},
		senders:   map[string]*sender{},
		state:     StateStarting,
		reason:    "not started",
		servingCh: make(chan struct{}),
		regions:   map[string][]func([]string){},
		duties:    map[string]*duty{},
		dutyDone:  map[string]int64{},
	}
	sc, err := catalog.Open(b, catalog.Config{Cluster: cfg.Cluster, NodeID: cfg.NodeID, Name: SettingsCatalog, Dir: cfg.DataDir,
		MaxEntries: 10000, MaxValueSize: MaxSettingValue, Registerer: o.reg, Logger: n.log, Clock: o.clock})
	if err != nil {
		return nil, fmt.Errorf("bus: new: cluster settings: %w", err)
	}
	n.settings = &Settings{c: sc}
	return n, nil
}

// NewNodeID returns a random node ID, what New uses when Config.NodeID is
// empty.
func NewNodeID() string { return randomID(8) }

func randomID(nbytes int) string {
	b := make([]byte, nbytes)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ID is this node's ID.
func (n *Node) ID() string { return n.cfg.NodeID }

// Config is the node's configuration with NodeID, Host and IP filled in.
func (n *Node) Config() Config { return n.cfg }

// Topic is the broadcast topic the node uses for its cluster.
func (n *Node) Topic() string { return n.topic }

// Start subscribes to the cluster topic and starts heartbeating. The node
// warms up for one FailureTimeout before it may serve or claim the lead.
func (n *Node) Start(ctx context.Context) error {
	n.mu.Lock()
	if n.started {
		n.mu.Unlock()
		return errors.New("bus: start: already started")
	}
	n.started = true
	settingsUp := n.settingsUp
	n.mu.Unlock()
	if !settingsUp {
		// First, so that a failure leaves the node as it was: Start may be
		// called again.
		if err := n.settings.c.Start(ctx); err != nil {
			n.mu.Lock()
			n.started = false
			n.mu.Unlock()
			return fmt.Errorf("bus: start: cluster settings: %w", err)
		}
		n.mu.Lock()
		n.settingsUp = true
		n.mu.Unlock()
	}
	n.mu.Lock()
	n.start = n.clock.Now()
	n.reason = "starting: warming up"
	n.stopCtx, n.stopFn = context.WithCancel(context.Background())
	n.mu.Unlock()

	sub, err := n.b.Subscribe(ctx, n.topic)
	if err != nil {
		// Not started: Start may be called again (the broker may not be
		// up yet).
		n.mu.Lock()
		n.started = false
		n.stopFn()
		n.mu.Unlock()
		return fmt.Errorf("bus: start: subscribe %q: %w", n.topic, err)
	}
	n.mu.Lock()
	n.sub = sub
	n.mu.Unlock()
	n.log.Info("node starting", "cluster", n.cfg.Cluster, "host", n.cfg.Host, "ip", n.cfg.IP,
		"heartbeat", n.cfg.HeartbeatInterval, "failure_timeout", n.cfg.FailureTimeout,
		"split_brain", n.cfg.SplitBrain, "broker", n.b.Capabilities().Name)
	t := n.clock.NewTicker(n.cfg.HeartbeatInterval)
	n.loopWG.Add(4)
	go n.receiveLoop(sub)
	go n.publishLoop()
	go n.tickLoop(t)
	go n.probeLoop()
	return nil
}

// Drain takes the node out of service: health answers 503, Serving turns
// false, the lead (if held) is handed over at once, and the other members
// are told. The node stays a member until Stop.
func (n *Node) Drain() {
	n.mu.Lock()
	already := n.draining
	n.draining = true
	n.mu.Unlock()
	if !already {
		n.log.Info("draining")
		n.poke()
	}
}

// Stop leaves the cluster: it drains, waits (until ctx is done) for lead
// duties to return, publishes a leave so the others drop the node at once,
// and ends the node's goroutines. It does not close the broker.
func (n *Node) Stop(ctx context.Context) error {
	n.mu.Lock()
	if !n.started || n.stopped {
		n.mu.Unlock()
		return nil
	}
	n.stopped = true
	n.draining = true
	n.mu.Unlock()

	n.poke()
	n.evaluate()      // drops the lead, cancels duties
	n.waitDuties(ctx) // lead duties see their context cancelled

	var err error
	if msg, e := n.heartbeatMessage(kindLeave); e == nil {
		err = n.b.Publish(ctx, n.topic, msg)
		if err != nil {
			err = fmt.Errorf("bus: stop: publish leave: %w", err)
		}
	}
	n.halt()
	n.log.Info("left the cluster")
	return err
}

// halt ends the goroutines without telling anyone (a crash, in tests).
func (n *Node) halt() {
	n.mu.Lock()
	n.stopped = true
	n.state, n.reason = StateLeft, "stopped"
	sub := n.sub
	stop := n.stopFn
	if n.leadCancel != nil {
		n.leadCancel()
	}
	n.setServingLocked(false)
	n.mu.Unlock()
	if stop != nil {
		stop()
	}
	if sub != nil {
		_ = sub.Close()
	}
	n.loopWG.Wait()
	if err := n.settings.c.Stop(context.Background()); err != nil {
		n.log.Warn("cluster settings: stop failed", "err", err)
	}
}

func (n *Node) waitDuties(ctx context.Context) {
	done := make(chan struct{})
	go func() { n.leadWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		n.log.Warn("lead duties still running at stop", "err", ctx.Err())
	}
}

// poke asks the tick loop to re-evaluate now.
func (n *Node) poke() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// tickLoop heartbeats every HeartbeatInterval and re-evaluates membership,
// lead and standing on every tick and every poke.
func (n *Node) tickLoop(t clockwork.Ticker) {
	defer n.loopWG.Done()
	defer t.Stop()
	// expiry fires when the next member's failure timeout runs out, so a
	// failure is decided at its deadline, not up to a heartbeat later.
	expiry := n.clock.NewTimer(time.Hour)
	defer expiry.Stop()
	rearm := func() {
		n.mu.Lock()
		next := n.ms.nextExpiry(n.cfg.FailureTimeout, n.holdUntil)
		n.mu.Unlock()
		d := time.Hour
		if !next.IsZero() {
			d = max(next.Sub(n.clock.Now()), time.Millisecond)
		}
		expiry.Reset(d)
	}
	n.requestPublish()
	for {
		select {
		case <-n.stopCtx.Done():
			return
		case <-t.Chan():
			n.evaluate()
			n.publishAndWait()
			n.ticks.Add(1)
		case <-n.kick:
			if n.evaluate() {
				n.requestPublish()
			}
		case <-expiry.Chan():
			if n.evaluate() {
				n.requestPublish()
			}
		}
		rearm()
	}
}

// publishAndWait asks for a heartbeat and waits until it is published, but
// no longer than a heartbeat interval (100ms at most, in real time): a
// broker that does not answer delays the heartbeat, not the next
// evaluation.
func (n *Node) publishAndWait() {
	select {
	case <-n.pubDone: // from an earlier publish
	default:
	}
	n.requestPublish()
	t := time.NewTimer(min(n.cfg.HeartbeatInterval, 100*time.Millisecond))
	defer t.Stop()
	select {
	case <-n.pubDone:
	case <-t.C:
	case <-n.stopCtx.Done():
	}
}

// requestPublish asks publishLoop for a heartbeat; if one is already
// asked for, that one will carry the latest state.
func (n *Node) requestPublish() {
	select {
	case n.pubKick <- struct{}{}:
	default:
	}
}

// publishLoop publishes the heartbeats tickLoop asks for, one at a time.
func (n *Node) publishLoop() {
	defer n.loopWG.Done()
	for {
		select {
		case <-n.stopCtx.Done():
			return
		case <-n.pubKick:
			n.publishHeartbeat()
			select {
			case n.pubDone <- struct{}{}:
			default:
			}
		}
	}
}

func (n *Node) heartbeatMessage(kind string) (adapters.Message, error) {
	n.mu.Lock()
	n.seq++
	hb := n.selfHeartbeatLocked()
	if kind == kindLeave {
		hb.State = StateLeft
	}
	n.mu.Unlock()
	return encode(kind, n.cfg.Cluster, n.cfg.NodeID, hb)
}

func (n *Node) selfHeartbeatLocked() heartbeat {
	hb := heartbeat{
		ID: n.cfg.NodeID, Inc: n.inc, Host: n.cfg.Host, IP: n.cfg.IP,
		Start: n.start.UnixNano(), Version: n.cfg.Version, State: n.state,
		Seq: n.seq, Sent: n.clock.Now().UnixNano(), Term: n.maxTerm, Lead: n.lead,
		CSeq: n.cseqPub,
	}
	if n.leading {
		hb.LeadTerm = n.term
	}
	hb.Probe = n.probeReportLocked()
	n.observeSelfLocked(&hb)
	if len(n.dutyDone) > 0 {
		hb.Duties = make(map[string]int64, len(n.dutyDone))
		for k, v := range n.dutyDone {
			hb.Duties[k] = v
		}
	}
	hb.Down = n.ms.downed()
	return hb
}

func (n *Node) publishHeartbeat() {
	msg, err := n.heartbeatMessage(kindHeartbeat)
	if err != nil {
		n.log.Error("encode heartbeat", "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(n.stopCtx, n.cfg.FailureTimeout)
	err = n.b.Publish(ctx, n.topic, msg)
	cancel()
	n.mu.Lock()
	defer n.mu.Unlock()
	if err != nil {
		if n.stopped {
			return
		}
		n.m.publishErrors.Inc()
		if n.pubErr == nil {
			n.log.Warn("heartbeat publish failed", "err", err)
		}
		n.pubErr, n.pubErrAt = err, n.clock.Now()
		return
	}
	n.m.hbSent.Inc()
	n.lastPublish = n.clock.Now()
}

// receiveLoop reads the cluster topic until the node stops, resubscribing
// if the subscription ends.
func (n *Node) receiveLoop(sub adapters.Subscription) {
	defer n.loopWG.Done()
	for {
		m, err := sub.Receive(n.stopCtx)
		if err == nil {
			n.handle(m)
			n.handled.Add(1)
			continue
		}
		if n.stopCtx.Err() != nil {
			return
		}
		if errors.Is(err, adapters.ErrGap) {
			n.m.subscriptionGaps.Inc()
			n.log.Warn("cluster topic may have missed messages; clearing every cache region", "err", err)
			n.clearAll("subscription gap")
			continue
		}
		n.log.Warn("cluster topic receive failed; resubscribing", "err", err)
		_ = sub.Close()
		for {
			select {
			case <-n.stopCtx.Done():
				return
			case <-n.clock.After(n.cfg.HeartbeatInterval):
			}
			s, err := n.b.Subscribe(n.stopCtx, n.topic)
			if err == nil {
				n.mu.Lock()
				n.sub = s
				n.mu.Unlock()
				sub = s
				// Anything may have been missed meanwhile.
				n.clearAll("resubscribed")
				break
			}
			if n.stopCtx.Err() != nil {
				return
			}
			n.log.Warn("resubscribe failed", "err", err)
		}
	}
}

func (n *Node) reject(reason, node string, err error) {
	n.m.rejected.WithLabelValues(reason).Inc()
	n.log.Warn("dropped coordination message", "reason", reason, "from", node, "err", err)
}

// handle processes one message from the cluster topic. A message that
// does not decode or fails validateHeartbeat changes nothing: no member,
// term or state.
func (n *Node) handle(msg adapters.Message) {
	kind, from, rej := checkHeaders(n.cfg.Cluster, msg)
	if rej != "" {
		n.reject(rej, msg.Headers[hdrNode], nil)
		return
	}
	switch kind {
	case kindHeartbeat, kindLeave:
		var hb heartbeat
		if err := json.Unmarshal(msg.Body, &hb); err != nil {
			n.reject(rejectMalformed, from, err)
			return
		}
		if err := validateHeartbeat(kind, from, hb); err != nil {
			n.reject(rejectMalformed, from, err)
			return
		}
		n.handleHeartbeat(kind, hb)
	case kindInvalidate:
		var inv invalidation
		if err := json.Unmarshal(msg.Body, &inv); err != nil || inv.ID != from || inv.Inc == "" {
			n.reject(rejectMalformed, from, err)
			return
		}
		n.handleInvalidation(inv)
	default:
		n.reject(rejectMalformed, from, fmt.Errorf("unknown kind %q", kind))
	}
}

// maxTerm bounds the terms a heartbeat may carry: far beyond any real
// term, far below where a uint64 wraps, so no message can wrap the
// fencing token.
const maxTermValue = uint64(1) << 62

var knownStates = map[string]bool{StateStarting: true, StateActive: true, StateDraining: true,
	StateFenced: true, StateDegraded: true, StatePanic: true, StateLeft: true}

// validateHeartbeat checks a decoded heartbeat before it may touch the
// membership.
func validateHeartbeat(kind, from string, hb heartbeat) error {
	switch {
	case hb.ID != from:
		return fmt.Errorf("body node %q, header node %q", hb.ID, from)
	case !nodeIDRE.MatchString(hb.ID):
		return fmt.Errorf("node ID %q", hb.ID)
	case hb.Inc == "" || len(hb.Inc) > 64:
		return errors.New("incarnation missing or too long")
	case !knownStates[hb.State]:
		return fmt.Errorf("state %q", hb.State)
	case hb.Start <= 0:
		return fmt.Errorf("start %d", hb.Start)
	case kind == kindHeartbeat && hb.Seq == 0:
		return errors.New("seq 0")
	case hb.Term > maxTermValue || hb.LeadTerm > maxTermValue:
		return fmt.Errorf("term %d / lead term %d beyond %d", hb.Term, hb.LeadTerm, maxTermValue)
	case hb.LeadTerm > hb.Term:
		return fmt.Errorf("lead term %d above term %d", hb.LeadTerm, hb.Term)
	case len(hb.Duties) > 1024 || len(hb.Down) > maxGone:
		return fmt.Errorf("%d duties, %d downed: too many", len(hb.Duties), len(hb.Down))
	}
	return nil
}

// panicf puts the node in cluster panic. A panic from the evidence of a
// duplicate node ID (dup) clears once that evidence stops (see evaluate);
// any other lasts until restart.
func (n *Node) panicf(dup bool, format string, a ...any) {
	reason := fmt.Sprintf(format, a...)
	n.mu.Lock()
	first := n.panicReason == ""
	if first {
		n.panicReason = reason
		n.panicDup = dup
	}
	n.mu.Unlock()
	if first {
		n.log.Error("CLUSTER PANIC: refusing to serve", "reason", reason)
		n.poke()
	}
}

// handleSelfID handles a heartbeat carrying this node's ID. Its own echo
// proves the link. Another incarnation is evidence of a second live node
// with this ID only once it has kept sending for a failure timeout: a
// restarted node's previous incarnation is dead and cannot, and one stray
// or replayed message is not enough.
func (n *Node) handleSelfID(kind string, hb heartbeat, now time.Time) {
	n.mu.Lock()
	if hb.Inc == n.inc {
		if hb.Seq > 0 {
			n.selfHeard = now
		}
		n.mu.Unlock()
		n.m.hbReceived.Inc()
		return
	}
	if kind != kindHeartbeat || hb.Start < n.start.UnixNano()-int64(n.cfg.forgetAfter()) {
		n.mu.Unlock()
		return
	}
	d := n.dupes[hb.Inc]
	if d == nil {
		if len(n.dupes) >= 16 {
			n.mu.Unlock()
			return
		}
		d = &dupe{first: now}
		n.dupes[hb.Inc] = d
	}
	if hb.Seq <= d.hb.Seq {
		n.mu.Unlock()
		return
	}
	d.last, d.hb = now, hb
	evident := d.last.Sub(d.first) >= n.cfg.FailureTimeout
	n.mu.Unlock()
	if evident {
		n.panicf(true, "another live node uses this node ID %q (host %s, ip %s, started %s)",
			hb.ID, hb.Host, hb.IP, time.Unix(0, hb.Start).UTC().Format(time.RFC3339Nano))
	}
}

func (n *Node) handleHeartbeat(kind string, hb heartbeat) {
	now := n.clock.Now()
	if hb.ID == n.cfg.NodeID {
		n.handleSelfID(kind, hb, now)
		return
	}
	n.m.hbReceived.Inc()
	n.mu.Lock()
	res, prev, changed := n.ms.apply(kind, hb, now)
	switch res {
	case applyGone:
		n.mu.Unlock()
		n.reject(rejectDeparted, hb.ID, nil)
		return
	case applyStale:
		n.mu.Unlock()
		n.reject(rejectStale, hb.ID, fmt.Errorf("seq %d", hb.Seq))
		return
	case applyIgnored:
		n.mu.Unlock()
		return
	case applyLeft:
		delete(n.senders, prev)
		n.mu.Unlock()
		n.log.Info("member left", "member", hb.ID, "host", hb.Host)
		n.poke()
		return
	case applyJoined:
		n.log.Info("member joined", "member", hb.ID, "host", hb.Host, "ip", hb.IP, "state", hb.State)
	case applyRestarted:
		delete(n.senders, prev)
		n.log.Info("member restarted: the new incarnation replaces the old", "member", hb.ID, "host", hb.Host)
	case applyBack:
		n.log.Info("member is back", "member", hb.ID, "host", hb.Host)
	}
	n.observeHeartbeatLocked(hb, now)
	if hb.Term > n.maxTerm {
		n.maxTerm = hb.Term
	}
	for d, slot := range hb.Duties {
		if slot > n.dutyDone[d] {
			n.dutyDone[d] = slot
		}
	}
	// Downs heard from a member in good standing: apply them; one of this
	// node means the serving side removed it while it was cut off.
	if hb.State == StateActive && len(hb.Down) > 0 {
		for _, inc := range hb.Down {
			if inc == n.inc {
				n.rejoinLocked(now, hb.ID)
				changed = true
				continue
			}
			for id, m := range n.ms.members {
				if m.hb.Inc == inc {
					n.ms.down(id, now)
					delete(n.senders, inc)
					changed = true
					n.log.Warn("member downed by another member", "member", id, "by", hb.ID)
				}
			}
		}
	}
	// Cache sequence: a sender ahead of what we applied means we missed
	// an invalidation.
	var gap bool
	s := n.senders[hb.Inc]
	if s == nil {
		n.senders[hb.Inc] = &sender{last: hb.CSeq}
		gap = hb.CSeq > 0
	} else if hb.CSeq > s.last {
		gap = true
		s.last = hb.CSeq
	}
	n.mu.Unlock()
	if gap {
		n.clearAll("missed invalidations from " + hb.ID)
	}
	if changed {
		n.poke()
	}
}

// rejoinLocked: the serving side downed this node while it was cut off
// (it heard its own incarnation among the downed). The node rejoins as a
// new incarnation: a new start time (so it is the youngest, and takes no
// lead back), a warm-up, its heartbeats accepted again.
func (n *Node) rejoinLocked(now time.Time, by string) {
	old := n.inc
	n.inc = randomID(8)
	n.start = now
	n.selfHeard = time.Time{}
	n.connected, n.lostAt = false, time.Time{}
	n.log.Warn("this node was downed by the serving side while it was cut off; rejoining as a new incarnation",
		"by", by, "old_incarnation", old, "incarnation", n.inc)
}

// Down removes member id from the cluster at once, as the serving side
// does by itself after ForgetAfter ("downing"): it stops counting toward
// any quorum, and if it comes back it must rejoin as a new incarnation.
// For an operator whose cluster waits for members that will not return
// (keep-majority with most members gone). Only a member that is not live
// can be downed, and only by a node that is not in panic.
func (n *Node) Down(id string) error {
	now := n.clock.Now()
	n.mu.Lock()
	m := n.ms.members[id]
	switch {
	case id == n.cfg.NodeID:
		n.mu.Unlock()
		return adapters.Errorf(adapters.ErrInvalidArgument, "bus: down", "%q is this node: stop it instead", id)
	case m == nil:
		n.mu.Unlock()
		return adapters.Errorf(adapters.ErrNotFound, "bus: down", "no member %q known to this node", id)
	case !m.dead:
		n.mu.Unlock()
		return adapters.Errorf(adapters.ErrInvalidArgument, "bus: down", "member %q is live (heard %s ago): only an unreachable member can be downed",
			id, now.Sub(m.lastHeard).Round(time.Millisecond))
	case n.panicReason != "":
		n.mu.Unlock()
		return adapters.Errorf(adapters.ErrInvalidArgument, "bus: down", "this node is in cluster panic")
	}
	n.ms.down(id, now)
	delete(n.senders, m.hb.Inc)
	n.mu.Unlock()
	n.log.Warn("member downed by hand", "member", id, "host", m.hb.Host)
	n.poke()
	n.requestPublish()
	return nil
}

// evaluate expires members, recomputes state, standing and lead, and runs
// lead transitions. It reports whether this node's own state or lead view
// changed (worth a heartbeat now).
func (n *Node) evaluate() bool {
	now := n.clock.Now()
	n.mu.Lock()
	if !n.started {
		n.mu.Unlock()
		return false
	}
	ft := n.cfg.FailureTimeout
	// Own link first: a node that has lost the broker decides that about
	// itself, not that everyone else failed.
	conn, _ := n.connectedLocked(now)
	switch {
	case conn && !n.connected:
		// Back after an outage: the others reconnect on their own
		// backoff, about as long after the broker returns as the outage
		// lasted; they get that long (at most 10 failure timeouts) on top
		// of the failure timeout before any is taken for failed, so the
		// oldest leads again instead of a younger node for a moment.
		n.holdUntil = now
		if !n.lostAt.IsZero() {
			n.holdUntil = now.Add(min(now.Sub(n.lostAt), 10*ft))
		}
	case !conn && n.connected:
		n.lostAt = n.selfHeard
	}
	n.connected = conn
	if conn {
		for _, id := range n.ms.expire(now, ft, n.selfHeard, n.holdUntil) {
			m := n.ms.members[id]
			n.log.Warn("member failed: no heartbeat within the failure timeout", "member", id,
				"host", m.hb.Host, "last_heartbeat_ago", now.Sub(m.lastHeard).Round(time.Millisecond))
		}
	}
	n.ms.prune(now)
	if n.panicDup {
		quiet := true
		for inc, d := range n.dupes {
			if now.Sub(d.last) <= 2*ft {
				quiet = false
			} else {
				delete(n.dupes, inc)
			}
		}
		if quiet {
			n.log.Warn("cluster panic cleared: the other node with this ID has not been heard for 2 failure timeouts", "reason", n.panicReason)
			n.panicReason, n.panicDup = "", false
		}
	}

	prevState, prevLead := n.state, n.lead
	n.state, n.reason = n.standingLocked(now)
	if n.state == StateActive {
		// Downing: only a side in good standing forgets the members it
		// cannot reach, so a fenced side never forgets its way back to a
		// majority.
		for _, m := range n.ms.forget(now, n.cfg.forgetAfter()) {
			delete(n.senders, m.hb.Inc)
			n.log.Warn("member downed: unreachable for forget-after", "member", m.hb.ID, "host", m.hb.Host,
				"forget_after", n.cfg.forgetAfter())
		}
	}
	n.lead = n.snapshotLocked(now).lead()

	n.updateMembersMetricLocked(now)
	if n.lead != prevLead {
		n.m.leadChanges.Inc()
	}
	clearCaches := prevState == StateDegraded && n.state != StateDegraded
	if n.state != prevState {
		lvl := slog.LevelInfo
		if n.state != StateActive && n.state != StateLeft && n.state != StateDraining {
			lvl = slog.LevelWarn
		}
		n.log.Log(context.Background(), lvl, "state changed", "state", n.state, "previous", prevState, "reason", n.reason)
	}
	n.setServingLocked(n.state == StateActive)

	shouldLead := n.lead == n.cfg.NodeID && n.state == StateActive
	var run func()
	switch {
	case shouldLead && !n.leading && n.maxTerm >= maxTermValue:
		// Unreachable in practice (terms start at 0 and heartbeats above
		// maxTermValue are dropped); never wrap the fencing token.
		n.log.Error("lead not taken: the term is exhausted", "term", n.maxTerm)
	case shouldLead && !n.leading:
		n.maxTerm++
		n.term = n.maxTerm
		n.leading = true
		ctx, cancel := context.WithCancel(n.stopCtx)
		n.leadCancel = cancel
		term := n.term
		gained := append([]func(context.Context, uint64){}, n.onGained...)
		duties := n.dutyListLocked()
		consume := false
		for _, d := range duties {
			consume = consume || (d.every > 0 && n.dutyQueueMode())
		}
		n.recordTermLocked(term, n.cfg.NodeID, n.cfg.Host, now)
		n.m.isLead.Set(1)
		n.leadWG.Add(len(gained) + len(duties))
		if consume {
			n.leadWG.Add(1)
		}
		run = func() {
			for _, f := range gained {
				go func() { defer n.leadWG.Done(); f(ctx, term) }()
			}
			for _, d := range duties {
				go func() { defer n.leadWG.Done(); n.runDuty(ctx, d, term) }()
			}
			if consume {
				go func() { defer n.leadWG.Done(); n.consumeDuties(ctx, term) }()
			}
		}
	case !shouldLead && n.leading:
		n.leading = false
		n.leadCancel()
		term := n.term
		lost := append([]func(uint64){}, n.onLost...)
		n.m.isLead.Set(0)
		run = func() {
			for _, f := range lost {
				f(term)
			}
		}
	}
	n.m.term.Set(float64(n.maxTerm))
	if n.lead != prevLead || run != nil {
		n.logLeadChangeLocked(prevLead)
	}
	changed := n.state != prevState || n.lead != prevLead || run != nil
	n.mu.Unlock()
	if clearCaches {
		n.clearAll("leaving degraded mode: invalidations may have been missed")
	}
	if run != nil {
		run()
	}
	return changed
}

// connectedLocked: our own heartbeat came back within the failure timeout,
// and no publish failed since.
func (n *Node) connectedLocked(now time.Time) (bool, string) {
	switch {
	case n.selfHeard.IsZero():
		return false, "not connected to the broker: own heartbeat not heard back yet"
	case n.pubErr != nil && !n.selfHeard.After(n.pubErrAt):
		return false, "not connected to the broker: publish failed: " + n.pubErr.Error()
	case now.Sub(n.selfHeard) > n.cfg.FailureTimeout:
		return false, fmt.Sprintf("not connected to the broker: own heartbeat not heard back for %s", now.Sub(n.selfHeard).Round(time.Millisecond))
	}
	return n.probeVerdictLocked(now)
}

// standingLocked computes this node's state and the reason behind it.
func (n *Node) standingLocked(now time.Time) (string, string) {
	switch {
	case n.stopped:
		return StateLeft, "stopped"
	case n.panicReason != "":
		return StatePanic, "cluster panic: " + n.panicReason
	case n.draining:
		return StateDraining, "draining"
	}
	ok, why := n.connectedLocked(now)
	if up := now.Sub(n.start); up < n.cfg.FailureTimeout {
		if !ok {
			return StateStarting, fmt.Sprintf("starting: up %s of the %s warm-up; %s", up.Round(time.Millisecond), n.cfg.FailureTimeout, why)
		}
		return StateStarting, fmt.Sprintf("starting: up %s of the %s warm-up", up.Round(time.Millisecond), n.cfg.FailureTimeout)
	}
	if !ok {
		if n.cfg.OnBrokerLoss == DegradeOnBrokerLoss {
			return StateDegraded, "degraded: " + why
		}
		return StateFenced, why
	}
	if ok, why := n.snapshotLocked(now).standing(); !ok {
		return StateFenced, why
	}
	return StateActive, "ok"
}

// snapshotLocked is the election's input: this node (in its current
// state) and the members it knows.
func (n *Node) snapshotLocked(now time.Time) snapshot {
	return snapshot{
		Self:    candidate{ID: n.cfg.NodeID, Start: n.start.UnixNano(), State: n.state, Live: true, Counted: true},
		Members: n.ms.candidates(now, n.cfg.FailureTimeout),
		Policy:  n.cfg.SplitBrain,
		Quorum:  n.cfg.Quorum,
	}
}

type memberKey struct {
	start int64
	id    string
}

func (a memberKey) less(b memberKey) bool {
	if a.start != b.start {
		return a.start < b.start
	}
	return a.id < b.id
}

func (n *Node) setServingLocked(s bool) {
	n.m.serving.Set(b2f(s))
	if s == n.serving {
		return
	}
	n.serving = s
	close(n.servingCh)
	n.servingCh = make(chan struct{})
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Serving reports whether the node is in service: connected, past its
// warm-up, on a winning side, not in panic and not draining. Work
// consumers should take work only while it is true.
func (n *Node) Serving() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.serving
}

// ServingChanged returns a channel closed at the next change of Serving.
// Read it before Serving to miss no change:
//
//	for {
//		ch := node.ServingChanged()
//		if node.Serving() { ... } else { ... }
//		<-ch
//	}
func (n *Node) ServingChanged() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.servingCh
}

// IsLead reports whether this node holds the lead, and its term (the
// fencing token) if so.
func (n *Node) IsLead() (bool, uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.leading, n.term
}

// Lead is the ID of the lead as this node sees it ("" if none).
func (n *Node) Lead() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.lead
}

// OnLeadGained registers fn to run, in its own goroutine, each time this
// node gains the lead. ctx is cancelled when the lead is lost or the node
// stops; term is the fencing token of the new term.
func (n *Node) OnLeadGained(fn func(ctx context.Context, term uint64)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.onGained = append(n.onGained, fn)
}

// OnLeadLost registers fn to run each time this node loses the lead (after
// the context given to OnLeadGained callbacks is cancelled).
func (n *Node) OnLeadLost(fn func(term uint64)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.onLost = append(n.onLost, fn)
}

// MemberStatus is one member as the local node sees it.
type MemberStatus struct {
	ID            string
	Host, IP      string
	StartedAt     time.Time
	LastHeartbeat time.Time // local clock; zero for the local node before its echo
	Lead, Local   bool
	State         string
	Version       string
	ClockSkew     time.Duration // member's clock minus ours, at receipt
	ClockSkewed   bool          // differs from the cluster median by more than the threshold
	Live          bool
	HTTPAddr      string // the member's HTTP address (Config.HTTPAddr), if it tells
	Reason        string // why the member is in its state, as it says
}

// Status is the cluster as the local node sees it.
type Status struct {
	Cluster   string
	Local     string
	Lead      string
	Term      uint64
	State     string
	Reason    string // one line: "ok" or why the node does not serve
	Serving   bool
	Connected bool
	Members   []MemberStatus // oldest first
	Now       time.Time
}

// Status returns a snapshot of the cluster view.
func (n *Node) Status() Status {
	now := n.clock.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	conn, _ := n.connectedLocked(now)
	st := Status{
		Cluster: n.cfg.Cluster, Local: n.cfg.NodeID, Lead: n.lead, Term: n.maxTerm,
		State: n.state, Reason: n.reason, Serving: n.serving, Connected: conn, Now: now,
	}
	if n.leading {
		st.Term = n.term
	} else if m := n.ms.members[n.lead]; m != nil && m.hb.LeadTerm > 0 {
		st.Term = m.hb.LeadTerm
	}
	self := MemberStatus{
		ID: n.cfg.NodeID, Host: n.cfg.Host, IP: n.cfg.IP, StartedAt: n.start, LastHeartbeat: n.selfHeard,
		Lead: n.lead == n.cfg.NodeID, Local: true, State: n.state, Version: n.cfg.Version, Live: true,
		HTTPAddr: n.cfg.HTTPAddr, Reason: n.reason,
	}
	st.Members = append(st.Members, self)
	for id, m := range n.ms.members {
		st.Members = append(st.Members, MemberStatus{
			ID: id, Host: m.hb.Host, IP: m.hb.IP, StartedAt: time.Unix(0, m.hb.Start), LastHeartbeat: m.lastHeard,
			Lead: id == n.lead, State: m.hb.State, Version: m.hb.Version, ClockSkew: m.skew, Live: !m.dead,
			HTTPAddr: m.hb.HTTP, Reason: m.hb.Reason,
		})
		if m.dead {
			st.Members[len(st.Members)-1].State = StateUnreachable
		}
	}
	// Skew: compare each live member with the median offset.
	var offs []time.Duration
	for _, ms := range st.Members {
		if ms.Live {
			offs = append(offs, ms.ClockSkew)
		}
	}
	sort.Slice(offs, func(i, j int) bool { return offs[i] < offs[j] })
	med := offs[len(offs)/2]
	for i := range st.Members {
		d := st.Members[i].ClockSkew - med
		if d < 0 {
			d = -d
		}
		st.Members[i].ClockSkewed = st.Members[i].Live && d > n.cfg.ClockSkewThreshold
	}
	sort.Slice(st.Members, func(i, j int) bool {
		a, b := st.Members[i], st.Members[j]
		return memberKey{a.StartedAt.UnixNano(), a.ID}.less(memberKey{b.StartedAt.UnixNano(), b.ID})
	})
	return st
}

// Healthy reports whether the node should receive traffic, with a one-line
// reason: what /ha/health answers.
func (n *Node) Healthy() (bool, string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.started {
		return false, "not started"
	}
	return n.serving || n.state == StateDegraded, n.reason
}

// Degraded reports whether the node has lost its broker and runs degraded
// (Config.OnBrokerLoss "degrade"): health 200, no lead, no work, every
// Cache read a miss.
func (n *Node) Degraded() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.state == StateDegraded
}

// Admit says whether the node accepts new work for the cluster (a flow
// submission): an error matching adapters.ErrUnavailable while degraded.
func (n *Node) Admit() error {
	if n.Degraded() {
		return adapters.Errorf(adapters.ErrUnavailable, "bus: admit", "degraded: the broker is not reachable, so work cannot be recorded durably; retry on another node")
	}
	return nil
}
