package adapters

import (
	"context"
	"time"
)

// Broker is a connection to a message broker. All methods are safe for
// concurrent use. After Close every method returns an error matching
// ErrClosed.
type Broker interface {
	// Capabilities reports what this broker supports and its limits.
	Capabilities() Capabilities

	// Publish sends m to every current subscriber of topic. The topic is
	// created if needed. m.Key and m.ID are carried but have no effect on
	// delivery.
	Publish(ctx context.Context, topic string, m Message) error

	// Subscribe starts receiving the messages published to topic from now
	// on; earlier messages are never delivered.
	Subscribe(ctx context.Context, topic string) (Subscription, error)

	// DeclareQueue creates the queue (and its dead-letter queue) if it does
	// not exist. Declaring an existing queue with the same config is a
	// no-op; with a different config it fails with ErrInvalidArgument on
	// brokers that cannot change a queue in place. It fails with
	// ErrUnsupported if cfg asks for a feature the broker lacks.
	DeclareQueue(ctx context.Context, cfg QueueConfig) error

	// DeleteQueue removes the queue, its dead-letter queue and their items.
	// It returns ErrNotFound if the queue does not exist.
	DeleteQueue(ctx context.Context, queue string) error

	// Enqueue stores m in the queue. It is durable once it returns nil.
	// An empty m.ID is replaced by a random one. If the queue deduplicates,
	// a second enqueue of an ID within the dedupe window is dropped and
	// Enqueue returns nil. It returns ErrNotFound if the queue was never
	// declared, ErrTooLarge if m exceeds Capabilities.MaxMessageSize (before
	// sending anything).
	Enqueue(ctx context.Context, queue string, m Message) error

	// Consume opens a consumer on the queue (or, with opts.DeadLetters, on
	// its dead-letter queue). It returns ErrNotFound if the queue was never
	// declared.
	Consume(ctx context.Context, queue string, opts ConsumeOptions) (Consumer, error)

	// Close releases the connection. Items held by its consumers go back
	// to their queues (at once where the broker allows, else when their
	// leases expire); its subscriptions end.
	Close() error
}

// Subscription receives the messages of one topic.
type Subscription interface {
	// Receive blocks until the next message arrives or ctx is done. An
	// error matching ErrGap means messages may have been missed (a
	// reconnect, a full buffer); the subscription is still usable and the
	// caller should resynchronise and call Receive again. After Close, or
	// after the broker is closed, Receive returns ErrClosed.
	Receive(ctx context.Context) (Message, error)
	// Close ends the subscription and frees its broker resources.
	Close() error
}

// Consumer receives items of one queue under leases.
type Consumer interface {
	// Receive blocks until an item is available or ctx is done, and
	// returns it under a lease of the queue's length. After Close, or
	// after the broker is closed, it returns ErrClosed.
	Receive(ctx context.Context) (Delivery, error)
	// Close stops receiving. Unsettled deliveries are released to the
	// queue (at once where the broker allows, else when their leases
	// expire); settling them afterwards may fail with ErrLeaseLost.
	Close() error
}

// Pauser is a Consumer that can stop fetching ahead on request (optional).
type Pauser interface {
	// Pause gives back at once the items fetched ahead and not yet returned
	// by Receive, and fetches nothing more until the next Receive.
	// Deliveries Receive returned are not affected. A given-back item's
	// next attempt may count one more, as with Consumer.Close.
	Pause()
}

// Delivery is one item received under a lease. Exactly one of Ack, Nack and
// DeadLetter settles it; after that, or after the lease is lost, every
// method returns ErrLeaseLost. Its methods are safe for concurrent use and
// the operations run one at a time: an Ack called while an Extend is in
// flight waits for it, and of two racing Acks one settles the item and the
// other returns ErrLeaseLost (conformance ConcurrentOperationsOnOneDelivery).
type Delivery interface {
	// Message is the item as enqueued.
	Message() Message
	// Attempt counts deliveries of this item, starting at 1.
	Attempt() int
	// Queue is the name of the queue the item came from.
	Queue() string
	// LeaseDeadline is when the lease expires as far as this process knows.
	LeaseDeadline() time.Time

	// Ack removes the item for good. A nil return means the lease was
	// held when the acknowledgement was sent; adapters may send it without
	// waiting for the broker's reply (their package doc says which), in
	// which case Consumer.Close and Broker.Close return only once it
	// reached the broker, and an acknowledgement lost with the connection
	// before that lets the item come back after its lease, as if its holder
	// had died (at-least-once delivery either way).
	Ack(ctx context.Context) error
	// Nack returns the item to the queue; it is not delivered again before
	// delay has passed. The next delivery counts as a new attempt; if the
	// attempts are used up, the item is dead-lettered instead.
	Nack(ctx context.Context, delay time.Duration) error
	// Extend keeps the lease for at least d from now. d must be in
	// (0, queue lease]; brokers that renew by the queue's full lease length
	// renew by that.
	Extend(ctx context.Context, d time.Duration) error
	// DeadLetter moves the item to the queue's dead-letter queue with the
	// reason, readable there in HeaderDeadLetterReason.
	DeadLetter(ctx context.Context, reason string) error
}

