// Package mem is an in-memory implementation of the adapters.Broker
// contract: a fake for tests of the layers above (bus, leasing, workqueue,
// flows), with an injectable clock and fault hooks. It is not a broker:
// nothing is persisted, nothing crosses the process, and it is as fast as
// a mutex.
//
// # Servers and clients
//
// A Server is one shared in-memory broker; Server.Client returns a Broker
// standing for one node's connection to it. A cluster in one test process is
// one Server and one Client per node:
//
//	srv := mem.NewServer(mem.WithClock(clock))
//	a, b := srv.Client(), srv.Client()
//
// mem.New() is a client of a private server. The URL mem://NAME (scheme
// registered with adapters.Register) opens a client of the process-wide
// server NAME (see Named), so adapters.Open(ctx, "mem://test") twice gives
// two clients of one broker.
//
// # What is guaranteed
//
// Everything the contract describes, natively and passing the adaptertest
// suite: broadcast topics (per-subscription buffer, default 4096 messages;
// an overflow drops the message and reports ErrGap), leased queues with
// Extend, delayed Nack, dead-lettering with the reason in
// adapters.HeaderDeadLetterReason, MaxAttempts, dedupe by ID within
// DedupeWindow, per-key order on Ordered queues. MaxMessageSize is 1 MiB and
// MaxHeaders 64 unless set with options. Leases, Nack delays and dedupe
// windows all run on the Server's clock (WithClock), so a test can use
// clockwork.NewFakeClock and Advance instead of sleeping. Items released by
// a closed consumer, a closed client or a lost connection are available
// again at once, as a new attempt. Declaring an existing queue with a
// different config fails with ErrInvalidArgument. Every method is safe for
// concurrent use; no goroutine runs in the background (leases expire when
// the queue is next touched or when a waiting consumer's timer fires), so
// Close leaves nothing running.
//
// The Server also implements adapters.Retainer (through its clients): the
// last value per key of each log, kept for the Server's life, across
// Restart.
//
// # Fault hooks
//
//   - Server.Disconnect(c) / Reconnect(c) (or c.Disconnect()): while
//     disconnected, operations fail with ErrUnavailable (retryable),
//     Consumer.Receive returns ErrUnavailable, held leases are lost (the items
//     go back to the queue), and subscriptions miss what is published
//     meanwhile, then report ErrGap once after Reconnect.
//   - Server.Partition(clients...) / Heal(): a group of clients only sees its
//     own topic messages. Queues are not partitioned (disconnect a client to
//     cut it off from queues).
//   - Server.DropNext(topic, n), Server.DropRate(topic, p) and
//     c.DropNext(topic, n): topic messages lost silently, for everyone or for
//     one client, as an at-most-once broker loses them; no ErrGap is
//     reported, so gap detection above must come from sequence numbers.
//   - Server.Restart(): every client disconnects and reconnects; queue items,
//     dead letters and dedupe memory survive, leases and topic messages in
//     flight do not.
//   - Server.Stats(queue) counts ready, delayed, leased and dead items.
//   - WithCapabilities makes the server stand for a weaker broker: what it
//     marks Unsupported is refused with ErrUnsupported, so the emulation
//     paths above (no delayed nack, no dead letters, ...) can be tested.
//
// # What is not guaranteed
//
// It does not model a real broker's timing, batching, redelivery delays,
// prefetch (ConsumeOptions.Prefetch and MaxPrefetch are accepted and ignored), message size
// accounting beyond adapters.Size, or durability across the process. A test
// that passes on mem shows the logic above the broker is right, not that a
// real broker behaves the same; the adaptertest suite and the integration
// tests cover that.
package mem
