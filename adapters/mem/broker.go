package mem

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/clusterbus/clusterbus/adapters"
)

// Broker is one client of a Server: an adapters.Broker whose subscriptions,
// consumers and leases belong to it, as a node's connection does.
type Broker struct {
	srv *Server
	id  uint64

	// Guarded by srv.mu.
	closed    bool
	connected bool
	group     int
	state     chan struct{} // closed and replaced on close, disconnect, reconnect
	subs      map[*subscription]struct{}
	cons      map[*consumer]struct{}
	drops     map[string]int
}

var _ adapters.Broker = (*Broker)(nil)

// signal wakes everything waiting on the client's state.
func (b *Broker) signal() {
	close(b.state)
	b.state = make(chan struct{})
}

// Server is the server this client is connected to.
func (b *Broker) Server() *Server { return b.srv }

// Disconnect is Server.Disconnect of b.
func (b *Broker) Disconnect() { b.srv.Disconnect(b) }

// Reconnect is Server.Reconnect of b.
func (b *Broker) Reconnect() { b.srv.Reconnect(b) }

// DropNext makes b's subscriptions to topic silently miss the next n
// messages that other subscribers receive.
func (b *Broker) DropNext(topic string, n int) {
	b.srv.mu.Lock()
	defer b.srv.mu.Unlock()
	if b.drops == nil {
		b.drops = map[string]int{}
	}
	b.drops[topic] += n
}

func (b *Broker) String() string { return fmt.Sprintf("mem client %d", b.id) }

// Capabilities: everything native; limits from the server's options.
func (b *Broker) Capabilities() adapters.Capabilities { return b.srv.caps }

// usable checks, under srv.mu, that b is open and connected.
func (b *Broker) usable(op string) error {
	if b.closed {
		return adapters.Errorf(adapters.ErrClosed, op, "%s was closed", b)
	}
	if !b.connected {
		return adapters.Errorf(adapters.ErrUnavailable, op, "%s is disconnected", b)
	}
	return nil
}

// start checks ctx, then locks the server and checks that b is usable and
// the name valid. On success the caller holds srv.mu.
func (b *Broker) start(ctx context.Context, op, kind, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.srv.mu.Lock()
	if err := b.usable(op); err != nil {
		b.srv.mu.Unlock()
		return err
	}
	if err := adapters.ValidateName(kind, name); err != nil {
		b.srv.mu.Unlock()
		return adapters.Wrap(adapters.ErrInvalidArgument, op, err)
	}
	return nil
}

func copyMessage(m adapters.Message) adapters.Message {
	out := adapters.Message{ID: m.ID, Key: m.Key}
	if m.Headers != nil {
		out.Headers = make(map[string]string, len(m.Headers))
		for k, v := range m.Headers {
			out.Headers[k] = v
		}
	}
	if m.Body != nil {
		out.Body = append([]byte(nil), m.Body...)
	}
	return out
}

// Publish delivers a copy of m to every current subscription of topic whose
// client is connected and in the publisher's partition group.
func (b *Broker) Publish(ctx context.Context, topic string, m adapters.Message) error {
	op := fmt.Sprintf("mem: publish %q", topic)
	if err := adapters.ValidateMessage(op, m, b.srv.caps); err != nil {
		return err
	}
	if err := b.start(ctx, op, "topic", topic); err != nil {
		return err
	}
	s := b.srv
	defer s.mu.Unlock()
	if s.drops[topic] > 0 {
		s.drops[topic]--
		return nil
	}
	if p := s.dropRate[topic]; p > 0 && s.rng.Float64() < p {
		return nil
	}
	for sub := range s.topics[topic] {
		c := sub.b
		if c.closed || !c.connected || c.group != b.group {
			continue
		}
		if c.drops[topic] > 0 {
			c.drops[topic]--
			continue
		}
		if len(sub.buf) >= s.subBuf {
			sub.gap = true
		} else {
			sub.buf = append(sub.buf, copyMessage(m))
		}
		sub.signal()
	}
	return nil
}

