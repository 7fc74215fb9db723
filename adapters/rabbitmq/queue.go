package rabbitmq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/internal/driver"
)

// Broker-side names of a queue. User names cannot contain '.', so these
// never collide with another queue's names.
func queueName(q string) string  { return "cb.q." + q }
func dlqName(q string) string    { return "cb.q." + q + ".dlq" }
func configName(q string) string { return "cb.q." + q + ".cfg" }

// atLeastOnceDLX are the arguments that make a quorum queue dead-letter
// at-least-once (RabbitMQ 3.10+): the dead-lettered item stays in the
// source queue until the target queue has confirmed it. RabbitMQ requires
// overflow reject-publish for it (with no length limit set, nothing is ever
// rejected) and falls back to at-most-once without it.
func atLeastOnceDLX(args amqp.Table) amqp.Table {
	args["x-overflow"] = "reject-publish"
	args["x-dead-letter-strategy"] = "at-least-once"
	return args
}

// queueArgs are the main queue's arguments, derived from cfg alone so that
// every client declares the same ones. RabbitMQ dead-letters an item that
// has been returned more than x-delivery-limit times, so MaxAttempts
// deliveries need a limit of MaxAttempts-1; it moves it to the dead-letter
// queue at-least-once.
func queueArgs(cfg adapters.QueueConfig) amqp.Table {
	return atLeastOnceDLX(amqp.Table{
		"x-queue-type":              "quorum",
		"x-delivery-limit":          int64(cfg.MaxAttempts - 1),
		"x-dead-letter-exchange":    "",
		"x-dead-letter-routing-key": dlqName(cfg.Name),
	})
}

func dlqArgs() amqp.Table { return amqp.Table{"x-queue-type": "quorum"} }

// configArgs: the config queue keeps only the latest config message.
func configArgs() amqp.Table {
	return amqp.Table{"x-queue-type": "classic", "x-max-length": int64(1)}
}

// storedConfig is what the config queue holds: the fields of QueueConfig
// the broker's arguments cannot carry.
type storedConfig struct {
	Lease       time.Duration `json:"lease"`
	MaxAttempts int           `json:"max_attempts"`
}

