package adapters

import "context"

// BatchEnqueuer is implemented by brokers that can store several items
// while waiting for the broker once, instead of once per item. It is
// optional; use the function EnqueueBatch, which falls back to Enqueue.
type BatchEnqueuer interface {
	// EnqueueBatch stores every message of ms in the queue, validated as
	// Enqueue validates one (nothing is sent if one is invalid). It returns
	// nil once every message is durable, as Enqueue does for one. On an
	// error some of the messages may be stored and others not; sending the
	// batch again may store some twice unless the queue deduplicates.
	EnqueueBatch(ctx context.Context, queue string, ms []Message) error
}

// EnqueueBatch stores ms in the queue through b's BatchEnqueuer if it has
// one, else, once every message passes ValidateMessage, with one Enqueue per
// message, in order, stopping at the first error.
func EnqueueBatch(ctx context.Context, b Broker, queue string, ms []Message) error {
	if be, ok := b.(BatchEnqueuer); ok {
		return be.EnqueueBatch(ctx, queue, ms)
	}
	caps := b.Capabilities()
	for _, m := range ms {
		if err := ValidateMessage(caps.Name+": enqueue "+queue, m, caps); err != nil {
			return err
		}
	}
	for _, m := range ms {
		if err := b.Enqueue(ctx, queue, m); err != nil {
			return err
		}
	}
	return nil
}
