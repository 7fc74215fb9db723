package mem

import (
	"context"
	"fmt"

	"github.com/clusterbus/clusterbus/adapters"
)

// QueueStats implements adapters.QueueStatter: the queue's counts as the
// server holds them. The oldest item's age is not kept (Unknown).
func (b *Broker) QueueStats(ctx context.Context, queue string) (adapters.QueueStats, error) {
	op := fmt.Sprintf("mem: queue stats %q", queue)
	if err := b.start(ctx, op, "queue", queue); err != nil {
		return adapters.QueueStats{}, err
	}
	s := b.srv
	defer s.mu.Unlock()
	q, ok := s.queues[queue]
	if !ok {
		return adapters.QueueStats{}, adapters.Errorf(adapters.ErrNotFound, op, "queue was never declared")
	}
	q.sweep(s, s.clock.Now())
	st := adapters.QueueStats{Queue: queue, OldestAge: adapters.Unknown, Note: "mem keeps no enqueue times"}
	for _, it := range q.items {
		switch {
		case it.gone:
		case it.holder != nil:
			st.InFlight++
		default:
			st.Depth++
		}
	}
	for _, it := range q.dead {
		if !it.gone {
			st.DeadLetters++
		}
	}
	return st, nil
}
