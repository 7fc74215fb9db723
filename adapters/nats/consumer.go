package nats

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/internal/driver"
)

// Pull tuning. A Consumer keeps one long-lived pull subscription (nats.go's
// Consume) that asks the server for up to Prefetch items at a time and asks
// again when half of them have been handed to the adapter.
const (
	// pullExpiryMax bounds one pull request; nats.go issues the next. Each
	// request lasts a quarter of the lease, at least nats.go's minimum of
	// one second; idle heartbeats come at half that.
	pullExpiryMax = 5 * time.Second
	// transitShareDiv and transitMax size the part of the lease kept back
	// for the time between the server sending an item (when its AckWait
	// starts) and the adapter seeing it: lease/20, at most a second.
	transitShareDiv = 20
	transitMax      = time.Second

	// Adaptive fetch-ahead (ConsumeOptions.MaxPrefetch above Prefetch): an
	// item may wait in the buffer for waitShareDiv-th of the lease; the
	// rate Receive takes items is measured over rateWindow; what is
	// fetched ahead stays under bufferedBytesMax at the items' mean size.
	waitShareDiv     = 10
	rateWindow       = 50 * time.Millisecond
	bufferedBytesMax = 64 << 20
	// prefetchCeiling is the largest MaxPrefetch: the queue's consumer
	// lets no more than its MaxAckPending (see DeclareQueue) be unacked.
	prefetchCeiling = 10000
)

// Consume implements adapters.Broker. It starts the consumer's pull
// subscription at once, so items are fetched ahead (up to
// ConsumeOptions.Prefetch, default 1) before the first Receive.
func (b *Broker) Consume(ctx context.Context, queue string, opts adapters.ConsumeOptions) (adapters.Consumer, error) {
	op := "consume " + queue
	if err := b.checkQueue(ctx, op); err != nil {
		return nil, err
	}
	if err := adapters.ValidateName("queue", queue); err != nil {
		return nil, err
	}
	if err := opts.Validate("nats: "+op, prefetchCeiling); err != nil {
		return nil, err
	}
	qi, err := b.info(ctx, op, queue)
	if err != nil {
		return nil, err
	}
	stream := b.queueStream(queue)
	if opts.DeadLetters {
		stream = b.dlqStream(queue)
	}
	cons, err := b.js.Consumer(ctx, stream, durable)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil, errf(adapters.ErrNotFound, op, "queue %q was never declared (stream %s, consumer %s)", queue, stream, durable)
		}
		return nil, b.mapCtxErr(ctx, op, err)
	}
	prefetch := max(opts.Prefetch, 1)
	maxPrefetch := max(opts.MaxPrefetch, prefetch)
	lease := cons.CachedInfo().Config.AckWait
	c := &consumer{
		b:           b,
		queue:       queue,
		dlq:         opts.DeadLetters,
		lease:       lease,
		transit:     min(lease/transitShareDiv, transitMax),
		prefetch:    prefetch,
		maxPrefetch: maxPrefetch,
		size:        prefetch,
		cons:        cons,
		ready:       make(chan fetched, maxPrefetch),
		closed:      make(chan struct{}),
		failed:      make(chan struct{}),
		retired:     map[*pullGen]struct{}{},
	}
	if !c.dlq {
		c.maxAttempts = qi.maxAttempts
	}
	c.ackOp = c.op("ack")
	c.ackBeginOp = "nats: " + c.ackOp
	c.valid = func() error {
		if b.isClosed() {
			return errf(adapters.ErrClosed, c.op("settle"), "the broker was closed")
		}
		return nil
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, b.closedErr(op)
	}
	b.consumers[c] = struct{}{}
	b.mu.Unlock()
	if qi.compacted && !c.dlq {
		c.comp = newCompactor(c, stream)
	}
	if maxPrefetch > 1 {
		c.lastRecv.Store(time.Now().UnixNano())
		go c.idleLoop()
	}
	return c, nil
}

// fetched is an item the server delivered, not yet handed out.
type fetched struct {
	msg jetstream.Msg
	// at is a time no later than when the server sent the item, which is
	// when its AckWait started.
	at time.Time
}

