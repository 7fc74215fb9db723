package rabbitmq

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/clusterbus/clusterbus/adapters"
)

// Consume opens a channel with basic.qos(opts.Prefetch) and a manual-ack
// consumer on the queue (or its dead-letter queue). The channel is reopened
// after a reconnect; deliveries held on the old one are lost to this
// consumer (ErrLeaseLost) and redelivered by the broker.
func (b *Broker) Consume(ctx context.Context, queue string, opts adapters.ConsumeOptions) (adapters.Consumer, error) {
	op := "rabbitmq: consume " + queue
	if opts.DeadLetters {
		op += " (dead letters)"
	}
	if b.isClosed() {
		return nil, adapters.Errorf(adapters.ErrClosed, op, "broker closed")
	}
	if err := adapters.ValidateName("queue", queue); err != nil {
		return nil, adapters.Wrap(adapters.ErrInvalidArgument, op, err)
	}
	if opts.Prefetch < 0 || opts.Prefetch > 65535 {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "ConsumeOptions.Prefetch %d: want 0 to 65535", opts.Prefetch)
	}
	prefetch := max(opts.Prefetch, 1)
	cfg, err := b.queueConfig(ctx, queue)
	if err != nil {
		return nil, mapErr(op, err)
	}
	c := &consumer{
		b: b, op: op, queue: queue, cfg: cfg, dead: opts.DeadLetters, prefetch: prefetch,
		source: queueName(queue),
		out:    make(chan *delivery, prefetch),
		done:   make(chan struct{}), exited: make(chan struct{}), term: make(chan struct{}),
		held: map[*delivery]struct{}{},
	}
	if c.dead {
		c.source = dlqName(queue)
	}
	ch, closes, dch, err := c.setup(ctx)
	if err != nil {
		return nil, mapErr(op, err)
	}
	b.acquireMover(c.source) // moves the items nacked with a delay back
	b.wg.Add(1)
	b.consumers.Add(1)
	go c.run(ch, closes, dch)
	return c, nil
}

type consumer struct {
	b        *Broker
	op       string
	queue    string
	source   string // the broker queue consumed
	cfg      adapters.QueueConfig
	dead     bool
	prefetch int
	out      chan *delivery
	done     chan struct{} // closed by Close
	exited   chan struct{} // closed when run returns
	term     chan struct{} // closed when termErr is set
	termErr  error
	once     sync.Once

	mu   sync.Mutex
	held map[*delivery]struct{}
}

func (c *consumer) setup(ctx context.Context) (*amqp.Channel, chan *amqp.Error, <-chan amqp.Delivery, error) {
	ch, _, err := c.b.channel(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))
	err = ch.Qos(c.prefetch, 0, false)
	var dch <-chan amqp.Delivery
	if err == nil {
		dch, err = ch.Consume(c.source, "", false, false, false, false, nil)
	}
	if err != nil {
		ch.Close()
		if isCode(err, amqp.NotFound) {
			return nil, nil, nil, adapters.Errorf(adapters.ErrNotFound, "", "queue %q does not exist", c.queue)
		}
		return nil, nil, nil, err
	}
	return ch, closes, dch, nil
}

