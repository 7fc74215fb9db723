package kafka

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/clusterbus/clusterbus/adapters"
)

// maxRetryHeld bounds the delayed items one consumer holds in memory while
// it waits for their due time.
const maxRetryHeld = 10000

// Consume opens a consumer of the queue (or of its dead-letter topic). It
// joins the queue's consumer group, where every consumer of the queue on
// every node competes, at its first Receive. It joins the queue's retry
// group at once: that member re-queues delayed items when they are due. It
// returns ErrNotFound if the queue was never declared.
func (b *Broker) Consume(ctx context.Context, q string, opts adapters.ConsumeOptions) (adapters.Consumer, error) {
	op := fmt.Sprintf("kafka: consume %q", q)
	if err := b.checkOpen(op); err != nil {
		return nil, err
	}
	if err := adapters.ValidateName("queue", q); err != nil {
		return nil, err
	}
	if opts.Prefetch < 0 {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "ConsumeOptions.Prefetch %d: want >= 0", opts.Prefetch)
	}
	if opts.Prefetch == 0 {
		opts.Prefetch = 1
	}
	cfg, err := b.queueConfig(ctx, op, q)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithCancel(context.Background())
	c := &consumer{b: b, queue: q, cfg: cfg, dead: opts.DeadLetters, topic: b.mainTopic(q),
		out: make(chan *delivery, opts.Prefetch-1), ctx: cctx, cancel: cancel,
		held: map[*delivery]struct{}{}, retrySem: make(chan struct{}, maxRetryHeld)}
	if c.dead {
		c.topic = b.deadTopic(q)
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		cancel()
		return nil, adapters.Errorf(adapters.ErrClosed, op, "broker is closed")
	}
	b.consumers[c] = struct{}{}
	b.mu.Unlock()
	if c.retry, err = b.startGroup(b.retryTopic(q), b.retryTopic(q), c.handleRetry, nil, 0); err != nil {
		_ = c.Close()
		return nil, mapErr(op, err)
	}
	return c, nil
}

type consumer struct {
	b     *Broker
	queue string
	cfg   adapters.QueueConfig
	dead  bool   // reads the dead-letter topic
	topic string // the topic this consumer reads

	joinOnce    sync.Once
	joinErr     error
	main, retry *groupRunner
	out         chan *delivery
	ctx         context.Context // cancelled by Close
	cancel      context.CancelFunc
	retrySem    chan struct{}

	mu     sync.Mutex
	held   map[*delivery]struct{}
	once   sync.Once
	closed bool
}

// join makes the consumer a member of the queue's group. It happens at the
// first Receive, not in Consume: Kafka hands each partition to one member,
// so a consumer that never receives must not own partitions.
func (c *consumer) join() error {
	c.joinOnce.Do(func() {
		c.mu.Lock()
		closed := c.closed
		c.mu.Unlock()
		if closed {
			c.joinErr = errors.New("consumer is closed")
			return
		}
		handle, resume := c.handle, (func(context.Context, *partState, int) bool)(nil)
		if c.ordered() {
			handle, resume = c.handleOrdered, c.resumeSlot
		}
		r, err := c.b.startGroup(c.topic, c.topic, handle, resume, c.cfg.Lease)
		c.mu.Lock()
		c.main, c.joinErr = r, err
		c.mu.Unlock()
	})
	return c.joinErr
}

// ordered reports whether this consumer keeps per-key order (see
// ordered.go). The dead-letter topic is not ordered.
func (c *consumer) ordered() bool { return c.cfg.Ordered && !c.dead }

// handle passes a record of the read topic to Receive.
func (c *consumer) handle(gctx context.Context, ps *partState, epoch int, km kafkago.Message) bool {
	m, attempt, _ := decode(km)
	d := &delivery{c: c, ps: ps, epoch: epoch, km: km, msg: m, attempt: attempt}
	select {
	case c.out <- d:
		return true
	case <-gctx.Done():
	case <-c.ctx.Done():
	}
	return false
}

