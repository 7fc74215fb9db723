package nats

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/clusterbus/clusterbus/adapters"
)

// Headers the adapter adds. The adapters.ReservedHeaderPrefix keeps them
// apart from user headers.
const (
	hdrID       = "cb-id"
	hdrKey      = "cb-key"
	hdrAttempts = "cb-dead-letter-attempts"
	hdrFrom     = "cb-dead-letter-queue"
	// hdrUserPrefix shields user headers whose names start with "nats".
	hdrUserPrefix = "cb-u-"
)

// durable is the name of the durable pull consumer every queue (and every
// dead-letter queue) has; all clusterbus consumers of a queue share it.
const durable = "clusterbus"

// Stream metadata keys that record the QueueConfig.
const (
	mdLease       = "clusterbus.lease"
	mdMaxAttempts = "clusterbus.max_attempts"
	mdDedupe      = "clusterbus.dedupe"
	mdOrdered     = "clusterbus.ordered"
)

// queueInfo is what Enqueue and Consume need to know about a queue, and
// what every Enqueue would otherwise build again: its subject, its error
// prefixes and its publish options. It is not changed once made.
type queueInfo struct {
	lease       time.Duration
	maxAttempts int
	dedupe      bool
	// compacted: the stream keeps acknowledged items until a consumer
	// purges them below the ack floor (see compact.go); false for a
	// work-queue stream an earlier version made, which removes each one.
	compacted bool

	name       string
	subject    string
	stream     string
	enqueueOp  string // "enqueue <queue>"
	validateOp string // "nats: enqueue <queue>"
	pubOpts    []jetstream.PublishOpt
}

// newQueueInfo returns the queueInfo of queue with the given settings.
func (b *Broker) newQueueInfo(queue string, lease time.Duration, maxAttempts int, dedupe bool, retention jetstream.RetentionPolicy) *queueInfo {
	op := "enqueue " + queue
	return &queueInfo{
		lease: lease, maxAttempts: maxAttempts, dedupe: dedupe, name: queue,
		subject: b.queueSubject(queue), stream: b.queueStream(queue),
		enqueueOp: op, validateOp: "nats: " + op,
		// No WithExpectStream: the server would store its header with
		// every item. awaitEnqueue checks the stream the ack names.
		pubOpts: []jetstream.PublishOpt{
			jetstream.WithRetryAttempts(publishRetries),
			jetstream.WithRetryWait(publishRetryWait),
			jetstream.WithStallWait(publishAckTimeout),
		},

		compacted: retention == jetstream.LimitsPolicy,
	}
}

