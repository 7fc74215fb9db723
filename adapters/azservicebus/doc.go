// Package azservicebus is the clusterbus adapter for Azure Service Bus, on
// the official SDK (github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus
// and its admin client). Leased queues are Service Bus queues read in
// peek-lock; broadcast topics are Service Bus topics with one subscription
// per subscriber.
//
// # URLs
//
// The scheme is azservicebus. The URL has no host or path; the namespace and
// credentials come from a connection string:
//
//	azservicebus://?connection_string_env=SERVICEBUS_CONNECTION_STRING
//	azservicebus://?connection_string=Endpoint%3Dsb%3A%2F%2F…   (URL-escaped)
//	azservicebus://?connection_string_env=VAR&subscription_idle=10m
//	azservicebus://?connection_string=…%3BUseDevelopmentEmulator%3Dtrue&admin_endpoint=http://127.0.0.1:5300
//
// Parameters: connection_string or connection_string_env (exactly one),
// admin_endpoint (only, and then required, with UseDevelopmentEmulator=true:
// the http:// base of the ATOM management API of a local server; against
// Azure the admin client uses the namespace over HTTPS), subscription_idle
// (AutoDeleteOnIdle of subscriber subscriptions, at least and by default
// 5m). Any other parameter is refused with an error that lists these. Go
// code can call Open with a Config instead. The credentials need Manage
// rights: the adapter creates queues, topics and subscriptions.
//
// # Message Delivery Semantics
//
// Queues. DeclareQueue creates the queue with LockDuration = Lease,
// MaxDeliveryCount = MaxAttempts and, with Dedupe, duplicate detection
// (RequiresDuplicateDetection, window = DedupeWindow, 20s to 7 days); an
// existing queue with other settings is refused with ErrInvalidArgument.
// Enqueue returns once Service Bus accepted the message (durable).
// EnqueueBatch (adapters.BatchEnqueuer) validates every message, then sends
// them in Service Bus message batches (one transfer per batch, as many
// messages as the link's batch size allows) and returns once every batch
// was accepted. A Consumer receives up to ConsumeOptions.Prefetch messages
// (fixed: MaxPrefetch is not used)
// per ReceiveMessages call and hands them out one by one. Receive
// hands out a message under its Service Bus lock; LeaseDeadline is the
// broker's locked-until. The lock is not renewed in the background: Extend
// calls RenewMessageLock (Service Bus renews by the full lock duration), and
// an unextended lock expires, which makes the message available again with
// its delivery count + 1; settling or extending a delivery after its
// locked-until fails with adapters.ErrLeaseLost without asking the broker. Ack completes; DeadLetter dead-letters natively with
// DeadLetterReason = the reason (cut to 4096 bytes); Nack(0) abandons
// (Service Bus counts a delivery and dead-letters at MaxDeliveryCount with
// reason MaxDeliveryCountExceeded). Attempt is the message's DeliveryCount.
//
// Nack with a delay is emulated: the adapter sends a scheduled copy
// (ScheduledEnqueueTime = now + delay, a new MessageID so duplicate detection
// does not drop it, the original ID, key and headers kept, and the attempts
// so far in an application property) and then completes the original. A
// failure between the two leaves a duplicate, never a loss. Because Service
// Bus counts deliveries per copy, the adapter enforces MaxAttempts over
// copies itself: Nack on the last attempt dead-letters, and a copy received
// past MaxAttempts (its lock expired) is dead-lettered by Receive with reason
// "max attempts (N) exceeded" instead of being returned.
//
// The dead-letter queue is read with ConsumeOptions.DeadLetters; its items
// carry adapters.HeaderDeadLetterReason = DeadLetterReason, followed by
// ": " and DeadLetterErrorDescription when Service Bus set one (Service Bus
// sets application properties of those two names there, so an application
// header of either name does not survive dead-lettering; on the queue
// itself it is a header like any other). Nack with a
// delay is refused there (ErrUnsupported: nothing can be sent to a
// dead-letter sub-queue); Nack(0) abandons back into it.
//
// Settling (Ack, Nack, DeadLetter) is retried up to three times while it
// fails transiently, for example while the SDK recovers a link (it then
// settles on the entity's management link). If the answer to an attempt
// that took effect was lost, the retry reports ErrLeaseLost: as always with
// ErrLeaseLost the item may or may not be delivered again.
//
// Dedupe is native (duplicate detection by Message.ID); an empty ID gets a
// random UUID. Ordering by key is not supported (it would need Service Bus
// sessions): QueueConfig.Ordered is refused with ErrUnsupported.
//
// Consumer.Close abandons the items it holds (each counts as a delivery):
// the deliveries Receive returned that are neither settled, being settled
// nor past their lock, and the prefetched items Receive has not returned;
// items the SDK received on outstanding link credit (Prefetch > 1) while
// closing keep their locks until they expire. Broker.Close closes
// everything; settling afterwards fails with ErrLeaseLost (matching ErrClosed
// too).
//
// Topics. Publish sends to a Service Bus topic named "t." + the topic (Service
// Bus keeps queues and topics in one namespace; clusterbus does not), created on first use (default
// message time-to-live 1h, remade if it disappears). Subscribe creates a
// subscription of its own (auto-deleted after subscription_idle without a
// receiver), read in receive-and-delete mode; Close deletes it. Receive
// returns ErrGap after a fault the SDK recovered from (ReceiveMessages
// returning no messages and no error), after a transient error, and after the
// subscription had to be made again because it was gone.
//
// The receive loops tolerate ReceiveMessages returning no messages and a nil
// error (what the SDK does after recovering a link or connection): consumers
// back off briefly and receive again.
//
// Names are case-insensitive in Service Bus: "Jobs" and "jobs" are one queue.
//
// # Limits
//
// MaxMessageSize is 248 KiB as counted by adapters.Size (the Standard tier's
// 256 KiB less room for system properties); Premium namespaces allow more,
// the adapter does not use it. Lease (lock duration) is 5s to 5m.
// MaxAttempts is at most 2000. Nack delays have no upper bound. Each
// subscriber costs a subscription (a Standard topic allows 2,000).
//
// # Testing
//
// The tests run against testdata/sbserver, a small Service Bus TEST server
// on the npm library rhea (AMQP 1.0) plus a minimal ATOM management API over
// HTTP; it is not Service Bus and not the official emulator. TestMain runs
// `npm ci` there if node_modules is missing and starts it on random ports.
// TestConformanceLive runs the same suite against a real namespace when
// CLUSTERBUS_TEST_SERVICEBUS_CONNECTION_STRING is set.
//
// What stays untested because the test server does not emulate it: real
// durability (it keeps state in memory, written to a file only on a clean
// stop) and crash recovery; TLS and SAS/Entra authentication (it accepts any
// token over plain AMQP); throttling, server busy and other service errors;
// partitioned entities, sessions, transactions; the real size limits and
// quotas (it enforces none); AutoDeleteOnIdle and message time-to-live as
// Service Bus applies them; exact Service Bus error texts and status codes
// beyond the ones listed in the server's header. Benchmark figures measure
// the test server, not Azure.
package azservicebus