func (c *consumer) run(ch *amqp.Channel, closes chan *amqp.Error, dch <-chan amqp.Delivery) {
	defer c.b.wg.Done()
	defer close(c.exited)
	consuming := true
	defer func() {
		if consuming {
			c.b.consumers.Done()
		}
	}()
	for {
	consume:
		for {
			select {
			case d, ok := <-dch:
				if !ok {
					break consume
				}
				c.handle(ch, d)
			case <-c.done:
				syncAcks(ch, c.prefetch)
				ch.Close() // the broker requeues what the channel held
				c.loseAll()
				return
			case <-c.b.done:
				syncAcks(ch, c.prefetch)
				consuming = false
				c.b.consumers.Done() // Broker.Close may close the connection now
				c.loseAll()
				return
			}
		}
		c.loseAll()
		c.drain()
		// The delivery channel also ends when the broker cancels the
		// consumer (queue deleted, quorum leader moved) with the channel
		// still open: close it, releasing what it held.
		ch.Close()
		var cause *amqp.Error
		select {
		case cause = <-closes:
		case <-time.After(time.Second):
		}
		if cause != nil && cause.Code == amqp.NotFound {
			c.terminate(adapters.Errorf(adapters.ErrNotFound, c.op, "queue %q was deleted", c.queue))
			return
		}
		c.b.log.Warn("rabbitmq: consumer channel closed; reopening", "queue", c.source, "cause", cause)
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-c.done:
			case <-c.b.done:
			case <-ctx.Done():
			}
			cancel()
		}()
		var err error
		for attempt := 0; ; attempt++ {
			ch, closes, dch, err = c.setup(ctx)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, adapters.ErrNotFound) {
				cancel()
				c.terminate(adapters.Wrap(adapters.ErrNotFound, c.op, err))
				return
			}
			c.b.log.Warn("rabbitmq: consumer reopen failed", "queue", c.source, "err", err)
			if !c.b.sleep(backoff(attempt, c.b.opts.MaxBackoff)) {
				cancel()
				return
			}
		}
		cancel()
		c.b.log.Info("rabbitmq: consumer resumed", "queue", c.source)
	}
}

// syncAcks makes one synchronous round trip on ch (basic.qos with the
// consumer's prefetch, which the broker answers after the methods sent
// before it), so the acknowledgements sent on ch have reached the broker's
// channel before it is closed:
// RabbitMQ (seen on 3.10 with quorum queues) can requeue items acked just
// before their channel closed. It waits at most two seconds.
func syncAcks(ch *amqp.Channel, prefetch int) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = ch.Qos(prefetch, 0, false) // the same prefetch: nothing changes
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
}

func (c *consumer) terminate(err error) {
	c.termErr = err
	close(c.term)
}

// handle wraps a broker delivery under a lease and queues it for Receive.
func (c *consumer) handle(ch *amqp.Channel, d amqp.Delivery) {
	now := time.Now()
	dl := &delivery{
		c: c, ch: ch, tag: d.DeliveryTag, msg: fromDelivery(&d), firstAt: now,
		attempt: intHeader(d.Headers, "x-delivery-count") + 1,
	}
	if c.dead {
		if dl.msg.Headers[adapters.HeaderDeadLetterReason] == "" {
			if r := deadLetterReason(d.Headers, c.cfg.MaxAttempts); r != "" {
				if dl.msg.Headers == nil {
					dl.msg.Headers = map[string]string{}
				}
				dl.msg.Headers[adapters.HeaderDeadLetterReason] = r
			}
		}
	} else {
		dl.attempt += intHeader(d.Headers, headerAttempts)
	}
	c.mu.Lock()
	c.held[dl] = struct{}{}
	c.mu.Unlock()
	if !c.dead && dl.attempt > c.cfg.MaxAttempts {
		// Retries through a delay queue restart RabbitMQ's delivery
		// count; the adapter enforces MaxAttempts over all of them.
		dl.state = stateSettling
		reason := "max attempts (" + strconv.Itoa(c.cfg.MaxAttempts) + ") exceeded"
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := dl.deadLetter(ctx, reason)
		cancel()
		if err != nil {
			c.b.log.Warn("rabbitmq: dead-lettering an item over its attempts failed; it will come back", "queue", c.source, "err", err)
		}
		return
	}
	// The lease timer starts when Receive hands the item out; until then
	// the item is held by the channel only (see the package doc).
	select {
	case c.out <- dl:
	case <-c.done:
	case <-c.b.done:
	}
}

// loseAll ends the leases of every delivery held on the dead channel.
func (c *consumer) loseAll() {
	c.mu.Lock()
	held := c.held
	c.held = map[*delivery]struct{}{}
	c.mu.Unlock()
	for dl := range held {
		dl.mu.Lock()
		dl.lost = true
		if dl.state == stateHeld {
			dl.state = stateDone
		}
		if dl.timer != nil {
			dl.timer.Stop()
		}
		dl.mu.Unlock()
	}
}