// Subscribe starts receiving topic's messages from now on.
func (b *Broker) Subscribe(ctx context.Context, topic string) (adapters.Subscription, error) {
	op := fmt.Sprintf("mem: subscribe %q", topic)
	if err := b.start(ctx, op, "topic", topic); err != nil {
		return nil, err
	}
	s := b.srv
	defer s.mu.Unlock()
	sub := &subscription{b: b, topic: topic, sig: make(chan struct{})}
	if s.topics[topic] == nil {
		s.topics[topic] = map[*subscription]struct{}{}
	}
	s.topics[topic][sub] = struct{}{}
	b.subs[sub] = struct{}{}
	return sub, nil
}

// DeclareQueue creates the queue and its dead-letter queue. Declaring it
// again with the same config (after defaults) is a no-op; with a different
// one it fails with ErrInvalidArgument.
func (b *Broker) DeclareQueue(ctx context.Context, cfg adapters.QueueConfig) error {
	op := fmt.Sprintf("mem: declare queue %q", cfg.Name)
	if err := b.start(ctx, op, "queue", cfg.Name); err != nil {
		return err
	}
	s := b.srv
	defer s.mu.Unlock()
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(s.caps); err != nil {
		return adapters.Wrap(adapters.ErrInvalidArgument, op, err)
	}
	if q, ok := s.queues[cfg.Name]; ok {
		if q.cfg != cfg {
			return adapters.Errorf(adapters.ErrInvalidArgument, op, "exists with config %+v; asked for %+v", q.cfg, cfg)
		}
		return nil
	}
	s.queues[cfg.Name] = newQueue(cfg)
	return nil
}

// DeleteQueue removes the queue, its dead letters and its items; its
// consumers' Receive then fails with ErrNotFound and held deliveries with
// ErrLeaseLost.
func (b *Broker) DeleteQueue(ctx context.Context, queue string) error {
	op := fmt.Sprintf("mem: delete queue %q", queue)
	if err := b.start(ctx, op, "queue", queue); err != nil {
		return err
	}
	s := b.srv
	defer s.mu.Unlock()
	q, ok := s.queues[queue]
	if !ok {
		return adapters.Errorf(adapters.ErrNotFound, op, "queue was never declared")
	}
	delete(s.queues, queue)
	q.deleted = true
	for it := range q.leased {
		q.unlease(s, it)
	}
	q.items, q.dead = nil, nil
	q.signal()
	return nil
}

// Enqueue stores a copy of m. An empty ID is replaced by a random UUID.
func (b *Broker) Enqueue(ctx context.Context, queue string, m adapters.Message) error {
	op := fmt.Sprintf("mem: enqueue %q", queue)
	if err := adapters.ValidateMessage(op, m, b.srv.caps); err != nil {
		return err
	}
	if err := b.start(ctx, op, "queue", queue); err != nil {
		return err
	}
	s := b.srv
	defer s.mu.Unlock()
	q, ok := s.queues[queue]
	if !ok {
		return adapters.Errorf(adapters.ErrNotFound, op, "queue was never declared")
	}
	m = copyMessage(m)
	if m.ID == "" {
		m.ID = uuid.NewString()
	}
	now := s.clock.Now()
	if q.duplicate(m.ID, now) {
		return nil
	}
	s.seq++
	q.items = append(q.items, &item{seq: s.seq, msg: m, availableAt: now})
	q.signal()
	return nil
}

// Consume opens a consumer of the queue, or of its dead-letter queue.
// Prefetch is accepted and ignored: every Receive leases one item.
func (b *Broker) Consume(ctx context.Context, queue string, opts adapters.ConsumeOptions) (adapters.Consumer, error) {
	op := fmt.Sprintf("mem: consume %q", queue)
	if err := opts.Validate(op, 0); err != nil {
		return nil, err
	}
	if err := b.start(ctx, op, "queue", queue); err != nil {
		return nil, err
	}
	s := b.srv
	defer s.mu.Unlock()
	q, ok := s.queues[queue]
	if !ok {
		return nil, adapters.Errorf(adapters.ErrNotFound, op, "queue was never declared")
	}
	if opts.DeadLetters && !s.caps.DeadLetter.Available() {
		return nil, adapters.Errorf(adapters.ErrUnsupported, op, "ConsumeOptions.DeadLetters: dead-lettering is configured unsupported on this server")
	}
	c := &consumer{b: b, q: q, name: queue, dead: opts.DeadLetters, done: make(chan struct{})}
	b.cons[c] = struct{}{}
	return c, nil
}

