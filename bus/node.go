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
)

// Node states as carried in heartbeats and shown in the status.
const (
	StateStarting = "starting" // warming up: has not been up one FailureTimeout
	StateActive   = "active"   // in good standing: serving, may hold the lead
	StateDraining = "draining" // stopping: hands over the lead, takes no new work
	StateFenced   = "fenced"   // on a losing side of a split, or lost the broker
	StatePanic    = "panic"    // cluster panic: refuses to serve until restarted
	StateLeft     = "left"     // stopped gracefully
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

	mu          sync.Mutex
	started     bool
	stopped     bool
	stopCtx     context.Context
	stopFn      context.CancelFunc
	sub         adapters.Subscription
	members     map[string]*member
	senders     map[string]*sender // by incarnation
	seq         uint64
	cseq        uint64 // last invalidation seq assigned
	cseqPub     uint64 // last invalidation seq published
	maxTerm     uint64
	term        uint64 // held while leading
	leading     bool
	leadCancel  context.CancelFunc
	leadWG      sync.WaitGroup
	lead        string
	state       string
	reason      string
	selfHeard   time.Time
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
}

type member struct {
	hb         heartbeat
	lastHeard  time.Time // local clock
	firstHeard time.Time
	skew       time.Duration // sender clock minus local clock at receipt
	dead       bool
	deadAt     time.Time
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
		opts:      o,
		m:         newMetrics(o.reg),
		topic:     "clusterbus-" + cfg.Cluster,
		inc:       randomID(8),
		kick:      make(chan struct{}, 1),
		pubKick:   make(chan struct{}, 1),
		pubDone:   make(chan struct{}, 1),
		members:   map[string]*member{},
		senders:   map[string]*sender{},
		state:     StateStarting,
		reason:    "not started",
		servingCh: make(chan struct{}),
		regions:   map[string][]func([]string){},
		duties:    map[string]*duty{},
		dutyDone:  map[string]int64{},
	}
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
	n.loopWG.Add(3)
	go n.receiveLoop(sub)
	go n.publishLoop()
	go n.tickLoop(t)
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
		}
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
	if len(n.dutyDone) > 0 {
		hb.Duties = make(map[string]int64, len(n.dutyDone))
		for k, v := range n.dutyDone {
			hb.Duties[k] = v
		}
	}
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