// Message is what topics and queues carry.
type Message struct {
	// ID identifies the message. Queues use it to drop duplicates where
	// the broker deduplicates. Empty means "assign a random ID".
	ID string
	// Key orders messages on queues declared Ordered: items with the same
	// key are delivered in enqueue order. It is carried everywhere.
	Key string
	// Headers are application metadata. Names must match HeaderNamePattern
	// and must not start with ReservedHeaderPrefix unless set by an adapter.
	Headers map[string]string
	// Body is opaque binary data.
	Body []byte
}

// QueueConfig declares a leased queue.
type QueueConfig struct {
	// Name of the queue; see ValidateName.
	Name string
	// Lease is how long a delivery is held before the item returns to the
	// queue. Zero means DefaultLease.
	Lease time.Duration
	// MaxAttempts is how many deliveries an item gets before it is
	// dead-lettered. Zero means DefaultMaxAttempts.
	MaxAttempts int
	// Ordered asks for delivery in enqueue order per Message.Key.
	Ordered bool
	// Dedupe asks that a repeated Message.ID within DedupeWindow be dropped.
	Dedupe bool
	// DedupeWindow is how long IDs are remembered. Zero means
	// DefaultDedupeWindow.
	DedupeWindow time.Duration
}

// Defaults applied by QueueConfig.WithDefaults.
const (
	DefaultLease        = 30 * time.Second
	DefaultMaxAttempts  = 5
	DefaultDedupeWindow = 2 * time.Minute
)

// ConsumeOptions tune a consumer.
type ConsumeOptions struct {
	// Prefetch bounds the deliveries the consumer holds before they are
	// returned by Receive. Zero means 1. Prefetched items are leased.
	Prefetch int
	// MaxPrefetch, if above Prefetch, lets the consumer fetch ahead more
	// than Prefetch, up to MaxPrefetch, while Receive takes items fast: an
	// adaptive consumer sizes its fetch-ahead so that an item waits in its
	// buffer for about a tenth of the lease at most, at the rate Receive has
	// been taking items, and shrinks it again when items wait longer. Zero
	// means Prefetch. Adapters that cannot resize what they fetch ahead use
	// Prefetch (Capabilities.AdaptivePrefetch is Unsupported).
	MaxPrefetch int
	// DeadLetters reads the queue's dead-letter queue instead of the queue.
	DeadLetters bool
}

// Support tells how a broker provides a feature.
type Support int

const (
	// Unsupported features are refused with ErrUnsupported.
	Unsupported Support = iota
	// Emulated features are provided by the adapter on top of the broker;
	// the adapter's package doc says how and what differs.
	Emulated
	// Native features are provided by the broker itself.
	Native
)

func (s Support) String() string {
	switch s {
	case Native:
		return "native"
	case Emulated:
		return "emulated"
	default:
		return "unsupported"
	}
}

// Available reports whether the feature can be used at all.
func (s Support) Available() bool { return s != Unsupported }

// Capabilities describes what a broker does and its limits.
type Capabilities struct {
	// Name is the adapter's name, such as "nats" or "kafka".
	Name string
	// LeaseExtension: Delivery.Extend.
	LeaseExtension Support
	// DelayedNack: Delivery.Nack with a delay greater than zero.
	DelayedNack Support
	// DeadLetter: Delivery.DeadLetter and MaxAttempts.
	DeadLetter Support
	// Dedupe: QueueConfig.Dedupe.
	Dedupe Support
	// Ordering: QueueConfig.Ordered.
	Ordering Support
	// Restart: subscriptions and consumers survive a broker restart.
	Restart Support
	// QueueStats: the broker reports queue counts (QueueStatter; see
	// Stats). Emulated means some counts are Unknown.
	QueueStats Support
	// AdaptivePrefetch: ConsumeOptions.MaxPrefetch resizes what a consumer
	// fetches ahead; Unsupported means it fetches Prefetch.
	AdaptivePrefetch Support
	// MaxMessageSize is the largest Message accepted, as counted by Size.
	MaxMessageSize int
	// MaxHeaders is the largest number of Message.Headers accepted; zero
	// means no limit beyond MaxMessageSize.
	MaxHeaders int
	// MinLease and MaxLease bound QueueConfig.Lease.
	MinLease, MaxLease time.Duration
	// MaxDelay bounds the delay of Nack; zero means no limit.
	MaxDelay time.Duration
}
