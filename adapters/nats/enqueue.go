package nats

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/clusterbus/clusterbus/adapters"
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
	op := "enqueue " + queue
	if err := b.checkQueue(ctx, op); err != nil {
		return err
	}
	if err := adapters.ValidateName("queue", queue); err != nil {
		return err
	}
	if err := adapters.ValidateMessage("nats: "+op, m, b.caps); err != nil {
		return err
	}
	qi, err := b.info(ctx, op, queue)
	if err != nil {
		return err
	}
	if m.ID == "" {
		m.ID = nuid.Next()
	}
	msg := encode(b.queueSubject(queue), m)
	if qi.dedupe {
		msg.Header[jetstream.MsgIDHeader] = []string{m.ID}
	}
	ack, err := b.publish(ctx, msg, b.queueStream(queue))
	if err != nil {
		if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) {
			// Either the queue was deleted or JetStream is not ready.
			b.forget(queue)
			if _, serr := b.js.Stream(ctx, b.queueStream(queue)); errors.Is(serr, jetstream.ErrStreamNotFound) {
				return errf(adapters.ErrNotFound, op, "queue %q does not exist", queue)
			}
		}
		return b.mapCtxErr(ctx, op, err)
	}
	if ack.Duplicate {
		b.log.Debug("nats: duplicate dropped", "queue", queue, "id", m.ID)
	}
	return nil
}

// publish sends msg to stream asynchronously and waits for its
// acknowledgement or for ctx. If ctx ends first the message may still be
// stored.
func (b *Broker) publish(ctx context.Context, msg *nats.Msg, stream string) (*jetstream.PubAck, error) {
	stall := publishAckTimeout
	if dl, ok := ctx.Deadline(); ok {
		stall = max(min(stall, time.Until(dl)), time.Millisecond)
	}
	paf, err := b.js.PublishMsgAsync(msg,
		jetstream.WithExpectStream(stream),
		jetstream.WithRetryAttempts(publishRetries),
		jetstream.WithRetryWait(publishRetryWait),
		jetstream.WithStallWait(stall))
	if err != nil {
		if errors.Is(err, jetstream.ErrTooManyStalledMsgs) && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	select {
	case ack := <-paf.Ok():
		return ack, nil
	case err := <-paf.Err():
		return nil, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