// handleRetry holds a record of the retry topic until its due time, then
// appends it to its target topic and settles its offset.
func (c *consumer) handleRetry(gctx context.Context, ps *partState, epoch int, km kafkago.Message) bool {
	op := fmt.Sprintf("kafka: re-queue delayed item of %q", c.queue)
	select {
	case c.retrySem <- struct{}{}:
	case <-gctx.Done():
		return false
	}
	due := time.Now()
	if ms, err := strconv.ParseInt(headerValue(km, hdrDue), 10, 64); err == nil {
		due = time.UnixMilli(ms)
	}
	target := c.b.mainTopic(c.queue)
	if headerValue(km, hdrTarget) == "d" {
		target = c.b.deadTopic(c.queue)
	}
	_, attempt, _ := decode(km)
	out := requeue(target, km, attemptHeader(attempt))
	var once sync.Once
	release := func() { once.Do(func() { <-c.retrySem }) }
	fire := func() {
		defer release()
		for ps.valid(epoch) {
			err := c.b.write(c.ctx, op, out)
			if err == nil {
				ctx, cancel := context.WithTimeout(c.ctx, time.Minute)
				defer cancel()
				if err := ps.settle(ctx, op, epoch, km.Offset); err != nil {
					c.b.log.Debug("commit of the retry topic failed", "queue", c.queue, "err", err)
				}
				return
			}
			if c.ctx.Err() != nil {
				return // the next owner of the partition reads it again
			}
			c.b.log.Warn("re-queue of a delayed item failed; retrying", "queue", c.queue, "err", err)
			sleepCtx(c.ctx, 500*time.Millisecond)
		}
	}
	timer := time.AfterFunc(max(time.Until(due), 0), fire)
	ps.whenLost(epoch, func() {
		if timer.Stop() {
			release()
		}
	})
	return true
}

// Receive returns the next item under a lease of the queue's length. The
// lease timer starts here, not when the record was fetched.
func (c *consumer) Receive(ctx context.Context) (adapters.Delivery, error) {
	op := fmt.Sprintf("kafka: receive %q", c.queue)
	if c.ctx.Err() != nil {
		return nil, adapters.Errorf(adapters.ErrClosed, op, "consumer is closed")
	}
	if err := c.join(); err != nil {
		return nil, mapErr(op, err)
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if c.ctx.Err() != nil {
			return nil, adapters.Errorf(adapters.ErrClosed, op, "consumer is closed")
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.ctx.Done():
			return nil, adapters.Errorf(adapters.ErrClosed, op, "consumer is closed")
		case d := <-c.out:
			if d.start() {
				return d, nil
			}
			// Read in a generation that has ended: the partition's next
			// owner reads it again from the committed offset.
		}
	}
}

// Close stops the consumer. Held deliveries are re-queued at once with
// their attempt count increased (as if their leases had expired), then the
// consumer leaves its groups so that Kafka reassigns its partitions.
func (c *consumer) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		c.closed = true
		held := make([]*delivery, 0, len(c.held))
		for d := range c.held {
			held = append(held, d)
		}
		c.mu.Unlock()
		c.cancel()
		var wg sync.WaitGroup
		for _, d := range held {
			if d.take() {
				wg.Go(func() { c.release(d, "consumer closed", false) })
			}
		}
		wg.Wait()
		c.joinOnce.Do(func() {}) // no join after Close
		c.mu.Lock()
		main := c.main
		c.mu.Unlock()
		if main != nil {
			main.close()
		}
		if c.retry != nil {
			c.retry.close()
		}
		c.b.mu.Lock()
		delete(c.b.consumers, c)
		c.b.mu.Unlock()
	})
	return nil
}

func (c *consumer) forget(d *delivery) {
	c.mu.Lock()
	delete(c.held, d)
	c.mu.Unlock()
}

