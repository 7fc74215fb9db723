// Package workqueue runs handlers over a leased queue: a concurrency limit
// per queue, a lease kept by package leasing while each handler runs, an
// outcome chosen by how the handler's error is wrapped, and a graceful drain.
//
// # Outcomes
//
//   - nil: the item is acknowledged.
//   - Permanent(err): the item is dead-lettered now, with err as the reason.
//   - RetryAfter(d, err): the item is nacked with delay d.
//   - any other error, or a panic (recovered, logged with its stack): the
//     item is nacked with the delay of Config.Retry (exponential backoff with
//     jitter by default) until Config.MaxAttempts deliveries have been made;
//     then it is dead-lettered with the last error as the reason.
//   - the lease was lost while the handler ran: the item is not settled; the
//     broker gives it to another consumer when the lease runs out.
//
// # Drain
//
// Stop stops receiving at once, gives running handlers Config.DrainGrace to
// finish, then cancels their contexts; an item whose handler was cancelled
// by the drain is nacked with no delay, so another node receives it at once
// instead of after the lease.
//
// # Gate
//
// Config.Gate, when set, is asked before each receive; while it answers
// false (for example a node on the losing side of a split), nothing new is
// received. Running handlers are not stopped by the gate.
//
// # Not guaranteed
//
//   - Delivery is at least once: a handler may run again after a crash or a
//     lost lease. Use the fencing token (Job.Token) and idempotency keys.
//   - The contract has no snooze: RetryAfter and drain hand-backs count as
//     delivery attempts, like any nack.
//   - Prefetch: Concurrency handler goroutines (a fixed pool, no goroutine
//     per item) take turns to receive from one consumer and each runs what
//     it received. The consumer is opened with Config.Prefetch (default
//     Concurrency) and MaxPrefetch (default 500), so the adapter may hold
//     items ahead of free handlers: Prefetch of them, or on an adapter that
//     adapts (NATS) up to MaxPrefetch while the handlers empty its buffer
//     within a tenth of the lease. Their leases run, unrenewed, until a
//     handler takes them (leasing then renews at once if the item waited).
//     An adapter may give back items fetched ahead when no handler asked
//     for half a lease, and the worker asks it to (adapters.Pauser) when
//     its gate closes; the NATS adapter does both, and the attempt then
//     counts.
package workqueue