// DeclareQueue implements adapters.Broker. It creates (or updates in place)
// a stream "<prefix>_Q_<name>" on subject "<prefix>.queue.<name>" (limits
// retention: acknowledged items are purged below the ack floor, see
// compact.go; a work-queue stream an earlier version made stays one),
// its dead-letter stream "<prefix>_DLQ_<name>" on "<prefix>.dlq.<name>", and
// a durable pull consumer on each with AckWait = cfg.Lease. A changed
// Lease, MaxAttempts or DedupeWindow is applied in place; consumers opened
// before the change keep the lease and attempt limit they started with.
func (b *Broker) DeclareQueue(ctx context.Context, cfg adapters.QueueConfig) error {
	op := "declare queue " + cfg.Name
	if err := b.checkQueue(ctx, op); err != nil {
		return err
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(b.caps); err != nil {
		return err
	}
	main := jetstream.StreamConfig{
		Name:        b.queueStream(cfg.Name),
		Description: "clusterbus queue " + cfg.Name,
		Subjects:    []string{b.queueSubject(cfg.Name)},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    b.opts.Replicas,
		Metadata: map[string]string{
			mdLease:       cfg.Lease.String(),
			mdMaxAttempts: strconv.Itoa(cfg.MaxAttempts),
			mdDedupe:      strconv.FormatBool(cfg.Dedupe),
			mdOrdered:     strconv.FormatBool(cfg.Ordered),
		},
	}
	if cfg.Dedupe {
		main.Duplicates = cfg.DedupeWindow
	}
	dlq := jetstream.StreamConfig{
		Name:        b.dlqStream(cfg.Name),
		Description: "clusterbus dead-letter queue of " + cfg.Name,
		Subjects:    []string{b.dlqSubject(cfg.Name)},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    b.opts.Replicas,
		// The move to the DLQ is deduplicated by the item's stream
		// sequence; a retried move comes at most a lease later.
		Duplicates: max(2*time.Minute, 2*cfg.Lease+time.Minute),
	}
	// The queue's and the dead-letter queue's stream and consumer are made
	// side by side: four requests in the time of two.
	var retention jetstream.RetentionPolicy
	declare := func(sc jetstream.StreamConfig) error {
		if err := retryTransient(ctx, apiTimeout, func(ctx context.Context) error {
			r, err := b.ensureStream(ctx, sc, sc.Name == main.Name)
			if sc.Name == main.Name {
				retention = r
			}
			return err
		}); err != nil {
			return b.mapCtxErr(ctx, op, err)
		}
		maxAckPending := 10000
		if cfg.Ordered && sc.Name == main.Name {
			// One item in flight at a time: the stream's order, hence
			// every key's order, is the delivery order.
			maxAckPending = 1
		}
		if err := retryTransient(ctx, apiTimeout, func(ctx context.Context) error {
			return b.ensureConsumer(ctx, sc.Name, jetstream.ConsumerConfig{
				Durable:       durable,
				Description:   "clusterbus workers",
				AckPolicy:     jetstream.AckExplicitPolicy,
				AckWait:       cfg.Lease,
				MaxDeliver:    -1, // the adapter counts attempts; see doc.go
				MaxAckPending: maxAckPending,
				MaxWaiting:    1024,
			})
		}); err != nil {
			return b.mapCtxErr(ctx, op, err)
		}
		return nil
	}
	var dlqErr error
	var wg sync.WaitGroup
	wg.Go(func() { dlqErr = declare(dlq) })
	err := declare(main)
	wg.Wait()
	if err != nil {
		return err
	}
	if dlqErr != nil {
		return dlqErr
	}
	b.mu.Lock()
	b.queues[cfg.Name] = b.newQueueInfo(cfg.Name, cfg.Lease, cfg.MaxAttempts, cfg.Dedupe, retention)
	b.mu.Unlock()
	return nil
}

// ensureStream creates sc's stream, or updates it where it differs from sc
// in a field sc sets, and returns the stream's retention. A stream already
// as declared costs one info request and no write: every node re-declares
// its queues when it starts, and in a cluster each update is a proposal to
// the meta group. With keepWorkQueue, an existing work-queue stream keeps
// that retention (the server cannot change it): queues made by versions
// before compaction go on as they were.
func (b *Broker) ensureStream(ctx context.Context, sc jetstream.StreamConfig, keepWorkQueue bool) (jetstream.RetentionPolicy, error) {
	st, err := b.js.Stream(ctx, sc.Name)
	if err == nil && keepWorkQueue && st.CachedInfo().Config.Retention == jetstream.WorkQueuePolicy {
		sc.Retention = jetstream.WorkQueuePolicy
	}
	switch {
	case err == nil && streamAsDeclared(st.CachedInfo().Config, sc):
		return sc.Retention, nil
	case err != nil && !errors.Is(err, jetstream.ErrStreamNotFound):
		return sc.Retention, err
	}
	_, err = b.js.CreateOrUpdateStream(ctx, sc)
	return sc.Retention, err
}

// streamAsDeclared reports whether have matches want in every field the
// adapter sets (a zero number in want is the server's default: any value).
func streamAsDeclared(have, want jetstream.StreamConfig) bool {
	for k, v := range want.Metadata {
		if have.Metadata[k] != v {
			return false
		}
	}
	return slices.Equal(have.Subjects, want.Subjects) && have.Description == want.Description &&
		have.Retention == want.Retention && have.Storage == want.Storage && have.Discard == want.Discard &&
		max(have.Replicas, 1) == max(want.Replicas, 1) &&
		(want.Duplicates == 0 || have.Duplicates == want.Duplicates) &&
		(want.MaxMsgs == 0 || have.MaxMsgs == want.MaxMsgs) &&
		(want.MaxMsgsPerSubject == 0 || have.MaxMsgsPerSubject == want.MaxMsgsPerSubject)
}

// ensureConsumer is ensureStream for a durable consumer of stream.
func (b *Broker) ensureConsumer(ctx context.Context, stream string, cc jetstream.ConsumerConfig) error {
	c, err := b.js.Consumer(ctx, stream, cc.Durable)
	switch {
	case err == nil && consumerAsDeclared(c.CachedInfo().Config, cc):
		return nil
	case err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound):
		return err
	}
	_, err = b.js.CreateOrUpdateConsumer(ctx, stream, cc)
	return err
}

