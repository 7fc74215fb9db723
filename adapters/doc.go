// Package adapters is the broker-neutral contract of clusterbus: the two
// primitives every broker adapter provides, the values they exchange, the
// error codes they report and the URL registry that opens them.
//
// # Primitives
//
// A broadcast topic delivers every message published after a subscriber
// subscribed to every connected subscriber. Delivery is at-most-once across
// disconnects: a Subscription reports that it may have missed messages by
// returning an error that matches ErrGap from Receive, then goes on.
//
// A leased queue hands each item to one consumer at a time, under a lease.
// Enqueue is durable once it returns. While the lease holds no other consumer
// receives the item; a Delivery can be extended, acknowledged, negatively
// acknowledged with a delay, or dead-lettered with a reason. An expired lease
// makes the item available again with its attempt count increased; after
// QueueConfig.MaxAttempts deliveries the item moves to the queue's
// dead-letter queue, which is read with ConsumeOptions.DeadLetters and carries
// the reason in the HeaderDeadLetterReason header.
//
// A broker may also implement BatchEnqueuer, which stores several items
// with one wait for the broker; the function EnqueueBatch uses it where it
// exists and falls back to Enqueue per item. A broker may implement
// AsyncEnqueuer, which sends an item and lets the producer wait for its
// acknowledgement later (Pending.Wait), so that one producer keeps many
// items in flight; nothing is durable until Wait returns nil. The function
// EnqueueAsync uses it or runs Enqueue on its own goroutine.
//
// A broker may implement Retainer, which keeps the last value per key of a
// named log durably (NATS: a JetStream stream per log; Kafka: a compacted
// topic; mem: a map), so that
// state such as the catalog package's entries survives a restart of every
// node. Decorators (signed, traced) implement it too and pass it on; use
// RetainerOf to find out whether a broker, decorators included, retains.
//
// # Capabilities
//
// Brokers differ. Capabilities says, per feature, whether the broker does it
// natively, whether the adapter emulates it, or whether it is unsupported. An
// unsupported feature is refused with ErrUnsupported, never silently ignored.
//
// # Errors
//
// Adapters report errors that match one of the sentinels below with
// errors.Is, and still expose the underlying SDK error to errors.As. Context
// errors are passed through unchanged. IsRetryable tells a transient failure
// (ErrUnavailable) from a permanent one.
//
// # URLs
//
// Adapters register a URL scheme with Register, usually from an init
// function; programs blank-import the adapters they want and call Open.
package adapters
