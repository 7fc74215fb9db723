package nats

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/internal/driver"
)

// Asynchronous publishing: Enqueue sends through nats.go's asynchronous
// publisher, so concurrent producers share the connection without each
// waiting a round trip before the next may send, and each call waits for its
// own acknowledgement.
const (
	// publishWindow bounds the enqueues sent and not yet acknowledged per
	// connection; an Enqueue beyond it waits for room.
	publishWindow = 4096
	// publishAckTimeout is how long an acknowledgement is awaited before the
	// publisher gives up on it (Enqueue then fails with ErrUnavailable).
	publishAckTimeout = 10 * time.Second
	// publishRetries and publishRetryWait retry "no responders" while
	// JetStream comes back after a restart (about five seconds).
	publishRetries   = 20
	publishRetryWait = 250 * time.Millisecond
)

// Enqueue implements adapters.Broker. It returns once JetStream has
// acknowledged the message (stored it). With Dedupe the message ID is sent
// as Nats-Msg-Id and a duplicate within the window is dropped by the server.
func (b *Broker) Enqueue(ctx context.Context, queue string, m adapters.Message) error {
	return b.EnqueueBatch(ctx, queue, []adapters.Message{m})
}

var (
	_ adapters.BatchEnqueuer = (*Broker)(nil)
	_ adapters.AsyncEnqueuer = (*Broker)(nil)
)

// EnqueueBatch implements adapters.BatchEnqueuer: it sends every message
// through the asynchronous publisher, then waits for all their
// acknowledgements.
func (b *Broker) EnqueueBatch(ctx context.Context, queue string, ms []adapters.Message) error {
	qi, err := b.prepareEnqueue(ctx, queue, ms)
	if err != nil {
		return err
	}
	futures := make([]jetstream.PubAckFuture, 0, len(ms))
	var first error
	for _, m := range ms {
		paf, err := b.sendEnqueue(ctx, qi, m)
		if err != nil {
			first = err
			break
		}
		futures = append(futures, paf)
	}
	for i, paf := range futures {
		if err := b.awaitEnqueue(ctx, qi, ms[i].ID, paf); err != nil && first == nil {
			first = err
		}
	}
	return b.enqueueErr(ctx, qi.enqueueOp, queue, first)
}

// EnqueueAsync implements adapters.AsyncEnqueuer: the message goes through
// the asynchronous publisher (waiting only for room in its window) and
// Pending.Wait waits for its acknowledgement.
func (b *Broker) EnqueueAsync(ctx context.Context, queue string, m adapters.Message) (adapters.Pending, error) {
	qi, err := b.prepareEnqueue(ctx, queue, []adapters.Message{m})
	if err != nil {
		return nil, err
	}
	paf, err := b.sendEnqueue(ctx, qi, m)
	if err != nil {
		return nil, b.enqueueErr(ctx, qi.enqueueOp, queue, err)
	}
	return &pendingEnqueue{b: b, qi: qi, queue: queue, id: m.ID, paf: paf, out: driver.NewOutcome()}, nil
}

// pendingEnqueue is the adapters.Pending of EnqueueAsync. The future hands
// its outcome over once, so the outcome is kept for later Waits.
type pendingEnqueue struct {
	b         *Broker
	qi        *queueInfo
	queue, id string
	paf       jetstream.PubAckFuture
	out       *driver.Outcome
}

func (p *pendingEnqueue) Wait(ctx context.Context) error {
	return p.out.Wait(ctx, func(ctx context.Context) (bool, error) {
		err := p.b.awaitEnqueue(ctx, p.qi, p.id, p.paf)
		if err != nil && ctx.Err() != nil {
			return false, ctx.Err() // the outcome is still to come
		}
		return true, p.b.enqueueErr(ctx, p.qi.enqueueOp, p.queue, err)
	})
}