type consumer struct {
	b           *Broker
	queue       string
	dlq         bool
	cons        jetstream.Consumer
	lease       time.Duration
	transit     time.Duration
	maxAttempts int // 0 on a dead-letter queue: no limit
	prefetch    int // ConsumeOptions.Prefetch, at least 1
	maxPrefetch int // ConsumeOptions.MaxPrefetch, at least prefetch

	// ready is the buffer between the pull subscriptions and Receive
	// (MaxPrefetch > 1).
	ready chan fetched
	// lastRecv (unix nanoseconds) and waiting tell whether Receive is
	// being called; an idle consumer stops pulling (see idleLoop).
	lastRecv atomic.Int64
	waiting  atomic.Int32

	mu   sync.Mutex
	pull *pullGen // nil while paused (MaxPrefetch > 1)
	// size is the current pull's PullMaxMessages, from prefetch to
	// maxPrefetch (see adapt); retired are earlier pulls still handing
	// over what they had fetched when they were resized away.
	size     int
	retired  map[*pullGen]struct{}
	win      rateWin
	isClosed bool
	closed   chan struct{}
	failErr  error
	failed   chan struct{} // closed when failErr is set
	held     driver.Held[*delivery]
	// comp purges the queue's stream below the ack floor; nil on a
	// dead-letter queue and on a work-queue stream (see compact.go).
	comp *compactor

	// Built once, for every delivery: the Ack's error prefixes and the
	// lease's Valid hook.
	ackOp, ackBeginOp string
	valid             func() error
}

func (c *consumer) op(verb string) string {
	if c.dlq {
		return verb + " " + c.queue + " (dead letters)"
	}
	return verb + " " + c.queue
}

func (c *consumer) closedErr() error {
	return errf(adapters.ErrClosed, c.op("receive"), "consumer closed")
}

// pullGen is one run of the long-lived pull subscription: it starts with the
// first Receive and ends when the consumer pauses or closes.
type pullGen struct {
	c       *consumer
	size    int // its PullMaxMessages
	cc      jetstream.ConsumeContext
	stopped atomic.Bool
	quit    chan struct{} // closed by stop

	// Touched only by onMsg, which nats.go calls one item at a time.
	handled   int64
	lastStart time.Time
	floors    []floor
}

// floor bounds the arrival time of items that may have queued in nats.go
// while the adapter's buffer was full.
type floor struct {
	at    time.Time
	until int64 // applies to items handled up to this count
}

// startPull starts a pull subscription of c.size items. c.mu must be held.
func (c *consumer) startPull() error {
	g := &pullGen{c: c, size: c.size, lastStart: time.Now(), quit: make(chan struct{})}
	expiry := max(min(pullExpiryMax, c.lease/4), time.Second)
	cc, err := c.cons.Consume(g.onMsg,
		jetstream.PullMaxMessages(c.size),
		jetstream.PullExpiry(expiry),
		jetstream.PullHeartbeat(expiry/2),
		jetstream.ConsumeErrHandler(c.onErr))
	if err != nil {
		return c.b.mapErr(c.op("receive"), err)
	}
	g.cc = cc
	c.pull = g
	c.win = rateWin{start: time.Now()}
	return nil
}

// rateWin counts what Receive handed out since start (see adapt).
type rateWin struct {
	start time.Time
	n     int
	bytes int
}

