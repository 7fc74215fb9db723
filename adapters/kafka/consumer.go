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
	"github.com/clusterbus/clusterbus/adapters/internal/driver"
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
	if err := opts.Validate(op, 0); err != nil {
		return nil, err
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
		retrySem: make(chan struct{}, maxRetryHeld)}
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
		return nil, mapCtxErr(ctx, op, err)
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
	held        driver.Held[*delivery] // handed out by Receive, lease not done

	mu     sync.Mutex
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
		return nil, mapCtxErr(ctx, op, err)
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
			// Read in a generation that has ended, or the consumer is
			// closing: the partition's next owner reads it again from the
			// committed offset.
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
		c.mu.Unlock()
		held := c.held.Close()
		c.cancel()
		var wg sync.WaitGroup
		for _, d := range held {
			// A lease of a partition already lost needs nothing: the
			// partition's next owner reads the record again.
			if d.lease.Take() && d.ps.valid(d.epoch) {
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

// release re-queues a delivery whose lease ended (expired, or taken by
// Close): a copy with attempt + 1 goes to the back of the read topic, into a
// partition another member owns if there is one (or, with the attempts used
// up, to the dead-letter topic), then the original offset is settled. persistent retries a failed send
// while the partition is still ours; otherwise one try is made and a
// failure leaves the record unsettled, to be read again by the partition's
// next owner.
func (c *consumer) release(d *delivery, why string, persistent bool) {
	op := fmt.Sprintf("kafka: release item of %q", c.queue)
	var out kafkago.Message
	if d.slot != nil && (d.attempt < c.cfg.MaxAttempts || !persistent) {
		// Ordered: the partition hands the record out again itself (or,
		// when the consumer closes, its next owner reads it again).
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
			return
		}
		c.b.log.Warn("re-queue of an expired item failed; retrying", "queue", c.queue, "err", err)
		time.Sleep(500 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.ps.settle(ctx, op, d.epoch, d.km.Offset); err != nil {
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

// delivery is one record handed out by Receive.
type delivery struct {
	c       *consumer
	ps      *partState
	epoch   int
	slot    *slot // ordered queues
	km      kafkago.Message
	msg     adapters.Message
	attempt int
	lease   driver.Lease // the emulated lease; its Expire hook re-queues
}

var _ adapters.Delivery = (*delivery)(nil)

// start begins the lease; false if the partition was lost or the consumer
// closed meanwhile (the partition's next owner then reads the record again).
func (d *delivery) start() bool {
	if !d.ps.valid(d.epoch) {
		return false
	}
	d.lease.Start(time.Now().Add(d.c.cfg.Lease), driver.Hooks{
		Expire: d.expire,
		Done:   func() { d.c.held.Remove(d) },
		Valid: func() error {
			if !d.ps.valid(d.epoch) {
				return errors.New(lostWhy)
			}
			return nil
		},
	})
	if !d.c.held.Add(d) {
		d.lease.Take()
		return false
	}
	return true
}

// expire re-queues a delivery whose lease ran out (the lease's Expire hook).
func (d *delivery) expire() {
	if !d.ps.valid(d.epoch) {
		return // the partition's next owner reads the record again
	}
	d.c.release(d, "lease expired", true)
}

// settle ends a settling operation: it settles the record's offset and
// commits its partition's mark. The offset is marked done whatever the
// commit returns, so the lease ends either way.
func (d *delivery) settle(ctx context.Context, op string) error {
	err := d.ps.settle(ctx, op, d.epoch, d.km.Offset)
	d.lease.Settled()
	d.signal(outcome{settled: true})
	return err
}

func (d *delivery) Message() adapters.Message { return d.msg }
func (d *delivery) Attempt() int              { return d.attempt }
func (d *delivery) Queue() string             { return d.c.queue }

func (d *delivery) LeaseDeadline() time.Time { return d.lease.Deadline() }

// Ack settles the item and moves its partition's low-water mark; the mark
// is committed in the background, shared with the acks around it (see the
// package doc). The ack is durable once that commit lands and every earlier
// record of the partition is settled too; until then a crash re-delivers it.
func (d *delivery) Ack(ctx context.Context) error {
	op := "kafka: ack " + strconv.Quote(d.c.queue)
	if err := d.lease.Begin(ctx, op); err != nil {
		return err
	}
	err := d.ps.markDone(op, d.epoch, d.km.Offset)
	d.lease.Settled()
	d.signal(outcome{settled: true})
	if err == nil {
		d.ps.r.commitSoon()
	}
	return err
}

// Nack re-queues the item with attempt + 1: at once to the back of the
// queue, or with a delay through the retry topic. With the attempts used up
// it goes to the dead-letter topic instead.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	op := fmt.Sprintf("kafka: nack %q", d.c.queue)
	if err := adapters.ValidateDelay(op, delay, capabilities); err != nil {
		return err
	}
	if err := d.lease.Begin(ctx, op); err != nil {
		return err
	}
	c := d.c
	var out kafkago.Message
	switch {
	case d.slot != nil && d.attempt < c.cfg.MaxAttempts:
		// Ordered: handed out again by its partition, before anything
		// behind it.
		d.lease.Settled()
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
		d.lease.Failed(err)
		return err
	}
	return d.settle(ctx, op)
}

// Extend restarts the emulated lease timer at d from now.
func (d *delivery) Extend(ctx context.Context, dur time.Duration) error {
	op := fmt.Sprintf("kafka: extend %q", d.c.queue)
	if err := adapters.ValidateExtend(op, dur, d.c.cfg.Lease); err != nil {
		return err
	}
	if err := d.lease.Begin(ctx, op); err != nil {
		return err
	}
	d.lease.Extended(time.Now().Add(dur))
	return nil
}

// DeadLetter moves the item to the dead-letter topic with the reason in
// HeaderDeadLetterReason.
func (d *delivery) DeadLetter(ctx context.Context, reason string) error {
	op := fmt.Sprintf("kafka: dead-letter %q", d.c.queue)
	if err := d.lease.Begin(ctx, op); err != nil {
		return err
	}
	c := d.c
	out := requeue(c.b.deadTopic(c.queue), d.km, header(adapters.HeaderDeadLetterReason, reason))
	if err := c.b.write(ctx, op, out); err != nil {
		d.lease.Failed(err)
		return err
	}
	return d.settle(ctx, op)
}