func consumerAsDeclared(have, want jetstream.ConsumerConfig) bool {
	return have.Durable == want.Durable && have.Description == want.Description &&
		have.AckPolicy == want.AckPolicy && have.AckWait == want.AckWait &&
		have.MaxDeliver == want.MaxDeliver && have.MaxAckPending == want.MaxAckPending &&
		have.MaxWaiting == want.MaxWaiting
}

// DeleteQueue implements adapters.Broker.
func (b *Broker) DeleteQueue(ctx context.Context, queue string) error {
	op := "delete queue " + queue
	if err := b.checkQueue(ctx, op); err != nil {
		return err
	}
	if err := adapters.ValidateName("queue", queue); err != nil {
		return err
	}
	b.forget(queue)
	if err := b.js.DeleteStream(ctx, b.queueStream(queue)); err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return errf(adapters.ErrNotFound, op, "queue %q does not exist", queue)
		}
		return b.mapCtxErr(ctx, op, err)
	}
	if err := b.js.DeleteStream(ctx, b.dlqStream(queue)); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return b.mapCtxErr(ctx, op, err)
	}
	return nil
}

func (b *Broker) forget(queue string) {
	b.mu.Lock()
	delete(b.queues, queue)
	b.mu.Unlock()
}

// cachedInfo returns the queueInfo of a queue already looked up.
func (b *Broker) cachedInfo(queue string) (*queueInfo, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	qi, ok := b.queues[queue]
	return qi, ok
}

// info returns what the queue was declared with, from the cache or from the
// stream's metadata.
func (b *Broker) info(ctx context.Context, op, queue string) (*queueInfo, error) {
	if qi, ok := b.cachedInfo(queue); ok {
		return qi, nil
	}
	s, err := b.js.Stream(ctx, b.queueStream(queue))
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, errf(adapters.ErrNotFound, op, "queue %q was never declared", queue)
		}
		return nil, b.mapCtxErr(ctx, op, err)
	}
	md := s.CachedInfo().Config.Metadata
	lease, _ := time.ParseDuration(md[mdLease])
	maxAttempts, _ := strconv.Atoi(md[mdMaxAttempts])
	dedupe, _ := strconv.ParseBool(md[mdDedupe])
	if lease <= 0 || maxAttempts <= 0 {
		return nil, errf(adapters.ErrInvalidArgument, op, "stream %s was not declared by clusterbus (no %s metadata)", b.queueStream(queue), mdLease)
	}
	qi := b.newQueueInfo(queue, lease, maxAttempts, dedupe, s.CachedInfo().Config.Retention)
	b.mu.Lock()
	b.queues[queue] = qi
	b.mu.Unlock()
	return qi, nil
}
