// Package nats is the clusterbus adapter for NATS: core NATS subjects for
// broadcast topics, JetStream streams with durable pull consumers for leased
// queues.
//
// It imports the NATS client only. The embedded server is in the
// subpackage natsserver, so a program that connects to an external NATS does
// not link it.
//
// # URLs
//
// Importing the package registers the "nats" scheme with adapters.Open:
//
//	nats://[user:password@]host:port[,host2:port2…][?prefix=P&replicas=N&name=S&connect_timeout=D]
//
// A host without a port gets 4222. Query parameters: prefix (subject and
// stream prefix, default "clusterbus"), replicas (JetStream replicas of the
// streams the adapter creates, 1-5, default 1), name (connection name) and
// connect_timeout (a Go duration, default 5s). Any other parameter is an
// error that lists these. Open with Options does the same without a URL.
//
// Names on the server, for a prefix P, queue Q and topic T: topic subject
// "P.topic.T"; queue stream "P_Q_Q" on subject "P.queue.Q"; dead-letter
// stream "P_DLQ_Q" on "P.dlq.Q"; a durable pull consumer "clusterbus" on each
// stream; a one-message stream "P_KEEPALIVE" (see below); and, for each log
// L given to Retain (adapters.Retainer), a stream "P_LOG_L" on subjects
// "P.log.L.<key>" (the key base64url-encoded) that keeps one message per
// subject (MaxMsgsPerSubject 1, file storage, Options.Replicas replicas):
// Retain is a JetStream publish acknowledged by the stream, and Retained
// reads the stream with an ordered consumer until nothing is pending.
//
// # Message Delivery Semantics
//
// Topics are core NATS: at most once, to the subscribers connected when the
// message reaches the server. A disconnect, a reconnect or a full
// subscription buffer (4096 messages) is reported once by Receive as
// adapters.ErrGap.
// On a NATS cluster a new subscription reaches the other servers through
// their routes asynchronously: a message published through another server
// in the first milliseconds after Subscribe returns may not reach it.
//
// Enqueue is a JetStream publish that waits for the stream's
// acknowledgement of that message: when it returns nil the item is stored in
// a file-backed stream (fsynced too if the server runs with sync_interval
// "always", as natsserver.Config.Sync does). Publishes go through nats.go's
// asynchronous publisher, so concurrent Enqueue calls share the connection
// without waiting for each other (at most 4096 unacknowledged per
// connection; beyond that a call waits for room). EnqueueBatch
// (adapters.BatchEnqueuer) sends all its messages that way and then waits
// for all their acknowledgements. Enqueue retries "no responders"
// for about five seconds while JetStream comes back after a restart.
//
// Leases: AckWait of the queue's consumer is QueueConfig.Lease; the server
// starts it when it sends an item. How items are pulled depends on
// ConsumeOptions.Prefetch and MaxPrefetch:
//
//   - Prefetch and MaxPrefetch 0 or 1: Receive sends one pull request for one item and waits
//     (a quarter of the lease at most, then asks again), so a consumer holds
//     nothing it was not asked for. The lease deadline is the time the
//     request was sent plus the lease: never past the server's.
//   - Prefetch P > 1: the consumer keeps one long-lived pull subscription
//     (nats.go Consume) that asks for up to P items and asks again when half
//     have been handed to the adapter; pull requests last a quarter of the
//     lease (1 s to 5 s) with idle heartbeats at half that, and a missed
//     heartbeat or a reconnect renews them. At most P items wait in the
//     adapter's buffer and at most P more are requested or queued in nats.go.
//     Each item's lease deadline is measured from when the adapter saw it,
//     less an allowance of lease/20 (at most 1 s) for its time in transit
//     and in the client's socket buffers; items that queued in nats.go while
//     the adapter's buffer was full are stamped no later than when it filled.
//     The pull subscription starts with the first Receive, and a consumer
//     whose Receive has not been called for half a lease stops pulling and
//     gives back what it fetched ahead (negatively acknowledged: JetStream
//     counts the delivery, so the item's next attempt number is one higher)
//     until Receive is called again (or at once on Pause). Use a Prefetch
//     no larger than the number of goroutines calling Receive.
//   - MaxPrefetch M above Prefetch P (the workqueue's default: P is its
//     concurrency, M 500): the same, with P as the starting size of the
//     pull. Every 50 ms (or after four pulls' worth of items, if that
//     comes sooner but after 5 ms) the consumer measures the rate Receive
//     takes items and, when a pull twice as large or more would still empty within a
//     tenth of the lease at that rate, replaces the pull with one of that
//     size (at most M, and at most 64 MiB at the items' mean size). An
//     item that waited in the buffer longer than that shrinks the pull to
//     a quarter (at least P). A replaced pull is drained, not stopped: what
//     it fetched is handed out, nothing is negatively acknowledged, and no
//     delivery is counted twice. A pause starts again at P. On this
//     machine a drain of 20,000 items by 8 consumers went from 57k items/s
//     (P = M = 8) to 99k (P 8, M 500), raw nats.go 131k-143k.
//
// An item whose lease ran out while buffered is not handed out (it comes
// back by itself). After the local deadline every method returns
// adapters.ErrLeaseLost without sending anything.
//
// Ack and Nack are sent without waiting for the server's reply (plain
// JetStream acknowledgements, pipelined with everything else the connection
// sends): a nil return means the lease was held when the acknowledgement was
// handed to the connection, which delivers it in order (while disconnected,
// nats.go keeps it in its reconnect buffer and sends it on reconnect).
// Consumer.Close and Broker.Close return once everything sent so far reached
// the server. If the connection is lost for good before that, the item comes
// back after its lease, as an item whose holder died does: delivery is
// at-least-once either way. Extend and the moves to the dead-letter queue
// wait for the server's reply. The server does not check which delivery an
// acknowledgement came from, so an Ack sent just before the local deadline,
// and delayed in flight past the server's, can still settle an item the
// server had just redelivered.
//
// Retention and compaction: a queue's stream has limits retention, so an
// acknowledgement only moves the durable consumer's state (written by the
// server about ten times a second) and removes nothing. Each Consumer,
// once a second if it acknowledged 256 items since its last compaction
// (one is enough once ten seconds passed) and once more on Close, reads the
// consumer's ack floor (every item at or below it is acknowledged) and
// purges the stream below it: two requests and one delete record for all
// the items acknowledged meanwhile, and no more than that for a queue with
// a trickle of work on many nodes. A work-queue stream
// would remove each acknowledged item with a delete record of its own,
// fsynced under sync_interval always; on this machine, with fsync always,
// a drain of 20,000 items went from 3.4k items/s (work-queue stream) to
// 73k. Queue stats count items from the consumer (pending and ack-pending),
// not from the stream. What the stream keeps above the floor is
// acknowledged items after an item still held or delayed; past 100,000 of
// them each acknowledgement also deletes its item until the floor moves
// (logged when it starts and stops). Delivery stays at-least-once, with two
// more ways to repeat an item: if the durable consumer is deleted and made
// again, the items acknowledged since the last purge are delivered again;
// and if a server process dies, the acknowledgements of its last tenth of a
// second may not have been written, so those items come back after their
// lease (a work-queue stream had written a delete record for each). A queue stream made with work-queue
// retention by an earlier version stays one (the server cannot change a
// stream's retention) and works as before, without compaction; to move it,
// drain the queue, delete it and declare it again. The reverse does not
// hold: a version before compaction cannot declare a queue whose stream has
// limits retention (the server refuses the change), so after an upgrade
// has made new queues, going back to such a version needs those queues
// drained and deleted first.
//
// Extend sends InProgress, which restarts the server's AckWait: the lease is
// renewed by the full queue lease whatever duration is asked.
//
// Nack(delay) sends NakWithDelay; the item comes back no earlier than the
// delay as a new attempt. Delays are not bounded.
//
// Attempts are JetStream's delivery count. The consumer has no MaxDeliver
// (the server would stop delivering and keep the item forever); the adapter
// counts instead:
//
//   - Nack on attempt MaxAttempts moves the item to the dead-letter stream.
//   - When the lease of attempt MaxAttempts expires unsettled in a live
//     process, a timer in that process moves it.
//   - If that process died (or the move failed), the server redelivers the
//     item as attempt MaxAttempts+1; the consumer that receives it moves it
//     to the dead-letter stream instead of returning it. Until some consumer
//     of the queue pulls, the item waits in the queue: it is never lost, but
//     it reaches the dead-letter queue only then.
//   - Closing a consumer returns its unsettled items at once (Nak), except
//     last attempts, which are dead-lettered.
//
// A move publishes the item, its headers and adapters.HeaderDeadLetterReason
// (at most 1024 bytes) to the dead-letter stream with Nats-Msg-Id set to the
// item's stream and sequence, waits for the store, then acks the original.
// A crash between the two leaves the original to be moved again, and the
// dead-letter stream's duplicate window (at least two leases plus a minute)
// drops the second copy. DeadLetter on an item read from a dead-letter queue
// is refused (Ack drops it, Nack returns it there); dead-letter queues have no
// attempt limit.
//
// Dedupe: a queue declared with Dedupe sends the message ID as Nats-Msg-Id
// and the stream's duplicate window is QueueConfig.DedupeWindow; the server
// drops repeats and Enqueue returns nil. Without Dedupe no Nats-Msg-Id is
// sent, so equal IDs are kept.
//
// Ordering (Capabilities.Ordering is Emulated): the consumer of a queue
// declared Ordered has MaxAckPending 1, so the whole queue has one item in
// flight at a time, across all consumers, in enqueue order; a redelivery
// comes before the next item. That orders every key, at the price of all
// parallelism on that queue: an item that is nacked with a delay, or whose
// holder died, holds up every key until it is settled, dead-lettered or its
// lease expires. Use several queues where keys need not wait for each other.
//
// Not provided: exactly-once delivery (an item can be delivered again after
// a lease expires or a connection drops), and ordering of topic messages
// across reconnects.
//
// Sizes: Capabilities.MaxMessageSize is the server's max_payload, learned at
// connect, minus 4096 bytes kept for the adapter's headers; at most 64 user
// headers. A larger message fails with adapters.ErrTooLarge before anything
// is sent. Header names that start with "nats" (any case) are carried under
// an internal name so the server does not act on them; header values that
// start with a blank are escaped, because NATS trims leading blanks.
//
// Reconnects: the client reconnects forever with a backoff of 100ms up to 5s.
// Subscriptions are renewed by the client (with an ErrGap), consumers pull
// again after a reconnect, and the durable consumers and streams outlive a
// server restart. Receive retries connection trouble until its context ends;
// other calls fail with adapters.ErrUnavailable (retryable).
//
// The keepalive stream: nats-server can fail to create a stream right after
// an account's last stream was deleted ("could not create storage
// directory"), because the account's store directory is being removed. Open
// therefore creates "P_KEEPALIVE" (one subject, at most one message, never
// deleted) so that an account used by clusterbus always has a stream.
//
// # Errors
//
// Missing streams or consumers are adapters.ErrNotFound; timeouts, no
// responders and lost connections are adapters.ErrUnavailable; oversized
// messages adapters.ErrTooLarge; JetStream's 400 errors
// adapters.ErrInvalidArgument; anything after Close adapters.ErrClosed. On a
// server without JetStream, topics work and every queue operation fails with
// adapters.ErrUnsupported saying that JetStream is needed.
// errors.As still reaches the nats.go error.
//
// # Embedded server
//
// Package natsserver runs nats-server with JetStream in process, on
// 127.0.0.1:14222 by default (not 4222, so it does not clash with a NATS
// already on the machine); `clusterbus broker` uses it. The tests of this
// package start one on a random port in a temporary directory.
package nats