// Close ends the client: its subscriptions and consumers are closed, the
// items it holds go back to their queues at once.
func (b *Broker) Close() error {
	s := b.srv
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.closed {
		return nil
	}
	now := s.clock.Now()
	for c := range b.cons {
		c.closeLocked(s, now)
	}
	for sub := range b.subs {
		sub.closeLocked(s)
	}
	b.closed = true
	delete(s.clients, b)
	b.signal()
	return nil
}

// subscription is a topic subscription of one client.
type subscription struct {
	b     *Broker
	topic string
	// Guarded by srv.mu.
	buf    []adapters.Message
	gap    bool
	closed bool
	sig    chan struct{}
}

func (sub *subscription) signal() {
	close(sub.sig)
	sub.sig = make(chan struct{})
}

func (sub *subscription) closeLocked(s *Server) {
	if sub.closed {
		return
	}
	sub.closed = true
	sub.buf = nil
	delete(s.topics[sub.topic], sub)
	if len(s.topics[sub.topic]) == 0 {
		delete(s.topics, sub.topic)
	}
	delete(sub.b.subs, sub)
	sub.signal()
}

// Receive returns the next message. Messages buffered before a disconnect
// are still returned; while disconnected it waits; after a reconnect it
// reports ErrGap once.
func (sub *subscription) Receive(ctx context.Context) (adapters.Message, error) {
	s := sub.b.srv
	op := fmt.Sprintf("mem: receive from topic %q", sub.topic)
	for {
		if err := ctx.Err(); err != nil {
			return adapters.Message{}, err
		}
		s.mu.Lock()
		if sub.closed || sub.b.closed {
			s.mu.Unlock()
			return adapters.Message{}, adapters.Errorf(adapters.ErrClosed, op, "subscription closed")
		}
		if len(sub.buf) > 0 {
			m := sub.buf[0]
			sub.buf[0] = adapters.Message{}
			sub.buf = sub.buf[1:]
			s.mu.Unlock()
			return m, nil
		}
		if sub.gap && sub.b.connected {
			sub.gap = false
			s.mu.Unlock()
			return adapters.Message{}, adapters.Errorf(adapters.ErrGap, op, "reconnected or buffer overflowed")
		}
		sig, state := sub.sig, sub.b.state
		s.mu.Unlock()
		if err := s.wait(ctx, time.Time{}, sig, state, nil); err != nil {
			return adapters.Message{}, err
		}
	}
}

// Close ends the subscription.
func (sub *subscription) Close() error {
	s := sub.b.srv
	s.mu.Lock()
	defer s.mu.Unlock()
	sub.closeLocked(s)
	return nil
}

// consumer leases items of one queue (or its dead letters) to one client.
type consumer struct {
	b    *Broker
	q    *queue
	name string
	dead bool
	// Guarded by srv.mu.
	closed bool
	done   chan struct{}
}

func (c *consumer) closeLocked(s *Server, now time.Time) {
	if c.closed {
		return
	}
	c.closed = true
	close(c.done)
	c.q.releaseHolder(s, c, now, "consumer closed")
	delete(c.b.cons, c)
}

// Receive leases the next available item. While the client is disconnected
// it returns ErrUnavailable; after the queue is deleted, ErrNotFound.
func (c *consumer) Receive(ctx context.Context) (adapters.Delivery, error) {
	s := c.b.srv
	op := fmt.Sprintf("mem: receive from queue %q", c.name)
	if c.dead {
		op = fmt.Sprintf("mem: receive from the dead letters of queue %q", c.name)
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		s.mu.Lock()
		if c.closed || c.b.closed {
			s.mu.Unlock()
			return nil, adapters.Errorf(adapters.ErrClosed, op, "consumer closed")
		}
		if !c.b.connected {
			s.mu.Unlock()
			return nil, adapters.Errorf(adapters.ErrUnavailable, op, "%s is disconnected", c.b)
		}
		if c.q.deleted {
			s.mu.Unlock()
			return nil, adapters.Errorf(adapters.ErrNotFound, op, "queue was deleted")
		}
		now := s.clock.Now()
		it, wake := c.q.next(s, c, c.dead, now)
		if it != nil {
			d := &delivery{c: c, it: it, token: it.token, attempt: it.attempts, msg: copyMessage(it.msg), deadline: it.deadline}
			s.mu.Unlock()
			return d, nil
		}
		sig, state := c.q.sig, c.b.state
		s.mu.Unlock()
		if err := s.wait(ctx, wake, sig, state, c.done); err != nil {
			return nil, err
		}
	}
}

