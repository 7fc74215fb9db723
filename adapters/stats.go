package adapters

import (
	"context"
	"time"
)

// Unknown marks a QueueStats count the broker cannot tell.
const Unknown = -1

// QueueStats is a snapshot of a queue as the broker reports it. Counts the
// broker cannot tell are Unknown; Note says why, or what a count includes.
type QueueStats struct {
	Queue string `json:"queue"`
	// Depth is the items waiting for a consumer, delayed ones included.
	// Where InFlight is Unknown, Depth may include the items held (Note
	// says so).
	Depth int64 `json:"depth"`
	// InFlight is the items held under a lease now.
	InFlight int64 `json:"in_flight"`
	// DeadLetters is the items in the queue's dead-letter queue.
	DeadLetters int64 `json:"dead_letters"`
	// OldestAge is the age of the oldest item not yet acknowledged;
	// Unknown (as a Duration) if the broker cannot tell, 0 if the queue
	// is empty.
	OldestAge time.Duration `json:"oldest_age"`
	// Note explains what the broker could not tell, if anything.
	Note string `json:"note,omitempty"`
}

// QueueStatter is the optional method of a Broker whose Capabilities
// report QueueStats as available.
type QueueStatter interface {
	// QueueStats reports the queue's counts. It returns ErrNotFound if
	// the queue was never declared.
	QueueStats(ctx context.Context, queue string) (QueueStats, error)
}

// Stats asks b for the counts of queue. It returns an error matching
// ErrUnsupported if the broker cannot report them. A decorator that does
// not implement QueueStatter itself is looked through with its
// Unwrap() Broker method: counts carry no message content.
func Stats(ctx context.Context, b Broker, queue string) (QueueStats, error) {
	for inner := b; inner != nil; {
		if s, ok := inner.(QueueStatter); ok && inner.Capabilities().QueueStats.Available() {
			return s.QueueStats(ctx, queue)
		}
		u, ok := inner.(interface{ Unwrap() Broker })
		if !ok {
			break
		}
		inner = u.Unwrap()
	}
	return QueueStats{}, Errorf(ErrUnsupported, "adapters: queue stats", "%s cannot report queue counts", b.Capabilities().Name)
}
