// Package kafka is the clusterbus adapter for Apache Kafka, built on
// github.com/segmentio/kafka-go. Kafka has topics, partitions and consumer
// groups, but no per-message lease, redelivery delay, delivery counter or
// dead-letter queue; this adapter builds those on top and says below where
// the result differs from the contract in package adapters.
//
// # URLs
//
//	kafka://host:9092[,host2:9092][?param=value&...]
//
// Blank-import the package and call adapters.Open, or call Open with a
// Config (ParseURL builds one). A host without a port gets 9092; through
// adapters.Open, whose net/url parser reads "k1:9092,k2" as a bad port,
// give the last host a port (or none at all). Accepted
// parameters (anything else fails with ErrInvalidArgument listing these):
//
//	partitions=8           partitions of the topics created for a new queue
//	replication=-1         replication factor of created topics (-1: broker default)
//	session_timeout=10s    consumer-group session timeout
//	heartbeat_interval=1s  consumer-group heartbeat (at most session_timeout/3)
//	prefix=clusterbus      first part of every topic and group name
//	client_id=clusterbus   client ID sent to Kafka
//
// TLS and SASL are not supported yet; a URL with user info is refused.
//
// Names: broadcast topic T is the Kafka topic <prefix>.t.T; queue Q owns
// <prefix>.q.Q (items), <prefix>.r.Q (delayed retries), <prefix>.d.Q
// (dead letters) and <prefix>.m.Q (its declaration, compacted), and the
// consumer groups <prefix>.q.Q, <prefix>.r.Q and <prefix>.d.Q. A log L of
// adapters.Retainer is the one-partition compacted topic <prefix>.l.L:
// Retain writes a record keyed by the key (acks=all), Retained reads the
// topic from its first offset to its end and keeps each key's last value.
//
// # Message Delivery Semantics
//
// Topics. Publish appends to a one-partition topic, created on first use.
// Subscribe asks Kafka for the end offset of each partition and reads from
// there with its own reader (no consumer group), so every message published
// after Subscribe returns is delivered and none from before. kafka-go
// reconnects by itself and resumes at the next offset; because a lost
// connection may also mean a skipped range (retention, a broker that lost
// data), the next Receive after any connection error returns ErrGap once.
//
// Queues. DeclareQueue creates the four topics (idempotent) and writes the
// QueueConfig to the meta topic; every node reads it from there, and a
// different config for an existing queue is refused. An undeclared queue is
// ErrNotFound. Enqueue writes with acks=all and returns when the in-sync
// replicas have the item; items are spread over partitions by Message.Key
// (round robin without one). Concurrent Enqueues share produce requests:
// the writer closes a partition's batch after 200 µs or 256 records and
// sends a partition's batches one request at a time, each Enqueue waiting
// only for the batch that holds its record. EnqueueBatch
// (adapters.BatchEnqueuer) validates every message, then hands them all to
// the writer in one call and returns once every one has all in-sync
// replicas. EnqueueAsync (adapters.AsyncEnqueuer) hands the item to a
// second writer with the same settings in kafka-go's asynchronous mode and
// returns; its Pending is settled by the writer's Completion when the
// produce request is answered (acks=all) or failed after the writer's
// retries. At most 4,096 such items are in flight per Broker; Close
// flushes them. Every consumer of a queue, on every node, is a
// member of the same consumer group and joins at its first Receive (a
// consumer that never receives owns no partitions).
//
// Leases are emulated. Receive starts a timer of QueueConfig.Lease (items
// prefetched under ConsumeOptions.Prefetch, fixed (MaxPrefetch is not used), wait in memory, unleased but out
// of other consumers' reach because their partition is owned); Extend
// restarts it (LeaseExtension Emulated). When it fires, the adapter appends
// a copy of the item with attempt+1 to the queue (in a partition another
// member owns, if any), marks the original offset settled, and any later
// Ack, Nack, Extend or DeadLetter of the old delivery returns ErrLeaseLost.
// The attempt count travels in a record header. Nack(0) appends a copy with
// attempt+1 at once; Nack(delay) appends it to the retry topic with its due
// time, and a member of the retry group (every consumer runs one) holds it
// in memory until then and appends it to the queue (DelayedNack Emulated).
// DeadLetter, and Nack or lease expiry with MaxAttempts used up, append the
// item to the dead-letter topic with adapters.HeaderDeadLetterReason.
//
// Ordered queues (Ordering Emulated). Items are placed by Message.Key, so
// same-key items share a partition, and each partition of an ordered queue
// has at most one item in flight: the next record is handed out only after
// the one before it is settled (Ack, DeadLetter, or dead-lettered when
// MaxAttempts is used up). Nack and lease expiry do not re-append the item;
// its partition hands the same record out again (attempt + 1, after the
// Nack delay) to the same consumer, ahead of everything behind it. A
// rebalance or crash makes the next owner start again at the item in
// flight. The price is head-of-line blocking: all keys of a partition wait
// for its slowest item, and an ordered queue has at most one item in flight
// per partition. Its attempt count lives in memory between redeliveries, so
// a move to another consumer restarts it from the count in the record.
// The dead-letter topic is not ordered.
//
// Acks and offsets. Kafka stores one committed offset per partition. The
// adapter tracks every offset it hands out and commits the contiguous
// low-water mark: the offset below which everything is settled. Ack marks
// its offset settled at once, whatever else is outstanding, and returns
// without waiting for the commit (adapters.Delivery.Ack allows that): one
// committer per group membership of the consumer commits the marks that
// moved, every partition in one request, so acks that come faster than a commit round trip share
// commits. The end of a generation (a rebalance) and Consumer.Close and
// Broker.Close commit what was acked before the group moves on. Nack,
// DeadLetter and the re-queueing of an expired lease still wait for their
// commit. While an earlier item of the same partition is unsettled the mark
// cannot pass the acked one, so that ack is durable only once the earlier
// items settle and the mark is committed: after a crash or a partition
// move, every unsettled item, every settled item above the first unsettled
// one in its partition and every ack whose commit had not landed is
// delivered again. Delivery is therefore at-least-once.
//
// # Where the contract holds differently
//
//   - A lease is also partition ownership. A rebalance (a consumer joining,
//     leaving or timing out) can move a partition to another member; then
//     that member reads its unsettled items again (same attempt number) and
//     the old holder's settle calls return ErrLeaseLost. A sticky assignment
//     keeps partitions with unsettled items with their holders whenever the
//     fair share allows, and a settle during a rebalance waits for its
//     outcome. The old holder learns of the move when the new owner does,
//     so its handlers may still be working; the new owner therefore honours
//     their leases: each member reports at every join which partitions it
//     holds records of (or lost with records out, within one lease), and a
//     member that is given such a partition of a member still in the group
//     (DescribeGroups) reads it only one QueueConfig.Lease after the
//     generation started. A partition of a member that crashed or closed
//     is read at once. The price is that a rebalance stalls the partitions
//     that move from busy members for one lease.
//   - A crashed consumer (no Close) holds its items until the group session
//     timeout moves its partitions, however short their leases (the lease
//     timers died with it); they then return with the attempt count they
//     had, because Kafka counts nothing. A poison item that crashes its
//     consumer each time is therefore not dead-lettered by MaxAttempts.
//     Close re-queues held items at once, with attempt+1.
//   - The other side of that: a consumer that is alive but cut off from
//     the group coordinator loses its partitions after the session
//     timeout, and the next owner reads them at once (the member is no
//     longer in the group, so nothing tells the next owner to wait), while
//     the cut-off consumer's handlers learn of the loss only when a
//     settle or Extend fails. With a session timeout shorter than the
//     lease, two consumers can then work on one item for up to the
//     difference. For strict leases set session_timeout at least as long
//     as the queue lease (the default 10s is shorter than the 30s lease of
//     package flows).
//   - Items in a partition go only to the member that owns it. A consumer
//     that has joined but stops calling Receive keeps its partitions' items
//     waiting; close it. With more consumers than partitions, some are idle.
//   - On queues that are not ordered, re-queued copies (lease expiry, Nack)
//     are new records: enqueue order is not kept, a copy after lease expiry
//     goes to another member's partition when there is one, and a crash
//     between appending the copy and committing the original can deliver
//     both.
//
// # Limits
//
//   - Dedupe is Unsupported: Kafka's idempotent producer only drops its own
//     retries within one producer session; nothing remembers message IDs,
//     and the adapter does not keep a shared store to fake it.
//   - MaxMessageSize is 1,000,000 bytes (Kafka's default message.max.bytes is
//     1 MiB; the rest is room for headers and framing). MinLease is 100ms;
//     there is no MaxLease or MaxDelay. A consumer holds at most 10,000
//     delayed retries in memory; more wait in Kafka.
//   - Restart is Native: clients reconnect and resume from committed offsets.
//   - replication=-1 needs Kafka 2.4 or later (CreateTopics v4); set an
//     explicit factor for older brokers.
//   - kafka-go's consumer group speaks old protocol versions (FindCoordinator
//     v0, JoinGroup v1, SyncGroup, Heartbeat and LeaveGroup v0). Kafka 4.0
//     removed many old versions (KIP-896; 4.0.1 restored JoinGroup v0-v1).
//     This adapter is tested against kfake only; run the suite with
//     CLUSTERBUS_TEST_KAFKA_BROKERS against the Kafka version you deploy.
//
// # Tests
//
// The conformance suite runs against github.com/twmb/franz-go/pkg/kfake, an
// in-process Kafka, on a random port with a data directory; its Restart
// closes the cluster and starts a new one on the same port and directory,
// so records and committed offsets survive. CLUSTERBUS_TEST_KAFKA_BROKERS=
// host:port[,...] runs the same suite against a real Kafka (no restart
// case there). One kfake behaviour matters under churn: it restarts its
// wait for a rebalance on every join or departure (kfake's groups.go), so
// joins that keep coming closer together than the rebalance timeout stall
// a kfake group; seen in the chaos test, where no generation started for
// four minutes. Members retry
// failed joins after a jittered backoff so that they cannot keep that
// rhythm forever, and the tests use a 3s session (and rebalance) timeout.
package kafka
