package kafka

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/clusterbus/clusterbus/adapters"
)

// queueMeta is the queue's declaration, stored as the last record of its
// compacted meta topic so that every node uses the same lease and attempts.
type queueMeta struct {
	Version      int           `json:"version"`
	Lease        time.Duration `json:"lease"`
	MaxAttempts  int           `json:"max_attempts"`
	Ordered      bool          `json:"ordered"`
	Dedupe       bool          `json:"dedupe"`
	DedupeWindow time.Duration `json:"dedupe_window"`
}

func metaOf(cfg adapters.QueueConfig) queueMeta {
	return queueMeta{Version: 1, Lease: cfg.Lease, MaxAttempts: cfg.MaxAttempts, Ordered: cfg.Ordered,
		Dedupe: cfg.Dedupe, DedupeWindow: cfg.DedupeWindow}
}

func (m queueMeta) config(name string) adapters.QueueConfig {
	return adapters.QueueConfig{Name: name, Lease: m.Lease, MaxAttempts: m.MaxAttempts, Ordered: m.Ordered,
		Dedupe: m.Dedupe, DedupeWindow: m.DedupeWindow}
}

// DeclareQueue creates the queue's topics (main, retry, dead-letter, meta)
// if they do not exist and records cfg in the meta topic. Declaring again
// with the same config is a no-op; with a different Lease, MaxAttempts or
// DedupeWindow it fails with ErrInvalidArgument (the declaration is shared
// by every node and is not changed in place).
func (b *Broker) DeclareQueue(ctx context.Context, cfg adapters.QueueConfig) error {
	op := fmt.Sprintf("kafka: declare queue %q", cfg.Name)
	if err := b.checkOpen(op); err != nil {
		return err
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(capabilities); err != nil {
		return err
	}
	q := cfg.Name
	err := b.createTopics(ctx, op,
		b.topicConfig(b.mainTopic(q), b.cfg.Partitions),
		b.topicConfig(b.retryTopic(q), b.cfg.Partitions),
		b.topicConfig(b.deadTopic(q), 1),
		b.topicConfig(b.metaTopic(q), 1, kafkago.ConfigEntry{ConfigName: "cleanup.policy", ConfigValue: "compact"}),
	)
	if err != nil {
		return err
	}
	existing, err := b.readMeta(ctx, op, q)
	switch {
	case err == nil:
		if existing != metaOf(cfg) {
			return adapters.Errorf(adapters.ErrInvalidArgument, op,
				"already declared with lease %s, max attempts %d, dedupe window %s; delete it first to change it",
				existing.Lease, existing.MaxAttempts, existing.DedupeWindow)
		}
	case errors.Is(err, adapters.ErrNotFound):
		body, _ := json.Marshal(metaOf(cfg))
		if err := b.write(ctx, op, kafkago.Message{Topic: b.metaTopic(q), Key: []byte("config"), Value: body}); err != nil {
			return err
		}
	default:
		return err
	}
	b.mu.Lock()
	b.queues[q] = cfg
	b.mu.Unlock()
	return nil
}

// queueConfig returns the declared config of queue q, or ErrNotFound.
func (b *Broker) queueConfig(ctx context.Context, op, q string) (adapters.QueueConfig, error) {
	b.mu.Lock()
	cfg, ok := b.queues[q]
	b.mu.Unlock()
	if ok {
		return cfg, nil
	}
	m, err := b.readMeta(ctx, op, q)
	if err != nil {
		return cfg, err
	}
	cfg = m.config(q)
	b.mu.Lock()
	b.queues[q] = cfg
	b.mu.Unlock()
	return cfg, nil
}

// readMeta reads the last record of the meta topic. A missing topic or an
// empty one is ErrNotFound.
func (b *Broker) readMeta(ctx context.Context, op, q string) (queueMeta, error) {
	var m queueMeta
	topic := b.metaTopic(q)
	var end int64
	for attempt := 0; ; attempt++ {
		ends, err := b.endOffsets(ctx, topic, []int{0})
		if err == nil {
			end = ends[0]
			break
		}
		if errors.Is(err, kafkago.UnknownTopicOrPartition) {
			return m, adapters.Errorf(adapters.ErrNotFound, op, "queue %q is not declared", q)
		}
		if ctx.Err() != nil {
			return m, ctx.Err()
		}
		if attempt >= 10 {
			return m, mapCtxErr(ctx, op, err)
		}
		if !sleepCtx(ctx, 100*time.Millisecond) {
			return m, ctx.Err()
		}
	}
	if end <= 0 {
		return m, adapters.Errorf(adapters.ErrNotFound, op, "queue %q is not declared (no declaration record)", q)
	}
	if err := b.refresh(ctx, topic, b.mainTopic(q), b.retryTopic(q), b.deadTopic(q)); err != nil {
		return m, mapCtxErr(ctx, op, err)
	}
	resp, err := b.client.Fetch(ctx, &kafkago.FetchRequest{Topic: topic, Partition: 0, Offset: end - 1,
		MinBytes: 1, MaxBytes: 1 << 20, MaxWait: time.Second})
	if err != nil {
		return m, mapCtxErr(ctx, op, err)
	}
	if resp.Error != nil {
		return m, mapCtxErr(ctx, op, resp.Error)
	}
	var last []byte
	for {
		rec, err := resp.Records.ReadRecord()
		if err != nil {
			break
		}
		if rec.Value == nil {
			continue
		}
		buf := make([]byte, rec.Value.Len())
		if _, err := readFull(rec.Value, buf); err != nil {
			return m, mapCtxErr(ctx, op, err)
		}
		last = buf
	}
	if last == nil {
		return m, adapters.Errorf(adapters.ErrNotFound, op, "queue %q is not declared (declaration record unreadable)", q)
	}
	if err := json.Unmarshal(last, &m); err != nil {
		return m, adapters.Errorf(adapters.ErrInvalidArgument, op, "declaration record of queue %q: %v", q, err)
	}
	return m, nil
}

func readFull(r interface{ Read([]byte) (int, error) }, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		k, err := r.Read(buf[n:])
		n += k
		if err != nil {
			if n == len(buf) {
				return n, nil
			}
			return n, err
		}
	}
	return n, nil
}