// drain drops buffered deliveries of a dead channel.
func (c *consumer) drain() {
	for {
		select {
		case <-c.out:
		default:
			return
		}
	}
}

func (c *consumer) forget(dl *delivery) {
	c.mu.Lock()
	delete(c.held, dl)
	c.mu.Unlock()
}

// Receive returns the next delivery whose lease still holds.
func (c *consumer) Receive(ctx context.Context) (adapters.Delivery, error) {
	for {
		if c.closed() {
			return nil, adapters.Errorf(adapters.ErrClosed, c.op, "consumer closed")
		}
		select {
		case dl := <-c.out:
			if dl.start(c.cfg.Lease) {
				return dl, nil
			}
		case <-c.term:
			return nil, c.termErr
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.done:
		case <-c.b.done:
		}
	}
}

func (c *consumer) closed() bool {
	select {
	case <-c.done:
		return true
	case <-c.b.done:
		return true
	default:
		return false
	}
}

// Close closes the consumer's channel: RabbitMQ requeues its unsettled
// deliveries at once (each counts as a delivery attempt).
func (c *consumer) Close() error {
	c.once.Do(func() {
		close(c.done)
		c.b.releaseMover(c.source)
	})
	<-c.exited
	return nil
}

type dstate int

const (
	stateHeld     dstate = iota
	stateSettling        // Ack/Nack/DeadLetter in progress
	stateDone            // settled, expired or lost
)

type delivery struct {
	c       *consumer
	ch      *amqp.Channel
	tag     uint64
	msg     adapters.Message
	attempt int
	firstAt time.Time

	mu       sync.Mutex
	state    dstate
	lost     bool // the channel died
	deadline time.Time
	timer    *time.Timer
	seq      uint64
}

func (d *delivery) Message() adapters.Message { return d.msg }
func (d *delivery) Attempt() int              { return d.attempt }
func (d *delivery) Queue() string             { return d.c.queue }

func (d *delivery) LeaseDeadline() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.deadline
}

// start begins the lease when Receive hands the delivery out; it reports
// false if the delivery was lost while buffered.
func (d *delivery) start(lease time.Duration) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state != stateHeld {
		return false
	}
	d.deadline = time.Now().Add(lease)
	d.arm(lease)
	return true
}

// arm (re)starts the lease timer; d.mu is held.
func (d *delivery) arm(after time.Duration) {
	d.seq++
	seq := d.seq
	if d.timer != nil {
		d.timer.Stop()
	}
	d.timer = time.AfterFunc(after, func() { d.expire(seq) })
}

// expire ends the lease: the adapter requeues the item, which RabbitMQ
// counts as a delivery (x-delivery-count + 1).
func (d *delivery) expire(seq uint64) {
	d.mu.Lock()
	if d.state != stateHeld || seq != d.seq {
		d.mu.Unlock()
		return
	}
	d.state = stateDone
	d.mu.Unlock()
	d.c.forget(d)
	if err := d.ch.Nack(d.tag, false, true); err != nil {
		d.c.b.log.Debug("rabbitmq: requeue on lease expiry failed (the channel is gone, so the broker requeues)", "err", err)
	}
}

func (d *delivery) leaseLost(op string) error {
	return adapters.Errorf(adapters.ErrLeaseLost, d.c.op+": "+op, "delivery %s (attempt %d) is no longer held", d.msg.ID, d.attempt)
}

// begin moves a held delivery to settling, stopping its timer.
func (d *delivery) begin(op string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state != stateHeld {
		return d.leaseLost(op)
	}
	d.state = stateSettling
	d.timer.Stop()
	return nil
}

// finish ends settling: settled, or back to held if it failed.
func (d *delivery) finish(settled bool) {
	d.mu.Lock()
	if settled || d.lost {
		d.state = stateDone
		d.mu.Unlock()
		d.c.forget(d)
		return
	}
	d.state = stateHeld
	d.arm(max(time.Until(d.deadline), time.Millisecond))
	d.mu.Unlock()
}