// adapt runs after Receive hands out an item that arrived at at, when
// MaxPrefetch is above Prefetch. Over each rateWindow (or four pulls' worth
// of items, if sooner but not under rateWindow/10) it measures the rate
// Receive takes items and, when a pull twice as large (or more) would still
// empty within the wait budget (lease/waitShareDiv) at that rate, resizes
// the pull to that (up to MaxPrefetch and bufferedBytesMax). An item that
// waited longer than the budget shrinks the pull to a quarter (at least
// Prefetch). A pull resized away is retired, not stopped: it hands over
// what it had fetched, so resizing gives nothing back and counts no
// delivery twice.
func (c *consumer) adapt(now, at time.Time, size int) {
	budget := c.lease / waitShareDiv
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pull == nil || c.isClosed || c.failErr != nil {
		return
	}
	if now.Sub(at) > c.transit+budget && c.size > c.prefetch {
		c.resize(max(c.prefetch, c.size/4))
		return
	}
	c.win.n++
	c.win.bytes += size
	el := now.Sub(c.win.start)
	if el < rateWindow && (c.win.n < 4*c.size || el < rateWindow/10) {
		// A window ends after rateWindow, or once four pulls' worth went
		// out in at least a tenth of that: a fast consumer grows within
		// milliseconds, and a few items taken at once (handlers that
		// finished together) are not read as a rate.
		return
	}
	want := int(float64(c.win.n) / el.Seconds() * budget.Seconds())
	if mean := c.win.bytes / c.win.n; mean > 0 {
		want = min(want, bufferedBytesMax/mean)
	}
	want = min(want, c.maxPrefetch)
	c.win = rateWin{start: now}
	if want >= 2*c.size {
		c.resize(want)
	}
}

// resize replaces the pull with one of n items and retires the old one.
// c.mu is held.
func (c *consumer) resize(n int) {
	old, oldSize := c.pull, c.size
	c.size = n
	if err := c.startPull(); err != nil {
		c.pull, c.size = old, oldSize
		c.b.log.Debug("nats: resizing the pull failed; keeping it", "queue", c.queue, "err", err)
		return
	}
	c.b.log.Debug("nats: pull resized", "queue", c.queue, "from", oldSize, "to", n)
	c.retired[old] = struct{}{}
	go func() {
		old.cc.Drain()
		select {
		case <-old.cc.Closed():
		case <-old.quit: // stopped by a pause or Close
		}
		c.mu.Lock()
		delete(c.retired, old)
		c.mu.Unlock()
	}()
}

// takePulls removes the pull and the retired ones for stopping and resets
// the size to Prefetch. c.mu is held.
func (c *consumer) takePulls() []*pullGen {
	var gs []*pullGen
	if c.pull != nil {
		gs = append(gs, c.pull)
		c.pull = nil
	}
	for g := range c.retired {
		gs = append(gs, g)
		delete(c.retired, g)
	}
	c.size = c.prefetch
	return gs
}

// stop ends the pull subscription and waits (briefly) until nats.go has
// handed over what it had queued.
func (g *pullGen) stop() {
	g.stopped.Store(true)
	close(g.quit)
	g.cc.Drain()
	select {
	case <-g.cc.Closed():
	case <-time.After(2 * time.Second):
		g.cc.Stop()
	}
}

// onMsg receives each item from the pull subscription. It stamps the item
// with a time no later than the server's send and puts it in the buffer,
// waiting while the buffer is full. nats.go asks the server for more only
// after onMsg returns, so at most Prefetch items are fetched and not yet
// buffered.
//
// The stamp is the time onMsg sees the item, less the transit allowance.
// While onMsg waits for room, later items queue unseen in nats.go; after
// such a wait, the next 2×Prefetch items (more than can have queued) are
// stamped no later than the start of the previous call.
func (g *pullGen) onMsg(msg jetstream.Msg) {
	c := g.c
	now := time.Now()
	g.handled++
	for len(g.floors) > 0 && g.floors[0].until < g.handled {
		g.floors = g.floors[1:]
	}
	at := now
	if len(g.floors) > 0 {
		at = g.floors[0].at
	}
	f := fetched{msg: msg, at: at.Add(-c.transit)}
	prev := g.lastStart
	g.lastStart = now
	if g.stopped.Load() {
		_ = msg.Nak()
		return
	}
	select {
	case c.ready <- f:
		return
	default:
	}
	g.floors = append(g.floors, floor{at: prev, until: g.handled + 2*int64(g.size)})
	select {
	case c.ready <- f:
	case <-g.quit:
		_ = msg.Nak()
	}
}