// DeleteQueue deletes the queue's topics and consumer groups. It returns
// ErrNotFound if the queue does not exist.
func (b *Broker) DeleteQueue(ctx context.Context, q string) error {
	op := fmt.Sprintf("kafka: delete queue %q", q)
	if err := b.checkOpen(op); err != nil {
		return err
	}
	if err := adapters.ValidateName("queue", q); err != nil {
		return err
	}
	topics := []string{b.mainTopic(q), b.retryTopic(q), b.deadTopic(q), b.metaTopic(q)}
	resp, err := b.client.DeleteTopics(ctx, &kafkago.DeleteTopicsRequest{Topics: topics})
	if err != nil {
		return mapCtxErr(ctx, op, err)
	}
	b.mu.Lock()
	delete(b.queues, q)
	for _, t := range topics {
		delete(b.topics, t)
	}
	b.mu.Unlock()
	missing := 0
	for _, t := range topics {
		e := resp.Errors[t]
		switch {
		case e == nil:
		case errors.Is(e, kafkago.UnknownTopicOrPartition):
			missing++
		default:
			return mapCtxErr(ctx, op, fmt.Errorf("delete topic %q: %w", t, e))
		}
	}
	// Committed offsets of a deleted topic would point past the end of a
	// re-created one; drop the groups. Groups with live members cannot be
	// deleted, which is harmless: their members fail and rejoin.
	_, _ = b.client.DeleteGroups(ctx, &kafkago.DeleteGroupsRequest{GroupIDs: []string{b.mainTopic(q), b.retryTopic(q), b.deadTopic(q)}})
	if missing == len(topics) {
		return adapters.Errorf(adapters.ErrNotFound, op, "queue %q does not exist", q)
	}
	return nil
}

// Enqueue appends m to the queue's main topic, partitioned by m.Key (no key:
// round robin), and returns once all in-sync replicas have it. Concurrent
// Enqueues share produce requests (the writer's 200 µs batch window), so
// producers do not wait for each other's acknowledgements one by one.
func (b *Broker) Enqueue(ctx context.Context, q string, m adapters.Message) error {
	return b.enqueue(ctx, fmt.Sprintf("kafka: enqueue %q", q), q, []adapters.Message{m})
}