// release re-queues a delivery whose lease ended: a copy with attempt + 1
// goes to the back of the read topic, into a partition another member owns
// if there is one (or, with the attempts used up, to the dead-letter topic),
// then the original offset is settled. persistent retries a failed send
// while the partition is still ours; otherwise one try is made and a
// failure leaves the record unsettled, to be read again by the partition's
// next owner.
func (c *consumer) release(d *delivery, why string, persistent bool) {
	op := fmt.Sprintf("kafka: release item of %q", c.queue)
	var out kafkago.Message
	if d.slot != nil && (d.attempt < c.cfg.MaxAttempts || !persistent) {
		// Ordered: the partition hands the record out again itself (or,
		// when the consumer closes, its next owner reads it again).
		d.gone()
		d.signal(outcome{})
		return
	}
	if !c.dead && d.attempt >= c.cfg.MaxAttempts {
		out = requeue(c.b.deadTopic(c.queue), d.km,
			header(adapters.HeaderDeadLetterReason, fmt.Sprintf("%s on attempt %d of %d (max attempts reached)", why, d.attempt, c.cfg.MaxAttempts)))
	} else {
		out = c.elsewhere(requeue(c.topic, d.km, attemptHeader(d.attempt+1)))
	}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := c.b.write(ctx, op, out)
		cancel()
		if err == nil {
			break
		}
		if !persistent || !d.ps.valid(d.epoch) {
			c.b.log.Warn("re-queue of an item failed; it returns when its partition is read again", "queue", c.queue, "err", err)
			d.gone()
			return
		}
		c.b.log.Warn("re-queue of an expired item failed; retrying", "queue", c.queue, "err", err)
		time.Sleep(500 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.finish(ctx, op); err != nil {
		c.b.log.Debug("commit after re-queue failed", "queue", c.queue, "err", err)
	}
	d.signal(outcome{settled: true})
}

// elsewhere points km at a partition of the read topic that this consumer
// does not own, so that a released item goes to another consumer when there
// is one. This gives up per-key placement, which the adapter does not
// promise (Capabilities.Ordering is Unsupported).
func (c *consumer) elsewhere(km kafkago.Message) kafkago.Message {
	c.mu.Lock()
	main := c.main
	c.mu.Unlock()
	if main == nil {
		return km
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	all, err := c.b.partitions(ctx, c.topic)
	if err != nil {
		return km
	}
	mine := main.owned()
	others := slices.DeleteFunc(all, func(p int) bool { return slices.Contains(mine, p) })
	if len(others) == 0 {
		return km
	}
	p := others[rand.IntN(len(others))]
	km.Headers = append(km.Headers, header(hdrPartition, strconv.Itoa(p)))
	return km
}

const (
	stHeld = iota // leased to the caller
	stBusy        // being settled or released
	stGone        // settled, released or lost
)

// delivery is one record handed out by Receive.
type delivery struct {
	c       *consumer
	ps      *partState
	epoch   int
	slot    *slot // ordered queues
	km      kafkago.Message
	msg     adapters.Message
	attempt int

	mu       sync.Mutex
	state    int
	deadline time.Time
	timer    *time.Timer
}

var _ adapters.Delivery = (*delivery)(nil)

// start begins the lease; false if the partition was lost meanwhile.
func (d *delivery) start() bool {
	if !d.ps.valid(d.epoch) {
		return false
	}
	lease := d.c.cfg.Lease
	d.mu.Lock()
	d.deadline = time.Now().Add(lease)
	d.timer = time.AfterFunc(lease, d.expire)
	d.mu.Unlock()
	d.c.mu.Lock()
	d.c.held[d] = struct{}{}
	d.c.mu.Unlock()
	return true
}

func (d *delivery) expire() {
	d.mu.Lock()
	if d.state != stHeld {
		d.mu.Unlock()
		return
	}
	if rem := time.Until(d.deadline); rem > 0 {
		d.timer.Reset(rem)
		d.mu.Unlock()
		return
	}
	if !d.ps.valid(d.epoch) {
		d.state = stGone
		d.mu.Unlock()
		d.c.forget(d)
		return
	}
	d.state = stBusy
	d.mu.Unlock()
	d.c.release(d, "lease expired", true)
}

// take moves a held delivery to busy (for Close); false if not held.
func (d *delivery) take() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state != stHeld || !d.ps.valid(d.epoch) {
		return false
	}
	d.state = stBusy
	d.timer.Stop()
	return true
}

func (d *delivery) gone() {
	d.mu.Lock()
	d.state = stGone
	d.mu.Unlock()
	d.c.forget(d)
}

// begin moves a held delivery to busy for a settle call.
func (d *delivery) begin(ctx context.Context, op string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.state != stHeld:
		return adapters.Errorf(adapters.ErrLeaseLost, op, "already settled, or its lease expired")
	case !d.ps.valid(d.epoch):
		d.state = stGone
		go d.c.forget(d)
		return lostErr(op)
	case !time.Now().Before(d.deadline):
		return adapters.Errorf(adapters.ErrLeaseLost, op, "lease expired at %s", d.deadline.Format(time.RFC3339Nano))
	}
	d.state = stBusy
	d.timer.Stop()
	return nil
}