// idleLoop pauses the pull subscription of a consumer whose Receive has not
// been called for half a lease: the items it fetched ahead go back (with
// their attempt counted, as JetStream counts every delivery) instead of
// waiting out their leases in a process that does not ask for them, and
// nothing more is fetched until the next Receive.
func (c *consumer) idleLoop() {
	idle := c.lease / 2
	t := time.NewTicker(max(c.lease/8, 50*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-c.closed:
			return
		case <-t.C:
		}
		if c.waiting.Load() > 0 || time.Since(time.Unix(0, c.lastRecv.Load())) < idle {
			continue
		}
		c.Pause()
	}
}

// Pause implements adapters.Pauser: the pull subscriptions stop, what they
// fetched ahead is negatively acknowledged, and the next Receive starts
// pulling again at Prefetch.
func (c *consumer) Pause() {
	c.mu.Lock()
	gs := c.takePulls()
	c.mu.Unlock()
	if len(gs) == 0 {
		return
	}
	for _, g := range gs {
		g.stop()
	}
	c.nakBuffered()
}

func (c *consumer) nakBuffered() {
	for {
		select {
		case f := <-c.ready:
			_ = f.msg.Nak()
		default:
			return
		}
	}
}

// onErr receives the pull subscription's errors. Missed heartbeats,
// reconnects and leadership changes are handled by nats.go, which pulls
// again; a deleted consumer or a closed connection ends Receive.
func (c *consumer) onErr(_ jetstream.ConsumeContext, err error) {
	switch {
	case errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrConsumerNotFound),
		errors.Is(err, jetstream.ErrStreamNotFound):
		c.fail(errf(adapters.ErrNotFound, c.op("receive"), "queue %q was deleted", c.queue))
	case errors.Is(err, jetstream.ErrBadRequest):
		c.fail(c.b.mapErr(c.op("receive"), err))
	case errors.Is(err, jetstream.ErrConnectionClosed), errors.Is(err, nats.ErrConnectionClosed):
		c.fail(errf(adapters.ErrClosed, c.op("receive"), "connection closed"))
	default:
		if !c.b.isClosed() {
			c.b.log.Debug("nats: pull subscription", "queue", c.queue, "err", err)
		}
	}
}

func (c *consumer) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failErr == nil {
		c.failErr = err
		close(c.failed)
	}
}