func (d *delivery) ack(op string) error {
	if err := d.ch.Ack(d.tag, false); err != nil {
		d.finish(true)
		return adapters.Wrap(adapters.ErrLeaseLost, d.c.op+": "+op, err)
	}
	d.finish(true)
	return nil
}

func (d *delivery) Ack(ctx context.Context) error {
	if err := d.begin("ack"); err != nil {
		return err
	}
	return d.ack("ack")
}

func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	op := d.c.op + ": nack"
	if err := adapters.ValidateDelay(op, delay, d.c.b.caps); err != nil {
		return err
	}
	if err := d.begin("nack"); err != nil {
		return err
	}
	if !d.c.dead && d.attempt >= d.c.cfg.MaxAttempts {
		return d.deadLetter(ctx, "max attempts ("+strconv.Itoa(d.c.cfg.MaxAttempts)+") used up; last attempt was nacked")
	}
	if delay == 0 {
		if err := d.ch.Nack(d.tag, false, true); err != nil {
			d.finish(true)
			return adapters.Wrap(adapters.ErrLeaseLost, op, err)
		}
		d.finish(true)
		return nil
	}
	name := delayedName(d.c.source)
	p := toPublishing(d.msg, true)
	p.Headers[headerAttempts] = int64(d.attempt)
	p.Headers[headerDue] = time.Now().Add(delay).UnixMilli()
	var err error
	for try := 0; try < 2; try++ {
		if err = d.c.b.ensureDelayQueue(ctx, name, try > 0); err != nil {
			break
		}
		if err = d.c.b.publish(ctx, "", name, true, p); !errors.Is(err, errNoRoute) {
			break // sent, or failed for good; errNoRoute: the delay queue was deleted
		}
	}
	if err != nil {
		d.finish(false)
		return mapErr(op, err)
	}
	// The copy is confirmed in the delay queue; only now give up the
	// original. A failure from here on leaves a duplicate, never a loss.
	return d.ack("nack")
}

func (d *delivery) Extend(ctx context.Context, by time.Duration) error {
	op := d.c.op + ": extend"
	if err := adapters.ValidateExtend(op, by, d.c.cfg.Lease); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state != stateHeld {
		return d.leaseLost("extend")
	}
	until := time.Now().Add(by)
	if limit := d.firstAt.Add(d.c.b.opts.ConsumerTimeout); until.After(limit) {
		return adapters.Errorf(adapters.ErrUnsupported, op,
			"extend to %s: RabbitMQ's consumer_timeout (%s) closes the channel of a delivery unacknowledged that long (limit %s)",
			until.Format(time.RFC3339Nano), d.c.b.opts.ConsumerTimeout, limit.Format(time.RFC3339Nano))
	}
	if until.After(d.deadline) {
		d.deadline = until
		d.arm(by)
	}
	return nil
}

func (d *delivery) DeadLetter(ctx context.Context, reason string) error {
	if err := d.begin("dead-letter"); err != nil {
		return err
	}
	return d.deadLetter(ctx, reason)
}

// deadLetter publishes the item with the reason to the dead-letter queue,
// then acks it; the delivery is settling.
func (d *delivery) deadLetter(ctx context.Context, reason string) error {
	op := d.c.op + ": dead-letter"
	if reason == "" {
		reason = "dead-lettered without a reason"
	}
	p := toPublishing(d.msg, true)
	p.Headers[adapters.HeaderDeadLetterReason] = reason
	p.Headers[HeaderDeadLetterAttempts] = strconv.Itoa(d.attempt)
	err := d.c.b.publish(ctx, "", dlqName(d.c.queue), true, p)
	if errors.Is(err, errNoRoute) {
		err = adapters.Errorf(adapters.ErrNotFound, op, "dead-letter queue %q does not exist", dlqName(d.c.queue))
	}
	if err != nil {
		d.finish(false)
		return mapErr(op, err)
	}
	return d.ack("dead-letter")
}
