// Package sqs is the clusterbus adapter for Amazon SQS, with Amazon SNS for
// broadcast topics.
//
// # URLs
//
//	sqs://REGION?endpoint=http://127.0.0.1:4566&prefix=prod-&wait=20s
//
// REGION is the AWS region. endpoint (optional) points SQS and SNS at
// another server, such as a local emulator. prefix is put in front of every
// queue and topic name. wait is the long-poll time of receive calls (at most
// 20s, the default). Any other parameter is refused with an error listing
// these. Credentials come from the standard AWS chain (environment,
// shared config files, SSO, IAM role), or Config.Credentials.
//
// # Queues
//
// A queue NAME is the SQS queue PREFIX+NAME with the dead-letter queue
// PREFIX+NAME-dlq. A queue declared Ordered or Dedupe is a FIFO queue
// instead (NAME.fifo and NAME-dlq.fifo): on an Ordered queue the message key
// is the MessageGroupId (items without a key share one group); on a Dedupe
// queue the message ID is the MessageDeduplicationId. The lease is the
// visibility timeout; MaxAttempts is the redrive policy's maxReceiveCount.
// The queue settings the adapter cannot read back from SQS (Ordered,
// Dedupe) are stored as queue tags. SQS names are at most 80 characters, so
// PREFIX+NAME+"-dlq.fifo" must fit.
//
// # Topics
//
// A topic is the SNS topic PREFIX+NAME. Every Subscribe creates its own SQS
// queue (PREFIX+NAME-sub-RANDOM), allows the topic to send to it and
// subscribes it with raw message delivery; Close unsubscribes and deletes
// the queue. The subscription deletes what it receives at once.
//
// # Message Delivery Semantics
//
// Enqueue returns once SQS has stored the item: items go in
// SendMessageBatch requests, and each caller waits for the answer about its
// own entry. On a standard queue up to eight requests run at once, each
// sent as soon as one of the eight is free, so concurrent callers wait one
// round trip, not behind each other's; callers that find all eight running
// go together (ten to a request) in the next. On a FIFO queue one request
// runs at a time, so that a key's items are stored in the order given.
// Items are delivered at least once.
// Receive hands an item out under a lease of the queue's length, counted
// from the moment the receive call returned; SQS is asked for one second
// more (the visibility timeout is lease + 1 s, at most 12 h), so the adapter's deadline
// always passes before SQS makes the item visible again, as long as a
// response takes less than that second to arrive. Extend and Nack(delay)
// call ChangeMessageVisibility; all durations are rounded up to whole
// seconds (SQS's granularity, so MinLease is 1s). Attempt is SQS's
// ApproximateReceiveCount. On Ordered queues a consumer receives one item
// per call whatever its Prefetch, so that a Nack cannot leave a later item
// of the same key in its buffer. Ack deletes the item without waiting for
// SQS's answer (adapters.Delivery.Ack allows it): it returns nil once the
// lease was held and the delete queued; deletes go ten to a
// DeleteMessageBatch request (one request at a time, and a second, up to
// eight, for each ten more waiting), and Consumer.Close and Broker.Close
// return only once SQS answered those of their consumers. A delete SQS
// refuses (the lease ran out meanwhile) is logged, and the item comes back
// after its lease, as if the consumer had died. A Nack on the
// last attempt dead-letters the item at once. When the lease of a delivery
// on its last attempt runs out unsettled, the adapter (which still holds
// the item for the extra second) dead-letters it with the reason "lease
// expired on the last attempt"; if that fails, or the process died, SQS's
// redrive policy (maxReceiveCount = MaxAttempts) moves the item the next
// time any consumer receives from the queue. DeadLetter sends a copy with the
// reason to the dead-letter queue, then deletes the original: a crash in
// between leaves the copy and the original (on FIFO queues the copy is
// deduplicated by the SQS message ID). Items moved by the redrive policy
// carry no reason of their own; the adapter reports "moved by the SQS
// redrive policy after MaxAttempts (N) deliveries" in
// adapters.HeaderDeadLetterReason.
//
// The adapter tracks each delivery's lease itself: after the lease deadline
// it knows of, or once settled, every method returns ErrLeaseLost without
// calling SQS (SQS may silently accept a stale receipt handle). Closing a
// consumer sets the visibility of its unsettled and prefetched items to 0,
// so others get them at once; a long poll still waiting at the server when
// its consumer closed is left to finish, and what it gets is released the
// same way (with an attempt counted), rather than hidden for a lease.
// Prefetch is fixed (ConsumeOptions.MaxPrefetch is not used).
// Prefetched items are leased from the moment
// they are received; one whose lease ran out in the buffer is dropped and
// comes back with the next attempt.
//
// Standard queues may, rarely, deliver an item a second time (SQS's own
// at-least-once delivery) and do not keep order; FIFO queues deliver in order per group and drop a repeated
// deduplication ID for SQS's fixed 5 minutes (so DedupeWindow must be at
// most 5m). Topics are at most once: a subscription reports ErrGap after a
// failed receive, a full buffer (1024 messages) or when it had to re-create
// its queue (which it does when the queue disappears, for example when an
// emulator restarts). SNS delivers to a new subscription a moment after
// Subscribe returns on real AWS.
//
// # Limits
//
// Checked before anything is sent:
//   - at most 9 headers (SQS allows 10 message attributes and the adapter
//     uses one, "cb-meta", for the ID, key, body encoding and dead-letter
//     reason); header names SQS refuses (starting with "AWS." or "Amazon.",
//     containing "..", ending in ".") are refused with ErrInvalidArgument;
//   - at most 256 KiB as sent (body plus attribute names, types and values)
//     with ErrTooLarge. Bodies that are not valid SQS text (UTF-8 of the
//     XML characters up to U+FFFD; characters beyond the BMP such as emoji
//     count as binary because emulators refuse them) are sent
//     base64-encoded, marked in cb-meta, 4/3 larger; Capabilities
//     MaxMessageSize (190 KiB) is what always fits even then. Header values
//     that are not valid SQS text travel as Binary attributes; empty ones
//     are listed in cb-meta, as SQS refuses empty values;
//   - lease 1s to 12h; Nack delay at most 12h.
//
// Capabilities.Restart is Native: SQS is a managed, durable service, and
// consumers and subscriptions retry through outages (a subscription
// reports ErrGap and re-creates its queue if it disappeared). It is not
// exercised by the conformance suite here, whose restart case needs items
// to survive a restart of the server, which fauxqs cannot do.
//
// The adapter needs these IAM actions: sqs:CreateQueue, GetQueueUrl,
// GetQueueAttributes, SetQueueAttributes, TagQueue, ListQueueTags,
// ListQueues, DeleteQueue, SendMessage, ReceiveMessage, DeleteMessage,
// ChangeMessageVisibility; sns:CreateTopic, Publish, Subscribe,
// Unsubscribe.
//
// Amazon SQS refuses to re-create a deleted queue's name for 60 seconds.
// A node that dies without closing its subscriptions leaves its subscriber
// queue and SNS subscription behind; they hold at most a minute of messages
// (MessageRetentionPeriod 60s) and can be found by the tag
// clusterbus-subscriber.
//
// # Testing
//
// The tests run against fauxqs 1.9.2 (npm; pinned in testdata/fauxqs),
// started by TestMain on a random loopback port: run `npm ci` in
// adapters/sqs/testdata/fauxqs first (TestMain does it if node_modules is
// missing). Set CLUSTERBUS_TEST_SQS_LIVE=1 with standard AWS environment
// variables (AWS_REGION, credentials) to run the same tests against real
// AWS, with the name prefix "cbtest-" (no AWS account was reachable where
// the adapter was written: the live run is untried). What fauxqs cannot
// show and so stays untested here:
//   - IAM, and the queue policy that lets SNS send to a subscriber queue
//     (fauxqs stores policies but does not enforce them);
//   - the refusal of stale receipt handles (fauxqs accepts them; the
//     adapter does not rely on it and refuses settlement after its own
//     deadline);
//   - real SQS FIFO batches holding several items of one group (fauxqs
//     hands out one in-flight item per group, so the one-item-per-call rule
//     on Ordered queues is not put to the test);
//   - the 60 s wait before a deleted queue's name can be reused, the delay
//     before a new SNS subscription receives, eventual consistency of
//     queue attributes, throttling and SDK retries on 5xx answers;
//   - the server's own 256 KiB limit (fauxqs allows 1 MiB; the adapter
//     enforces 256 KiB itself), and characters beyond U+FFFD in bodies;
//   - durability across a server restart (fauxqs keeps everything in
//     memory): TestFauxqsRestart only shows that subscriptions and
//     consumers recover once the server is back.
package sqs