// Receive implements adapters.Consumer. With MaxPrefetch > 1 it hands out
// the next buffered item, (re)starting the pull subscription if it is
// paused; with MaxPrefetch 1 it pulls one item itself. Connection trouble is
// retried until ctx is done.
func (c *consumer) Receive(ctx context.Context) (adapters.Delivery, error) {
	if c.maxPrefetch <= 1 {
		return c.receiveOne(ctx)
	}
	c.waiting.Add(1)
	defer func() {
		c.lastRecv.Store(time.Now().UnixNano())
		c.waiting.Add(-1)
	}()
	for {
		select {
		case <-c.closed:
			return nil, c.closedErr()
		default:
		}
		c.mu.Lock()
		if c.pull == nil && !c.isClosed && c.failErr == nil {
			if err := c.startPull(); err != nil {
				c.mu.Unlock()
				return nil, err
			}
		}
		c.mu.Unlock()
		select {
		case f := <-c.ready:
			if c.maxPrefetch > c.prefetch {
				c.adapt(time.Now(), f.at, len(f.msg.Data()))
			}
			if d, err := c.accept(f); d != nil || err != nil {
				return d, err
			}
		case <-c.closed:
			return nil, c.closedErr()
		case <-c.failed:
			if c.b.isClosed() {
				return nil, c.closedErr()
			}
			return nil, c.failErr
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// receiveOne pulls one item per call, only while a Receive waits, so a
// consumer with Prefetch 1 holds nothing it was not asked for.
func (c *consumer) receiveOne(ctx context.Context) (adapters.Delivery, error) {
	backoff := 50 * time.Millisecond
	for {
		select {
		case <-c.closed:
			return nil, c.closedErr()
		default:
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		f, ok, err := c.fetchOne(ctx)
		if ok {
			backoff = 50 * time.Millisecond
			if d, err := c.accept(f); d != nil || err != nil {
				return d, err
			}
			continue
		}
		if err == nil {
			continue
		}
		if c.b.isClosed() {
			return nil, c.closedErr()
		}
		if errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, errf(adapters.ErrNotFound, c.op("receive"), "queue %q was deleted", c.queue)
		}
		c.b.log.Debug("nats: fetch failed; retrying", "queue", c.queue, "err", err)
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.closed:
			return nil, c.closedErr()
		}
		backoff = min(2*backoff, time.Second)
	}
}

// fetchOne sends one pull request for one item, open for a quarter of the
// lease (at most pullExpiryMax), and stamps the item with the time the
// request was sent: the server starts the item's AckWait only after it got
// the request. nats.go listens a second past the request's expiry, so an
// item the server sends just before it expires is not lost in flight on a
// loaded machine. ctx, Close and a reconnect (the server forgets pull
// requests when it restarts) end the wait early.
func (c *consumer) fetchOne(ctx context.Context) (fetched, bool, error) {
	window := max(min(pullExpiryMax, c.lease/4), 50*time.Millisecond)
	rc := c.b.reconnected()
	reqAt := time.Now()
	batch, err := c.cons.Fetch(1, jetstream.FetchMaxWait(window))
	if err != nil {
		return fetched{}, false, err
	}
	select {
	case msg, ok := <-batch.Messages():
		if ok {
			return fetched{msg: msg, at: reqAt}, true, nil
		}
	case <-ctx.Done():
		return fetched{}, false, nil
	case <-c.closed:
		return fetched{}, false, nil
	case <-rc:
		return fetched{}, false, nil
	}
	if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
		return fetched{}, false, err
	}
	return fetched{}, false, nil
}

// accept turns a fetched message into a delivery, or handles it and returns
// nil: an item whose lease ran out in the buffer is left to come back; an
// item past MaxAttempts is moved to the dead-letter queue.
func (c *consumer) accept(f fetched) (*delivery, error) {
	md, err := f.msg.Metadata()
	if err != nil {
		c.b.log.Warn("nats: not a JetStream message; dropped", "queue", c.queue, "err", err)
		return nil, nil
	}
	deadline := f.at.Add(c.lease)
	d := &delivery{
		c:       c,
		msg:     f.msg,
		md:      md,
		m:       decode(f.msg, c.dlq),
		attempt: int(md.NumDelivered),
	}
	switch {
	case c.maxAttempts > 0 && d.attempt > c.maxAttempts:
		// The last attempt's lease expired (its holder died, or its
		// expiry timer could not move it): dead-letter it now.
		d.moveDetached(reasonExpired(c.maxAttempts))
		return nil, nil
	case !time.Now().Before(deadline):
		// The lease ran out while buffered.
		if d.last() {
			d.moveDetached(reasonExpired(c.maxAttempts))
		}
		// Otherwise it comes back by itself.
		return nil, nil
	}
	d.start(deadline)
	if !c.held.Add(d) {
		d.release()
		return nil, c.closedErr()
	}
	return d, nil
}

// Close implements adapters.Consumer. It ends the pull subscription;
// buffered and unsettled deliveries are negatively acknowledged, so they
// come back at once (settling them afterwards returns ErrLeaseLost). It
// returns once the acknowledgements sent so far have reached the server and
// the stream is compacted below the ack floor they moved.
func (c *consumer) Close() error {
	c.mu.Lock()
	if c.isClosed {
		c.mu.Unlock()
		return nil
	}
	c.isClosed = true
	close(c.closed)
	gs := c.takePulls()
	c.mu.Unlock()
	for _, g := range gs {
		g.stop()
	}
	c.nakBuffered()
	for _, d := range c.held.Close() {
		d.release()
	}
	c.b.mu.Lock()
	delete(c.b.consumers, c)
	c.b.mu.Unlock()
	_ = c.b.nc.FlushTimeout(2 * time.Second)
	if c.comp != nil {
		c.comp.stop()
	}
	return nil
}
