package rabbitmq

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/internal/driver"
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
	if err := opts.Validate(op, 65535); err != nil { // basic.qos's prefetch-count is 16 bits
		return nil, err
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
}

// consumerChannel is one channel of a consumer and the deliveries that
// Receive handed out on it. The consumer opens a new one after a reconnect;
// the deliveries of the old one are lost with it. (A driver.Held per
// channel rather than per consumer: Held cannot be reopened once closed.)
type consumerChannel struct {
	ch   *amqp.Channel
	held driver.Held[*delivery]
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
	cc := &consumerChannel{ch: ch}
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
				c.handle(cc, d)
			case <-c.done:
				c.release(cc, 2*time.Second)
				syncAcks(ch, c.prefetch)
				ch.Close() // the broker requeues what the channel held
				return
			case <-c.b.done:
				c.release(cc, 2*time.Second)
				syncAcks(ch, c.prefetch)
				consuming = false
				c.b.consumers.Done() // Broker.Close may close the connection now
				return
			}
		}
		c.release(cc, 0)
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
		cc = &consumerChannel{ch: ch}
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

// handle wraps a broker delivery received on cc and queues it for Receive.
func (c *consumer) handle(cc *consumerChannel, d amqp.Delivery) {
	now := time.Now()
	dl := &delivery{
		c: c, cc: cc, tag: d.DeliveryTag, msg: fromDelivery(&d), firstAt: now,
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
	if !c.dead && dl.attempt > c.cfg.MaxAttempts {
		// Retries through a delay queue restart RabbitMQ's delivery
		// count; the adapter enforces MaxAttempts over all of them.
		reason := "max attempts (" + strconv.Itoa(c.cfg.MaxAttempts) + ") exceeded"
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		dl.lease.Start(now.Add(c.cfg.Lease), dl.hooks())
		err := dl.lease.Begin(ctx, dl.op("dead-letter"))
		if err == nil {
			err = dl.deadLetter(ctx, reason)
		}
		if err != nil {
			c.b.log.Warn("rabbitmq: dead-lettering an item over its attempts failed; it will come back", "queue", c.source, "err", err)
			if dl.lease.Take() {
				dl.requeue()
			}
		}
		return
	}
	// The lease starts when Receive hands the item out; until then the
	// item is held by the channel only (see the package doc).
	select {
	case c.out <- dl:
	case <-c.done:
	case <-c.b.done:
	}
}

// release ends the leases of the deliveries handed out on cc: the consumer
// closes, or cc died (RabbitMQ requeues what a closed channel held, so
// nothing is handed back here). With wait > 0 it then waits, at most that
// long in all, for the operations already running on them to end, so that
// an Ack that raced Close has been sent before the caller syncs and closes
// the channel.
func (c *consumer) release(cc *consumerChannel, wait time.Duration) {
	held := cc.held.Close()
	for _, dl := range held {
		dl.lease.Take()
	}
	if wait <= 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for _, dl := range held {
		if dl.lease.Wait(ctx) != nil {
			return
		}
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

// delivery is one item received on a consumer channel. Its lease starts
// when Receive hands it out.
type delivery struct {
	c       *consumer
	cc      *consumerChannel
	tag     uint64
	msg     adapters.Message
	attempt int
	firstAt time.Time
	lease   driver.Lease
}

func (d *delivery) Message() adapters.Message { return d.msg }
func (d *delivery) Attempt() int              { return d.attempt }
func (d *delivery) Queue() string             { return d.c.queue }
func (d *delivery) LeaseDeadline() time.Time  { return d.lease.Deadline() }

// op names an operation on the delivery in errors, which say what was lost.
func (d *delivery) op(verb string) string {
	return d.c.op + ": " + verb + " message " + strconv.Quote(d.msg.ID) + " (attempt " + strconv.Itoa(d.attempt) + ")"
}

func (d *delivery) hooks() driver.Hooks {
	return driver.Hooks{
		Expire: d.requeue,
		Done:   func() { d.cc.held.Remove(d) },
		Valid: func() error {
			if d.cc.ch.IsClosed() {
				return errors.New("its channel closed; RabbitMQ redelivers the item")
			}
			return nil
		},
	}
}

// start begins the lease when Receive hands the delivery out; it reports
// false if the delivery's channel was lost while it was buffered.
func (d *delivery) start(lease time.Duration) bool {
	d.lease.Start(time.Now().Add(lease), d.hooks())
	if !d.cc.held.Add(d) || d.cc.ch.IsClosed() {
		d.lease.Take() // the broker requeues what the dead channel held
		return false
	}
	return true
}

// requeue hands the item back (the lease expired, or dead-lettering an item
// over its attempts failed); RabbitMQ counts that as a delivery
// (x-delivery-count + 1).
func (d *delivery) requeue() {
	if err := d.cc.ch.Nack(d.tag, false, true); err != nil {
		d.c.b.log.Debug("rabbitmq: requeue failed (the channel is gone, so the broker requeues)", "err", err)
	}
}

// ack acks the item and ends the operation; the lease is settling.
func (d *delivery) ack(op string) error {
	err := d.cc.ch.Ack(d.tag, false)
	d.lease.Settled()
	if err != nil {
		return adapters.Wrap(adapters.ErrLeaseLost, op, err)
	}
	return nil
}

func (d *delivery) Ack(ctx context.Context) error {
	op := d.op("ack")
	if err := d.lease.Begin(ctx, op); err != nil {
		return err
	}
	return d.ack(op)
}

func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	op := d.op("nack")
	if err := adapters.ValidateDelay(op, delay, d.c.b.caps); err != nil {
		return err
	}
	if err := d.lease.Begin(ctx, op); err != nil {
		return err
	}
	if !d.c.dead && d.attempt >= d.c.cfg.MaxAttempts {
		return d.deadLetter(ctx, "max attempts ("+strconv.Itoa(d.c.cfg.MaxAttempts)+") used up; last attempt was nacked")
	}
	if delay == 0 {
		err := d.cc.ch.Nack(d.tag, false, true)
		d.lease.Settled()
		if err != nil {
			return adapters.Wrap(adapters.ErrLeaseLost, op, err)
		}
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
		err = mapErr(op, err)
		d.lease.Failed(err)
		return err
	}
	// The copy is confirmed in the delay queue; only now give up the
	// original. A failure from here on leaves a duplicate, never a loss.
	return d.ack(op)
}

func (d *delivery) Extend(ctx context.Context, by time.Duration) error {
	op := d.op("extend")
	if err := adapters.ValidateExtend(op, by, d.c.cfg.Lease); err != nil {
		return err
	}
	if err := d.lease.Begin(ctx, op); err != nil {
		return err
	}
	until := time.Now().Add(by)
	if limit := d.firstAt.Add(d.c.b.opts.ConsumerTimeout); until.After(limit) {
		err := adapters.Errorf(adapters.ErrUnsupported, op,
			"extend to %s: RabbitMQ's consumer_timeout (%s) closes the channel of a delivery unacknowledged that long (limit %s)",
			until.Format(time.RFC3339Nano), d.c.b.opts.ConsumerTimeout, limit.Format(time.RFC3339Nano))
		d.lease.Failed(err)
		return err
	}
	if deadline := d.lease.Deadline(); deadline.After(until) {
		until = deadline // Extend never shortens the lease
	}
	d.lease.Extended(until)
	return nil
}

func (d *delivery) DeadLetter(ctx context.Context, reason string) error {
	if err := d.lease.Begin(ctx, d.op("dead-letter")); err != nil {
		return err
	}
	return d.deadLetter(ctx, reason)
}

// deadLetter publishes the item with the reason to the dead-letter queue,
// then acks it; the lease is settling.
func (d *delivery) deadLetter(ctx context.Context, reason string) error {
	op := d.op("dead-letter")
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
		err = mapErr(op, err)
		d.lease.Failed(err)
		return err
	}
	return d.ack(op)
}
