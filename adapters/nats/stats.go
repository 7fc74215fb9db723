package nats

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/clusterbus/clusterbus/adapters"
)

// QueueStats implements adapters.QueueStatter from JetStream stream and
// consumer info: the work-queue stream holds every unacknowledged item, the
// durable consumer's ack-pending count is what is leased, and the first
// message's time is the oldest item's age.
func (b *Broker) QueueStats(ctx context.Context, queue string) (adapters.QueueStats, error) {
	op := "queue stats " + queue
	if err := b.checkQueue(ctx, op); err != nil {
		return adapters.QueueStats{}, err
	}
	if err := adapters.ValidateName("queue", queue); err != nil {
		return adapters.QueueStats{}, err
	}
	st := adapters.QueueStats{Queue: queue}
	s, err := b.js.Stream(ctx, b.queueStream(queue))
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return st, errf(adapters.ErrNotFound, op, "queue %q was never declared", queue)
		}
		return st, b.mapCtxErr(ctx, op, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return st, b.mapCtxErr(ctx, op, err)
	}
	total := int64(info.State.Msgs)
	if total > 0 && !info.State.FirstTime.IsZero() {
		st.OldestAge = max(time.Since(info.State.FirstTime), 0)
	}
	if ci, err := s.Consumer(ctx, durable); err == nil {
		if cinfo, err := ci.Info(ctx); err == nil {
			st.InFlight = int64(cinfo.NumAckPending)
		}
	}
	st.Depth = max(total-st.InFlight, 0)
	st.DeadLetters = adapters.Unknown
	if d, err := b.js.Stream(ctx, b.dlqStream(queue)); err == nil {
		if dinfo, err := d.Info(ctx); err == nil {
			st.DeadLetters = int64(dinfo.State.Msgs)
		}
	}
	return st, nil
}
