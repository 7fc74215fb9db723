// Package rabbitmq is the clusterbus broker adapter for RabbitMQ (AMQP
// 0-9-1, github.com/rabbitmq/amqp091-go). Blank-import it and open a broker
// with adapters.Open(ctx, "amqp://user:pass@host:5672/vhost"), or call Open.
//
// # URLs
//
//	amqp://user:pass@host:5672/vhost
//	amqps://user:pass@host:5671/vhost?cacertfile=/ca.pem&certfile=/c.pem&keyfile=/k.pem
//
// The path is the vhost ("/" when empty; "%2F" spells "/" explicitly).
// Credentials with reserved characters must be percent-encoded. Accepted
// query parameters: auth_mechanism, cacertfile, certfile, channel_max,
// connection_timeout (ms), heartbeat (s), keyfile, server_name_indication
// (passed to amqp091-go), and the adapter's own consumer_timeout (the
// broker's consumer_timeout as a Go duration, default 30m) and max_backoff
// (cap of the reconnect backoff, default 5s). Any other parameter is an
// error naming the accepted ones.
//
// # Resources
//
// A topic T is a durable fanout exchange "cb.t.T"; each Subscription binds
// its own exclusive, auto-deleted, server-named queue to it. A queue Q is a
// quorum queue "cb.q.Q" with x-delivery-limit = MaxAttempts-1 and
// dead-lettering (through the default exchange) into the quorum queue
// "cb.q.Q.dlq", at-least-once (x-dead-letter-strategy=at-least-once, which
// RabbitMQ only honours with x-overflow=reject-publish; no length limit is
// set, so nothing is rejected); a small classic queue "cb.q.Q.cfg" holds
// the QueueConfig fields RabbitMQ cannot store (the lease), so that a
// client that did not declare the queue consumes it with the right lease.
// Delayed nacks wait in the quorum queue "cb.q.Q.delayed" (no TTL, no
// dead-lettering) until a client moves them back (see below). Queue arguments
// are derived from QueueConfig alone, so every client declares the same
// ones; redeclaring with another MaxAttempts (RabbitMQ answers 406
// PRECONDITION_FAILED) or another Lease fails with adapters.ErrInvalidArgument
// naming the argument that differs.
//
// Requires RabbitMQ 3.10 or later (message TTL and at-least-once
// dead-lettering on quorum queues) with the stream_queue feature flag
// enabled (the default for nodes created since 3.9).
//
// Upgrading from earlier versions of this adapter: they declared "cb.q.Q"
// without x-dead-letter-strategy and x-overflow, and RabbitMQ cannot change
// queue arguments in place, so DeclareQueue on such a queue fails with
// ErrInvalidArgument (406 PRECONDITION_FAILED naming
// x-dead-letter-strategy) saying to drain and delete the queue or use a new
// queue name. Enqueue and Consume still work on it (they do not declare),
// but RabbitMQ dead-letters its items at-most-once until it is recreated.
// Their classic delay queues "cb.q.Q.retry.<ms>ms" are no longer used; they
// return what they hold (at-most-once) and expire by themselves.
//
// # Message Delivery Semantics
//
// Topics are at-most-once. A subscriber receives what is published while
// its queue is bound; after a reconnect it binds a new queue and its next
// Receive returns adapters.ErrGap. At most 256 messages are in flight to a
// subscription (basic.qos with acks); a slow subscriber's backlog waits in
// its RabbitMQ queue. Publish waits for the publisher confirm.
//
// Enqueue returns after the publisher confirm: the quorum queue has the item
// on a majority of its replicas. Publishing is pipelined: concurrent
// Enqueue, EnqueueBatch and Publish calls share a few confirm channels (one
// more opens while every one has 64 publishes awaiting confirms, up to 16),
// each publish sent at once and waiting only for its own confirm, so the
// broker confirms many per frame. A mandatory publish's basic.return is
// matched to it by a token in CorrelationId (RabbitMQ sends the return
// before the confirm). EnqueueBatch (adapters.BatchEnqueuer) publishes its
// messages without waiting in between, then waits for every confirm; only
// the messages nacked or cut off are sent again. A publish cut off by a lost
// connection is sent again on the next one, so an item may be enqueued
// twice; a channel the broker closes over one publish (a missing exchange)
// cuts off the others in flight on it, which are sent again. There is no
// deduplication (Capabilities.Dedupe is Unsupported: RabbitMQ has none
// built in) and no ordering by key (Ordering Unsupported: a quorum queue is
// FIFO for one consumer, but requeues and competing consumers reorder).
//
// Lease: RabbitMQ holds an unacknowledged delivery for as long as the
// consumer's channel lives; it has no lease timer. The adapter emulates one
// (Capabilities.LeaseExtension is Emulated): each delivery gets a timer of
// QueueConfig.Lease from the moment Receive hands it out; when it fires the
// adapter requeues the delivery itself
// (basic.nack with requeue), RabbitMQ counts that as a delivery, and the
// item comes back with Attempt+1; settling it afterwards returns
// adapters.ErrLeaseLost. Extend restarts the timer. Prefetched items that
// Receive has not handed out yet are held by the channel without a timer:
// they cost no attempts while they wait, stay invisible to other consumers
// until this consumer takes them, closes or dies, and are bounded by
// ConsumeOptions.Prefetch (basic.qos; MaxPrefetch is not used: the
// prefetch stays fixed). The lease also ends,
// earlier, when the channel or connection dies: a crashed process is noticed
// by the AMQP heartbeat (amqp091-go's default 10s) or at once when its TCP
// connection closes, and RabbitMQ redelivers at once with Redelivered set,
// counting against x-delivery-limit. RabbitMQ's consumer_timeout (30 minutes
// by default) closes a channel whose delivery stayed unacknowledged longer,
// and with it every lease on that channel; Extend cannot reset that clock,
// so it refuses, with adapters.ErrUnsupported, to extend a lease past
// consumer_timeout after the delivery (tell the adapter the broker's value
// with consumer_timeout=). Capabilities.MaxLease is consumer_timeout.
//
// Ack and Nack(0) are sent without waiting (AMQP has no reply to them).
// Consumer.Close and Broker.Close first end the leases of the deliveries
// handed out (settling one afterwards fails with adapters.ErrLeaseLost) and
// wait, at most two seconds, for the Acks and Nacks already running on them;
// then they make one synchronous round trip on each consumer channel
// (basic.qos, at most two seconds), so the acknowledgements sent before have
// reached the broker when the channel closes: RabbitMQ (seen on 3.10 with
// quorum queues) can requeue items acked just before their channel closed.
//
// Attempts: Attempt is the quorum queue's x-delivery-count + 1, plus the
// deliveries before any delayed nacks (carried in the cb-attempts header).
//
// Nack(0) requeues at once, inside the quorum queue. Nack(d) publishes a
// copy (with the attempt count and its due time, now + d, in the x-cb-due
// header) to the delay queue "cb.q.Q.delayed", waits for the publisher
// confirm (the copy is on a majority of its replicas), and only then acks
// the original. Every Consumer of Q runs, once per Broker, a mover over
// that delay queue: it takes up to 256 items at a time, holds each until
// it is due (at most 30 s, after which an item not yet due goes back to
// the tail), publishes it back into "cb.q.Q" (confirmed) and then acks it.
// The client does the timing, so an item is never early and, once its
// queue has a consumer, back within about a reconnect (max_backoff) of the
// later of its due time and the broker being reachable: a mover that dies
// or loses its connection leaves its items to RabbitMQ, which gives them
// to another mover. Tested by killing (SIGKILL) and by stop_app of the
// cluster node that leads the queues, with items due before, during and
// after the outage. A failure between a confirm and its ack leaves a
// duplicate, never a loss; Nack then returns adapters.ErrLeaseLost although
// the copy is scheduled. Capabilities.DelayedNack is Emulated. Items
// delayed while no consumer of Q runs anywhere wait until one starts; more
// than 256 items held not yet due by every mover delay the ones behind
// them by up to 30 s per round.
//
// Why not RabbitMQ's own timers: earlier versions used a quorum queue per
// delay ("cb.q.Q.delay.<ms>ms") with a message TTL that dead-lettered back
// at-least-once. RabbitMQ 3.10 does not always resume that dead-lettering
// after the delay queue's leader dies: an item whose TTL ended as its
// leader was killed stayed counted in the delay queue, neither ready nor
// dead-lettered, for as long as anyone waited (12 minutes in production,
// more than 3 minutes here after a kill -9 of one node of three). Such
// queues left by earlier versions still dead-letter by themselves and
// expire ten minutes after their last use; DeleteQueue deletes the delay
// queues, old and new, that it knows of.
//
// Dead letters: DeadLetter(reason) publishes the item with
// adapters.HeaderDeadLetterReason (and HeaderDeadLetterAttempts) to
// "cb.q.Q.dlq", confirmed, then acks the original (again a duplicate,
// never a loss, if it fails in between). An item RabbitMQ dead-letters by
// itself after x-delivery-limit moves at-least-once, kept in "cb.q.Q"
// until "cb.q.Q.dlq" confirms it (tested across a restart that returned a
// held last attempt), and carries x-death headers; the adapter turns the
// newest death's reason into HeaderDeadLetterReason when the dead-letter
// queue is read. Items waiting to be dead-lettered still count in
// "cb.q.Q"'s message count but are never delivered from it; RabbitMQ moves
// them 32 at a time by default (dead_letter_worker_consumer_prefetch).
// Because a retry through the delay queue restarts RabbitMQ's delivery
// count, the adapter also dead-letters any item that arrives with Attempt
// above MaxAttempts, and Nack of the last attempt dead-letters instead of
// requeueing.
//
// Reconnects: the Broker redials with exponential backoff (50ms up to
// max_backoff) when the connection drops; publishers, consumers and
// subscriptions move to the new connection by themselves. Calls made while
// disconnected wait for the connection until their context ends.
//
// # Limits
//
// Messages up to 4 MiB (MaxMessageSize, counted by adapters.Size) and 64
// headers; RabbitMQ itself takes up to 128 MiB but large messages hurt
// quorum queues. Leases from 100ms to consumer_timeout; the emulated timer
// runs in the client, so its precision is the client's clock, and an item
// comes back after its lease only while the consuming process runs (if the
// process dies, the connection's end returns it). Nack delays up to 7 days.
// Tested against RabbitMQ 3.10.8.
package rabbitmq