// DeclareQueue declares the quorum queue, its dead-letter queue and its
// config queue. Redeclaring with another MaxAttempts or Lease fails with
// adapters.ErrInvalidArgument naming what differs.
func (b *Broker) DeclareQueue(ctx context.Context, cfg adapters.QueueConfig) error {
	op := "rabbitmq: declare queue " + cfg.Name
	if b.isClosed() {
		return adapters.Errorf(adapters.ErrClosed, op, "broker closed")
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(b.caps); err != nil {
		return adapters.Wrap(adapters.ErrInvalidArgument, op, err)
	}
	ch, _, err := b.channel(ctx)
	if err != nil {
		return mapErr(op, err)
	}
	defer func() { ch.Close() }()
	if _, err := ch.QueueDeclare(dlqName(cfg.Name), true, false, false, false, dlqArgs()); err != nil {
		return redeclareErr(op, dlqName(cfg.Name), err)
	}
	if _, err := ch.QueueDeclare(queueName(cfg.Name), true, false, false, false, queueArgs(cfg)); err != nil {
		return redeclareErr(op, queueName(cfg.Name), err)
	}
	if _, err := ch.QueueDeclare(configName(cfg.Name), true, false, false, false, configArgs()); err != nil {
		return redeclareErr(op, configName(cfg.Name), err)
	}
	want := storedConfig{Lease: cfg.Lease, MaxAttempts: cfg.MaxAttempts}
	have, found, err := readConfig(ctx, ch, cfg.Name, 200*time.Millisecond)
	if err != nil {
		return mapErr(op, err)
	}
	if found && have.Lease != want.Lease {
		return adapters.Errorf(adapters.ErrInvalidArgument, op,
			"queue %q exists with QueueConfig.Lease %s, asked %s; the lease cannot change in place: delete the queue or declare it as it was",
			cfg.Name, have.Lease, want.Lease)
	}
	if !found || have != want {
		body, _ := json.Marshal(want)
		p := amqp.Publishing{DeliveryMode: amqp.Persistent, ContentType: "application/json", Body: body}
		if err := b.publish(ctx, "", configName(cfg.Name), true, p); err != nil {
			return mapErr(op, err)
		}
	}
	b.mu.Lock()
	b.queues[cfg.Name] = cfg
	b.mu.Unlock()
	return nil
}

// readConfig reads the config message without taking it away (get, then
// requeue). Another reader may hold it for a moment, so an empty queue is
// retried until patience runs out.
func readConfig(ctx context.Context, ch *amqp.Channel, queue string, patience time.Duration) (storedConfig, bool, error) {
	deadline := time.Now().Add(patience)
	for {
		d, ok, err := ch.Get(configName(queue), false)
		if err != nil {
			return storedConfig{}, false, err
		}
		if ok {
			var c storedConfig
			jerr := json.Unmarshal(d.Body, &c)
			if err := d.Nack(false, true); err != nil {
				return storedConfig{}, false, err
			}
			if jerr != nil {
				return storedConfig{}, false, fmt.Errorf("config of queue %q: %w", queue, jerr)
			}
			return c, true, nil
		}
		if time.Now().After(deadline) {
			return storedConfig{}, false, nil
		}
		select {
		case <-ctx.Done():
			return storedConfig{}, false, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// queueConfig returns the config of a queue declared by this Broker or,
// failing that, read from the broker. It fails with ErrNotFound if the
// queue does not exist.
func (b *Broker) queueConfig(ctx context.Context, queue string) (adapters.QueueConfig, error) {
	b.mu.Lock()
	cfg, ok := b.queues[queue]
	b.mu.Unlock()
	if ok {
		return cfg, nil
	}
	ch, _, err := b.channel(ctx)
	if err != nil {
		return cfg, err
	}
	defer func() { ch.Close() }()
	if _, err := ch.QueueDeclarePassive(queueName(queue), true, false, false, false, nil); err != nil {
		if isCode(err, amqp.NotFound) {
			return cfg, adapters.Errorf(adapters.ErrNotFound, "", "queue %q was never declared", queue)
		}
		return cfg, err
	}
	sc, found, err := readConfig(ctx, ch, queue, 3*time.Second)
	if isCode(err, amqp.NotFound) {
		err = nil
	}
	if err != nil {
		return cfg, err
	}
	if !found {
		b.log.Warn("rabbitmq: queue has no readable config; assuming defaults", "queue", queue)
		sc = storedConfig{Lease: adapters.DefaultLease, MaxAttempts: adapters.DefaultMaxAttempts}
	}
	cfg = adapters.QueueConfig{Name: queue, Lease: sc.Lease, MaxAttempts: sc.MaxAttempts}.WithDefaults()
	b.mu.Lock()
	b.queues[queue] = cfg
	b.mu.Unlock()
	return cfg, nil
}

// DeleteQueue deletes the queue, its dead-letter queue, its config queue and
// the delay queues this Broker declared. Others expire by themselves ten
// minutes after their last use; until then their items, finding no queue,
// wait in them (at-least-once dead-lettering retries the route) and are
// dropped with them.
func (b *Broker) DeleteQueue(ctx context.Context, queue string) error {
	op := "rabbitmq: delete queue " + queue
	if b.isClosed() {
		return adapters.Errorf(adapters.ErrClosed, op, "broker closed")
	}
	if err := adapters.ValidateName("queue", queue); err != nil {
		return adapters.Wrap(adapters.ErrInvalidArgument, op, err)
	}
	ch, _, err := b.channel(ctx)
	if err != nil {
		return mapErr(op, err)
	}
	defer func() { ch.Close() }()
	if _, err := ch.QueueDeclarePassive(queueName(queue), true, false, false, false, nil); err != nil {
		if isCode(err, amqp.NotFound) {
			return adapters.Errorf(adapters.ErrNotFound, op, "queue %q does not exist", queue)
		}
		return mapErr(op, err)
	}
	b.mu.Lock()
	delete(b.queues, queue)
	names := []string{queueName(queue), dlqName(queue), configName(queue),
		delayedName(queueName(queue)), delayedName(dlqName(queue))}
	for n := range b.declared {
		if isRetryOf(n, queue) {
			names = append(names, n)
			delete(b.declared, n)
		}
	}
	b.mu.Unlock()
	for _, n := range names {
		if _, err := ch.QueueDelete(n, false, false, false); err != nil {
			if isCode(err, amqp.NotFound) {
				// Gone already; the channel is closed, open another.
				if ch, _, err = b.channel(ctx); err != nil {
					return mapErr(op, err)
				}
				continue
			}
			return mapErr(op, err)
		}
	}
	return nil
}

func isRetryOf(name, queue string) bool {
	// Delay queues of earlier versions: cb.q.Q.delay.<ms>ms.
	for _, t := range []string{queueName(queue), dlqName(queue)} {
		p := t + ".delay."
		if len(name) > len(p) && name[:len(p)] == p {
			return true
		}
	}
	return false
}

// Enqueue publishes m persistently to the queue and returns once the broker
// has confirmed it (quorum queues confirm once a majority has it). An
// undeclared queue makes the publish unroutable: ErrNotFound.
func (b *Broker) Enqueue(ctx context.Context, queue string, m adapters.Message) error {
	op := "rabbitmq: enqueue " + queue
	p, err := b.prepareEnqueue(op, queue, m)
	if err != nil {
		return err
	}
	return enqueueErr(op, queue, b.publish(ctx, "", queueName(queue), true, p))
}

// prepareEnqueue validates an enqueue of m and returns its publishing.
func (b *Broker) prepareEnqueue(op, queue string, m adapters.Message) (amqp.Publishing, error) {
	if b.isClosed() {
		return amqp.Publishing{}, adapters.Errorf(adapters.ErrClosed, op, "broker closed")
	}
	if err := adapters.ValidateName("queue", queue); err != nil {
		return amqp.Publishing{}, adapters.Wrap(adapters.ErrInvalidArgument, op, err)
	}
	if err := adapters.ValidateMessage(op, m, b.caps); err != nil {
		return amqp.Publishing{}, err
	}
	if m.ID == "" {
		m.ID = newID()
	}
	return toPublishing(m, true), nil
}

// enqueueErr maps the outcome of an enqueue's publish.
func enqueueErr(op, queue string, err error) error {
	if errors.Is(err, errNoRoute) {
		return adapters.Errorf(adapters.ErrNotFound, op, "queue %q was never declared", queue)
	}
	return mapErr(op, err)
}

var _ adapters.AsyncEnqueuer = (*Broker)(nil)

// EnqueueAsync implements adapters.AsyncEnqueuer: the message is published
// at once on a shared confirm channel, and Pending.Wait waits for its
// confirm. One that the broker nacked, or that a lost connection cut off, is
// sent again by Wait as Enqueue would send it (so it may be stored twice).
func (b *Broker) EnqueueAsync(ctx context.Context, queue string, m adapters.Message) (adapters.Pending, error) {
	op := "rabbitmq: enqueue " + queue
	p, err := b.prepareEnqueue(op, queue, m)
	if err != nil {
		return nil, err
	}
	pe := &pendingEnqueue{b: b, op: op, queue: queue, p: p, out: driver.NewOutcome()}
	if cf, err := b.confirmer(ctx); err == nil {
		if waits, err := cf.send(ctx, "", queueName(queue), true, []amqp.Publishing{p}); err == nil {
			pe.w = waits[0]
		}
	}
	if pe.w == nil && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return pe, nil // not sent (no channel now): Wait sends it
}

// pendingEnqueue is the adapters.Pending of EnqueueAsync.
type pendingEnqueue struct {
	b         *Broker
	op, queue string
	p         amqp.Publishing
	w         *pubWait // the first send's confirm; nil if it was not sent
	out       *driver.Outcome
}

func (pe *pendingEnqueue) Wait(ctx context.Context) error {
	return pe.out.Wait(ctx, pe.resolve)
}

// resolve waits for the first send's confirm; what was nacked, cut off or
// never sent is sent again as Enqueue sends it.
func (pe *pendingEnqueue) resolve(ctx context.Context) (bool, error) {
	if w := pe.w; w != nil {
		select {
		case <-w.done:
		case <-ctx.Done():
			return false, ctx.Err()
		}
		switch {
		case w.returned != nil:
			return true, enqueueErr(pe.op, pe.queue, fmt.Errorf("%w: %d %s", errNoRoute, w.returned.ReplyCode, w.returned.ReplyText))
		case w.acked:
			return true, nil
		}
		pe.w = nil // nacked or lost: sent again below
	}
	err := enqueueErr(pe.op, pe.queue, pe.b.publish(ctx, "", queueName(pe.queue), true, pe.p))
	if ctx.Err() != nil && err != nil {
		return false, err // the outcome is unknown; a later Wait sends it again
	}
	return true, err
}

var _ adapters.BatchEnqueuer = (*Broker)(nil)

// EnqueueBatch implements adapters.BatchEnqueuer: the messages are published
// on one confirm channel one after the other without waiting, then every
// confirm is awaited.
func (b *Broker) EnqueueBatch(ctx context.Context, queue string, ms []adapters.Message) error {
	op := "rabbitmq: enqueue " + queue
	if b.isClosed() {
		return adapters.Errorf(adapters.ErrClosed, op, "broker closed")
	}
	if err := adapters.ValidateName("queue", queue); err != nil {
		return adapters.Wrap(adapters.ErrInvalidArgument, op, err)
	}
	ps := make([]amqp.Publishing, 0, len(ms))
	for _, m := range ms {
		if err := adapters.ValidateMessage(op, m, b.caps); err != nil {
			return err
		}
		if m.ID == "" {
			m.ID = newID()
		}
		ps = append(ps, toPublishing(m, true))
	}
	if len(ps) == 0 {
		return nil
	}
	err := b.publishBatch(ctx, "", queueName(queue), true, ps)
	if errors.Is(err, errNoRoute) {
		return adapters.Errorf(adapters.ErrNotFound, op, "queue %q was never declared", queue)
	}
	return mapErr(op, err)
}

// ensureDelayQueue declares the delay queue name unless this connection
// declared it already (or force).
func (b *Broker) ensureDelayQueue(ctx context.Context, name string, force bool) error {
	b.mu.Lock()
	gen, ok := b.declared[name]
	cur := b.gen
	b.mu.Unlock()
	if !force && ok && gen == cur {
		return nil
	}
	ch, gen, err := b.channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close()
	if _, err := ch.QueueDeclare(name, true, false, false, false, delayedArgs()); err != nil {
		return redeclareErr("rabbitmq: declare delay queue", name, err)
	}
	b.mu.Lock()
	b.declared[name] = gen
	b.mu.Unlock()
	return nil
}