// EnqueueBatch implements adapters.BatchEnqueuer: every message is
// validated first (nothing is sent if one is invalid), then all go to the
// writer in one WriteMessages call, which sends them in as few produce
// requests as its batch limits allow (256 records, 1 MiB) and returns once
// all in-sync replicas have every one (acks=all, as Enqueue). On an error
// some records may be stored and others not.
func (b *Broker) EnqueueBatch(ctx context.Context, q string, ms []adapters.Message) error {
	return b.enqueue(ctx, fmt.Sprintf("kafka: enqueue batch %q", q), q, ms)
}

func (b *Broker) enqueue(ctx context.Context, op, q string, ms []adapters.Message) error {
	kms, err := b.prepareEnqueue(ctx, op, q, ms)
	if err != nil || len(kms) == 0 {
		return err
	}
	err = b.write(ctx, op, kms...)
	b.forgetIfGone(q, err)
	return err
}

// prepareEnqueue checks the broker, the queue and every message and
// encodes them for the queue's main topic.
func (b *Broker) prepareEnqueue(ctx context.Context, op, q string, ms []adapters.Message) ([]kafkago.Message, error) {
	if err := b.checkOpen(op); err != nil {
		return nil, err
	}
	if err := adapters.ValidateName("queue", q); err != nil {
		return nil, err
	}
	for _, m := range ms {
		if err := adapters.ValidateMessage(op, m, capabilities); err != nil {
			return nil, err
		}
	}
	if _, err := b.queueConfig(ctx, op, q); err != nil {
		return nil, err
	}
	topic := b.mainTopic(q)
	kms := make([]kafkago.Message, len(ms))
	for i, m := range ms {
		if m.ID == "" {
			m.ID = newID()
		}
		kms[i] = encode(topic, m)
	}
	return kms, nil
}

// forgetIfGone forgets a queue whose topic a write found missing: another
// node deleted it since this one learned of it.
func (b *Broker) forgetIfGone(q string, err error) {
	if errors.Is(err, adapters.ErrNotFound) {
		b.mu.Lock()
		delete(b.queues, q)
		b.mu.Unlock()
	}
}

// asyncWindow bounds the messages EnqueueAsync has in flight in one
// Broker; past it, EnqueueAsync waits for one to settle, or for ctx.
const asyncWindow = 4096

// EnqueueAsync implements adapters.AsyncEnqueuer. The message goes to the
// asynchronous writer, which batches it with others as Enqueue's writer
// does (200 µs or 256 records per partition) and settles its Pending when
// the produce request is answered with every in-sync replica's ack, or has
// failed after the writer's retries: Wait returning nil means what
// Enqueue returning nil means. Close flushes what is queued.
func (b *Broker) EnqueueAsync(ctx context.Context, q string, m adapters.Message) (adapters.Pending, error) {
	op := fmt.Sprintf("kafka: enqueue %q", q)
	kms, err := b.prepareEnqueue(ctx, op, q, []adapters.Message{m})
	if err != nil {
		return nil, err
	}
	select {
	case b.asyncSlots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-b.done:
		return nil, adapters.Errorf(adapters.ErrClosed, op, "broker is closed")
	}
	p := &pending{b: b, op: op, queue: q, done: make(chan struct{})}
	kms[0].WriterData = p
	if err := b.async.WriteMessages(ctx, kms[0]); err != nil {
		// Refused before it was queued (its topic's partitions unknown,
		// the writer closed): Completion will not see it.
		<-b.asyncSlots
		if cerr := b.checkOpen(op); cerr != nil {
			return nil, cerr
		}
		err = mapCtxErr(ctx, op, err)
		b.forgetIfGone(q, err)
		return nil, err
	}
	return p, nil
}

// completed is the asynchronous writer's Completion: it settles the
// Pending of every message of a batch.
func (b *Broker) completed(msgs []kafkago.Message, err error) {
	for _, m := range msgs {
		if p, ok := m.WriterData.(*pending); ok {
			p.settle(err)
			<-b.asyncSlots
		}
	}
}

// pending is the Pending of one EnqueueAsync.
type pending struct {
	b     *Broker
	op    string
	queue string
	done  chan struct{}
	err   error
}

func (p *pending) settle(err error) {
	if err != nil {
		p.err = mapErr(p.op, err)
		p.b.forgetIfGone(p.queue, p.err)
	}
	close(p.done)
}

// Wait implements adapters.Pending.
func (p *pending) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}
