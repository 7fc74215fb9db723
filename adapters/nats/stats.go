package nats

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/clusterbus/clusterbus/adapters"
)

// keptNote is how many acknowledged items a compacted stream keeps before
// QueueStats says so in its Note.
var keptNote int64 = 10_000

// QueueStats implements adapters.QueueStatter from JetStream stream and
// consumer info. The durable consumer's ack-pending count is what is leased
// and its pending count what waits. On a compacted stream (limits
// retention, see compact.go) the oldest item is the one just above the ack
// floor; on a work-queue stream (made by an earlier version) the stream
// holds exactly the unacknowledged items and its first is the oldest.
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
	var cinfo *jetstream.ConsumerInfo
	if ci, err := s.Consumer(ctx, durable); err == nil {
		cinfo, _ = ci.Info(ctx)
	}
	if info.Config.Retention == jetstream.WorkQueuePolicy {
		total := int64(info.State.Msgs)
		if total > 0 && !info.State.FirstTime.IsZero() {
			st.OldestAge = max(time.Since(info.State.FirstTime), 0)
		}
		if cinfo != nil {
			st.InFlight = int64(cinfo.NumAckPending)
		}
		st.Depth = max(total-st.InFlight, 0)
	} else {
		if cinfo == nil {
			return st, errf(adapters.ErrUnavailable, op, "cannot read the consumer of queue %q", queue)
		}
		st.InFlight = int64(cinfo.NumAckPending)
		st.Depth = int64(cinfo.NumPending)
		if st.InFlight+st.Depth > 0 {
			oldest := info.State.FirstTime
			if next := cinfo.AckFloor.Stream + 1; next > info.State.FirstSeq {
				if m, err := s.GetMsg(ctx, next); err == nil {
					oldest = m.Time
				}
			}
			if !oldest.IsZero() {
				st.OldestAge = max(time.Since(oldest), 0)
			}
		}
		// Acknowledged items kept because the oldest unacknowledged one
		// stops the ack floor; a second's worth is normal.
		if kept := int64(info.State.Msgs) - st.Depth - st.InFlight; kept >= keptNote {
			st.Note = fmt.Sprintf("the stream also keeps %d acknowledged items until the oldest unacknowledged item is settled (see compaction in the nats adapter's doc)", kept)
		}
	}
	st.DeadLetters = adapters.Unknown
	if d, err := b.js.Stream(ctx, b.dlqStream(queue)); err == nil {
		if dinfo, err := d.Info(ctx); err == nil {
			st.DeadLetters = int64(dinfo.State.Msgs)
		}
	}
	return st, nil
}