// prepareEnqueue validates the queue's name and the messages and returns
// the queue's settings. It builds no string unless something is wrong.
func (b *Broker) prepareEnqueue(ctx context.Context, queue string, ms []adapters.Message) (*queueInfo, error) {
	if !b.queueReady(ctx) {
		if err := b.checkQueue(ctx, "enqueue "+queue); err != nil {
			return nil, err
		}
	}
	qi, ok := b.cachedInfo(queue)
	if !ok {
		if err := adapters.ValidateName("queue", queue); err != nil {
			return nil, err
		}
		var err error
		if qi, err = b.info(ctx, "enqueue "+queue, queue); err != nil {
			return nil, err
		}
	}
	for _, m := range ms {
		if err := adapters.ValidateMessage(qi.validateOp, m, b.caps); err != nil {
			return nil, err
		}
	}
	return qi, nil
}

// sendEnqueue sends m to the queue's stream through the asynchronous
// publisher (an empty ID is given one; with Dedupe the ID is sent as
// Nats-Msg-Id and a duplicate within the window is dropped by the server).
func (b *Broker) sendEnqueue(ctx context.Context, qi *queueInfo, m adapters.Message) (jetstream.PubAckFuture, error) {
	if m.ID == "" {
		m.ID = nuid.Next()
	}
	msg := encode(qi.subject, m)
	if qi.dedupe {
		msg.Header[jetstream.MsgIDHeader] = []string{m.ID}
	}
	return b.publishAsync(ctx, msg, qi.pubOpts)
}

// awaitEnqueue waits for one enqueue's acknowledgement; its error is the
// client's, unmapped, or errForeignStream.
func (b *Broker) awaitEnqueue(ctx context.Context, qi *queueInfo, id string, paf jetstream.PubAckFuture) error {
	ack, err := awaitAck(ctx, paf)
	switch {
	case err != nil:
		return err
	case ack.Stream != qi.stream:
		// Another stream took the queue's subject (ours was deleted and
		// an operator's stream captures it): the item is not in the queue.
		return &foreignStreamError{subject: qi.subject, got: ack.Stream, want: qi.stream}
	case ack.Duplicate:
		b.log.Debug("nats: duplicate dropped", "queue", qi.name, "id", id)
	}
	return nil
}

// foreignStreamError is an enqueue stored by a stream that is not the
// queue's.
type foreignStreamError struct{ subject, got, want string }

func (e *foreignStreamError) Error() string {
	return fmt.Sprintf("%s was stored by stream %s, not by the queue's stream %s", e.subject, e.got, e.want)
}

// enqueueErr maps the client's error of an enqueue: "no stream response"
// and "no responders" are ErrNotFound once the queue's stream is gone.
func (b *Broker) enqueueErr(ctx context.Context, op, queue string, err error) error {
	if err == nil {
		return nil
	}
	var foreign *foreignStreamError
	if errors.As(err, &foreign) {
		b.forget(queue)
		return &adapters.Error{Code: adapters.ErrNotFound, Op: "nats: " + op, Err: err}
	}
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
		// Either the queue was deleted or JetStream is not ready.
		b.forget(queue)
		if _, serr := b.js.Stream(ctx, b.queueStream(queue)); errors.Is(serr, jetstream.ErrStreamNotFound) {
			return errf(adapters.ErrNotFound, op, "queue %q does not exist", queue)
		}
	}
	return b.mapCtxErr(ctx, op, err)
}

// publishAsync sends msg through the asynchronous publisher with opts (the
// queue's, which wait publishAckTimeout for room in the window), waiting
// for room at most until ctx ends.
func (b *Broker) publishAsync(ctx context.Context, msg *nats.Msg, opts []jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	if dl, ok := ctx.Deadline(); ok {
		if left := time.Until(dl); left < publishAckTimeout {
			opts = append(opts[:len(opts):len(opts)], jetstream.WithStallWait(max(left, time.Millisecond)))
		}
	}
	paf, err := b.js.PublishMsgAsync(msg, opts...)
	if err != nil && errors.Is(err, jetstream.ErrTooManyStalledMsgs) && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return paf, err
}

// awaitAck waits for the acknowledgement of one asynchronous publish or for
// ctx. If ctx ends first the message may still be stored.
func awaitAck(ctx context.Context, paf jetstream.PubAckFuture) (*jetstream.PubAck, error) {
	select {
	case ack := <-paf.Ok():
		return ack, nil
	case err := <-paf.Err():
		return nil, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
