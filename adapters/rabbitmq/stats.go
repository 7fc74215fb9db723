package rabbitmq

import (
	"context"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/clusterbus/clusterbus/adapters"
)

// QueueStats implements adapters.QueueStatter with passive declares of the
// queue and its dead-letter queue. AMQP reports only ready messages, so
// Depth leaves out items waiting in delay queues, and InFlight and
// OldestAge are Unknown (the management API, which knows them, is not
// AMQP).
func (b *Broker) QueueStats(ctx context.Context, queue string) (adapters.QueueStats, error) {
	op := "rabbitmq: queue stats " + queue
	st := adapters.QueueStats{Queue: queue, InFlight: adapters.Unknown, OldestAge: adapters.Unknown,
		Note: "AMQP counts ready messages only: no leased or delayed items, no ages"}
	if err := adapters.ValidateName("queue", queue); err != nil {
		return st, err
	}
	count := func(name string) (int64, error) {
		// A failed passive declare closes its channel: one channel each.
		ch, _, err := b.channel(ctx)
		if err != nil {
			return 0, err
		}
		defer func() { ch.Close() }()
		q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
		if err != nil {
			if isCode(err, amqp.NotFound) {
				return 0, adapters.Errorf(adapters.ErrNotFound, op, "queue %q was never declared", queue)
			}
			return 0, adapters.Errorf(adapters.ErrUnavailable, op, "passive declare %s: %v", name, err)
		}
		return int64(q.Messages), nil
	}
	var err error
	if st.Depth, err = count(queueName(queue)); err != nil {
		return st, err
	}
	if st.DeadLetters, err = count(dlqName(queue)); err != nil {
		st.DeadLetters = adapters.Unknown
	}
	return st, nil
}