// abort returns a busy delivery to held after a failed settle.
func (d *delivery) abort() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.state = stHeld
	d.timer.Reset(max(time.Until(d.deadline), 0))
}

// finish settles the record's offset and commits its partition's mark.
func (d *delivery) finish(ctx context.Context, op string) error {
	d.gone()
	return d.ps.settle(ctx, op, d.epoch, d.km.Offset)
}

func (d *delivery) Message() adapters.Message { return d.msg }
func (d *delivery) Attempt() int              { return d.attempt }
func (d *delivery) Queue() string             { return d.c.queue }

func (d *delivery) LeaseDeadline() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.deadline
}

// Ack settles the item and commits its partition's low-water mark. The ack
// is durable once every earlier record of the partition is settled too;
// until then a crash re-delivers it.
func (d *delivery) Ack(ctx context.Context) error {
	op := fmt.Sprintf("kafka: ack %q", d.c.queue)
	if err := d.begin(ctx, op); err != nil {
		return err
	}
	defer d.signal(outcome{settled: true})
	return d.finish(ctx, op)
}

// Nack re-queues the item with attempt + 1: at once to the back of the
// queue, or with a delay through the retry topic. With the attempts used up
// it goes to the dead-letter topic instead.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	op := fmt.Sprintf("kafka: nack %q", d.c.queue)
	if err := adapters.ValidateDelay(op, delay, capabilities); err != nil {
		return err
	}
	if err := d.begin(ctx, op); err != nil {
		return err
	}
	c := d.c
	var out kafkago.Message
	switch {
	case d.slot != nil && d.attempt < c.cfg.MaxAttempts:
		// Ordered: handed out again by its partition, before anything
		// behind it.
		d.gone()
		d.signal(outcome{delay: delay})
		return nil
	case !c.dead && d.attempt >= c.cfg.MaxAttempts:
		out = requeue(c.b.deadTopic(c.queue), d.km,
			header(adapters.HeaderDeadLetterReason, fmt.Sprintf("nacked on attempt %d of %d (max attempts reached)", d.attempt, c.cfg.MaxAttempts)))
	case delay > 0:
		target := "q"
		if c.dead {
			target = "d"
		}
		out = requeue(c.b.retryTopic(c.queue), d.km, attemptHeader(d.attempt+1), dueHeader(time.Now().Add(delay)), header(hdrTarget, target))
	default:
		out = c.elsewhere(requeue(c.topic, d.km, attemptHeader(d.attempt+1)))
	}
	if err := c.b.write(ctx, op, out); err != nil {
		d.abort()
		return err
	}
	defer d.signal(outcome{settled: true})
	return d.finish(ctx, op)
}

// Extend restarts the emulated lease timer at d from now.
func (d *delivery) Extend(ctx context.Context, dur time.Duration) error {
	op := fmt.Sprintf("kafka: extend %q", d.c.queue)
	if err := adapters.ValidateExtend(op, dur, d.c.cfg.Lease); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.state != stHeld:
		return adapters.Errorf(adapters.ErrLeaseLost, op, "already settled, or its lease expired")
	case !d.ps.valid(d.epoch):
		return lostErr(op)
	case !time.Now().Before(d.deadline):
		return adapters.Errorf(adapters.ErrLeaseLost, op, "lease expired at %s", d.deadline.Format(time.RFC3339Nano))
	}
	d.deadline = time.Now().Add(dur)
	d.timer.Reset(dur)
	return nil
}

// DeadLetter moves the item to the dead-letter topic with the reason in
// HeaderDeadLetterReason.
func (d *delivery) DeadLetter(ctx context.Context, reason string) error {
	op := fmt.Sprintf("kafka: dead-letter %q", d.c.queue)
	if err := d.begin(ctx, op); err != nil {
		return err
	}
	c := d.c
	out := requeue(c.b.deadTopic(c.queue), d.km, header(adapters.HeaderDeadLetterReason, reason))
	if err := c.b.write(ctx, op, out); err != nil {
		d.abort()
		return err
	}
	defer d.signal(outcome{settled: true})
	return d.finish(ctx, op)
}