// Close stops the consumer; the items it holds go back at once.
func (c *consumer) Close() error {
	s := c.b.srv
	s.mu.Lock()
	defer s.mu.Unlock()
	c.closeLocked(s, s.clock.Now())
	return nil
}

// delivery is one leased item. It is valid while the item's token is the one
// it was leased under.
type delivery struct {
	c       *consumer
	it      *item
	token   uint64
	attempt int
	msg     adapters.Message
	// Guarded by srv.mu.
	deadline time.Time
}

func (d *delivery) Message() adapters.Message { return copyMessage(d.msg) }
func (d *delivery) Attempt() int              { return d.attempt }
func (d *delivery) Queue() string             { return d.c.name }

func (d *delivery) LeaseDeadline() time.Time {
	s := d.c.b.srv
	s.mu.Lock()
	defer s.mu.Unlock()
	return d.deadline
}

// hold locks the server, expires due leases and checks that d still holds
// its item. On success the caller holds srv.mu.
func (d *delivery) hold(ctx context.Context, op string) (time.Time, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, err
	}
	s := d.c.b.srv
	s.mu.Lock()
	now := s.clock.Now()
	d.c.q.sweep(s, now)
	if d.it.token != d.token || d.it.holder != d.c {
		s.mu.Unlock()
		return now, adapters.Errorf(adapters.ErrLeaseLost, op, "item %q (attempt %d) is no longer held: settled, lease expired, consumer closed or connection lost", d.msg.ID, d.attempt)
	}
	return now, nil
}

func (d *delivery) op(verb string) string {
	return fmt.Sprintf("mem: %s %q on queue %q", verb, d.msg.ID, d.c.name)
}

// Ack removes the item for good.
func (d *delivery) Ack(ctx context.Context) error {
	_, err := d.hold(ctx, d.op("ack"))
	if err != nil {
		return err
	}
	s := d.c.b.srv
	defer s.mu.Unlock()
	q := d.c.q
	q.remove(s, d.it)
	q.signal()
	return nil
}

// Nack returns the item, available again after delay; if its attempts are
// used up it goes to the dead-letter queue instead.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	op := d.op("nack")
	if err := adapters.ValidateDelay(op, delay, d.c.b.srv.caps); err != nil {
		return err
	}
	now, err := d.hold(ctx, op)
	if err != nil {
		return err
	}
	s := d.c.b.srv
	defer s.mu.Unlock()
	d.c.q.release(s, d.it, now, now.Add(delay), fmt.Sprintf("nacked on attempt %d", d.attempt))
	return nil
}

// Extend keeps the lease for at least dur from now.
func (d *delivery) Extend(ctx context.Context, dur time.Duration) error {
	op := d.op("extend")
	if !d.c.b.srv.caps.LeaseExtension.Available() {
		return adapters.Errorf(adapters.ErrUnsupported, op, "lease extension is configured unsupported on this server")
	}
	if err := adapters.ValidateExtend(op, dur, d.c.q.cfg.Lease); err != nil {
		return err
	}
	now, err := d.hold(ctx, op)
	if err != nil {
		return err
	}
	s := d.c.b.srv
	defer s.mu.Unlock()
	if dl := now.Add(dur); dl.After(d.it.deadline) {
		d.it.deadline = dl
	}
	d.deadline = d.it.deadline
	return nil
}

// DeadLetter moves the item to the dead-letter queue with the reason.
func (d *delivery) DeadLetter(ctx context.Context, reason string) error {
	op := d.op("dead-letter")
	if !d.c.b.srv.caps.DeadLetter.Available() {
		return adapters.Errorf(adapters.ErrUnsupported, op, "dead-lettering is configured unsupported on this server")
	}
	now, err := d.hold(ctx, op)
	if err != nil {
		return err
	}
	s := d.c.b.srv
	defer s.mu.Unlock()
	d.c.q.deadLetter(s, d.it, now, reason)
	return nil
}