// handle processes one message from the cluster topic.
func (n *Node) handle(msg adapters.Message) {
	kind, from, rej := checkHeaders(n.cfg.Cluster, msg)
	if rej != "" {
		n.reject(rej, msg.Headers[hdrNode], nil)
		return
	}
	switch kind {
	case kindHeartbeat, kindLeave:
		var hb heartbeat
		if err := json.Unmarshal(msg.Body, &hb); err != nil || hb.ID != from || hb.Inc == "" {
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

// panicf puts the node in cluster panic for good.
func (n *Node) panicf(format string, a ...any) {
	reason := fmt.Sprintf(format, a...)
	n.mu.Lock()
	first := n.panicReason == ""
	if first {
		n.panicReason = reason
	}
	n.mu.Unlock()
	if first {
		n.log.Error("CLUSTER PANIC: refusing to serve until restarted", "reason", reason)
		n.poke()
	}
}

func (n *Node) handleHeartbeat(kind string, hb heartbeat) {
	now := n.clock.Now()
	if hb.ID == n.cfg.NodeID {
		if hb.Inc == n.inc {
			n.mu.Lock()
			if hb.Seq > 0 {
				n.selfHeard = now
			}
			n.mu.Unlock()
			n.m.hbReceived.Inc()
			return
		}
		if kind == kindHeartbeat {
			n.panicf("another live node uses this node ID %q (host %s, ip %s, started %s)",
				hb.ID, hb.Host, hb.IP, time.Unix(0, hb.Start).UTC().Format(time.RFC3339Nano))
		}
		return
	}
	n.m.hbReceived.Inc()
	var gap bool
	n.mu.Lock()
	m := n.members[hb.ID]
	changed := false
	if kind == kindLeave {
		if m != nil && m.hb.Inc == hb.Inc {
			delete(n.members, hb.ID)
			delete(n.senders, hb.Inc)
			changed = true
			n.log.Info("member left", "member", hb.ID, "host", hb.Host)
		}
		n.mu.Unlock()
		if changed {
			n.poke()
		}
		return
	}
	switch {
	case m == nil:
		m = &member{firstHeard: now}
		n.members[hb.ID] = m
		changed = true
		n.log.Info("member joined", "member", hb.ID, "host", hb.Host, "ip", hb.IP, "state", hb.State)
	case m.hb.Inc != hb.Inc:
		if hb.Start < m.hb.Start {
			// An older incarnation speaking after a newer one: stale.
			n.mu.Unlock()
			n.reject(rejectStale, hb.ID, nil)
			return
		}
		delete(n.senders, m.hb.Inc)
		*m = member{firstHeard: now}
		changed = true
		n.log.Info("member restarted", "member", hb.ID, "host", hb.Host)
	case hb.Seq <= m.hb.Seq:
		n.mu.Unlock()
		n.reject(rejectStale, hb.ID, fmt.Errorf("seq %d after %d", hb.Seq, m.hb.Seq))
		return
	}
	if m.dead {
		m.dead = false
		changed = true
		n.log.Info("member is back", "member", hb.ID, "host", hb.Host)
	}
	if m.hb.State != hb.State || m.hb.LeadTerm != hb.LeadTerm {
		changed = true
	}
	m.hb = hb
	m.lastHeard = now
	m.skew = time.Unix(0, hb.Sent).Sub(now)
	if hb.Term > n.maxTerm {
		n.maxTerm = hb.Term
	}
	for d, slot := range hb.Duties {
		if slot > n.dutyDone[d] {
			n.dutyDone[d] = slot
		}
	}
	// Cache sequence: a sender ahead of what we applied means we missed
	// an invalidation.
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
	forget := n.cfg.forgetAfter()
	for id, m := range n.members {
		age := now.Sub(m.lastHeard)
		if !m.dead && age > ft {
			m.dead, m.deadAt = true, now
			n.log.Warn("member failed: no heartbeat within the failure timeout", "member", id,
				"host", m.hb.Host, "last_heartbeat_ago", age.Round(time.Millisecond))
		}
		if m.dead && age > forget {
			delete(n.members, id)
			delete(n.senders, m.hb.Inc)
			n.log.Info("forgot failed member", "member", id)
		}
	}

	prevState, prevLead := n.state, n.lead
	n.state, n.reason = n.standingLocked(now)
	n.lead = n.computeLeadLocked()

	live := 1
	for _, m := range n.members {
		if !m.dead {
			live++
		}
	}
	n.m.members.Set(float64(live))
	if n.lead != prevLead {
		n.m.leadChanges.Inc()
		n.log.Info("lead changed", "lead", n.lead, "previous", prevLead, "term", n.maxTerm)
	}
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
		n.log.Info("lead gained", "term", term)
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
		n.log.Info("lead lost", "term", term, "state", n.state, "lead", n.lead)
		n.m.isLead.Set(0)
		run = func() {
			for _, f := range lost {
				f(term)
			}
		}
	}
	n.m.term.Set(float64(n.maxTerm))
	changed := n.state != prevState || n.lead != prevLead || run != nil
	n.mu.Unlock()
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
	return true, ""
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
		return StateFenced, why
	}
	if ok, why := n.splitBrainLocked(); !ok {
		return StateFenced, why
	}
	return StateActive, "ok"
}

// splitBrainLocked applies the policy to the members this node can see.
func (n *Node) splitBrainLocked() (bool, string) {
	live, known := 1, 1
	oldestKnown, oldestLive := n.selfKey(), true
	for id, m := range n.members {
		if m.hb.State == StatePanic {
			continue
		}
		known++
		k := memberKey{m.hb.Start, id}
		isLive := !m.dead
		if isLive {
			live++
		}
		if k.less(oldestKnown) {
			oldestKnown, oldestLive = k, isLive
		}
	}
	switch n.cfg.SplitBrain {
	case KeepMajority:
		if 2*live > known || (2*live == known && oldestLive) {
			return true, ""
		}
		return false, fmt.Sprintf("split-brain: sees %d of %d known members, not a majority (keep-majority)", live, known)
	case KeepOldest:
		if oldestLive {
			return true, ""
		}
		return false, fmt.Sprintf("split-brain: the oldest known member %s is not reachable (keep-oldest)", oldestKnown.id)
	case StaticQuorum:
		if live >= n.cfg.Quorum {
			return true, ""
		}
		return false, fmt.Sprintf("split-brain: sees %d live members, quorum is %d (static-quorum)", live, n.cfg.Quorum)
	}
	return true, ""
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

func (n *Node) selfKey() memberKey { return memberKey{n.start.UnixNano(), n.cfg.NodeID} }

// computeLeadLocked: the oldest live member that is active or still
// starting, this node included; if that member is still starting there is
// no lead until it is active (so nodes that finish their warm-up at the same
// moment do not all claim the lead, and a younger node does not lead for a
// moment only to hand over).
func (n *Node) computeLeadLocked() string {
	var best memberKey
	var bestState string
	found := false
	if n.state == StateActive || n.state == StateStarting {
		best, bestState, found = n.selfKey(), n.state, true
	}
	for id, m := range n.members {
		if m.dead || (m.hb.State != StateActive && m.hb.State != StateStarting) {
			continue
		}
		k := memberKey{m.hb.Start, id}
		if !found || k.less(best) {
			best, bestState, found = k, m.hb.State, true
		}
	}
	if !found || bestState != StateActive {
		return ""
	}
	return best.id
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
	} else if m := n.members[n.lead]; m != nil && m.hb.LeadTerm > 0 {
		st.Term = m.hb.LeadTerm
	}
	self := MemberStatus{
		ID: n.cfg.NodeID, Host: n.cfg.Host, IP: n.cfg.IP, StartedAt: n.start, LastHeartbeat: n.selfHeard,
		Lead: n.lead == n.cfg.NodeID, Local: true, State: n.state, Version: n.cfg.Version, Live: true,
	}
	st.Members = append(st.Members, self)
	for id, m := range n.members {
		st.Members = append(st.Members, MemberStatus{
			ID: id, Host: m.hb.Host, IP: m.hb.IP, StartedAt: time.Unix(0, m.hb.Start), LastHeartbeat: m.lastHeard,
			Lead: id == n.lead, State: m.hb.State, Version: m.hb.Version, ClockSkew: m.skew, Live: !m.dead,
		})
		if m.dead {
			st.Members[len(st.Members)-1].State = "unreachable"
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
	return n.serving, n.reason
}
