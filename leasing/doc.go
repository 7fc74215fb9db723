// Package leasing keeps the lease on one queue delivery while a handler works
// on it, and stops the work when the lease cannot be kept.
//
// Hold arms a timer (no goroutine per held item) that calls
// Delivery.Extend well inside the lease (every Config.RenewEvery, a third of
// the lease by default) and returns a context for the work. The context is
// cancelled, with a cause matching ErrLost (and adapters.ErrLeaseLost), when
// a renewal is refused, or when renewals keep failing until Config.Margin
// before the deadline. The margin exists so that the work stops before the
// broker can hand the item to another consumer.
//
// A Keeper holds the leases of one goroutine that runs item after item (a
// workqueue handler) on one timer it re-arms, instead of a timer per item:
// a short handler pays for its lease with a timer reset, not a new timer.
//
// # Fencing tokens
//
// Token identifies one holding of one item: the queue, the message ID, the
// delivery attempt (which the broker increases on every redelivery) and the
// lease epoch (the number of successful renewals in this attempt). Passing
// the token to whatever the work writes to lets that system refuse a stale
// writer: a token with a lower attempt is from a holder that lost the item.
//
// # Guaranteed
//
//   - The work context is cancelled no later than Margin before the last
//     deadline this process knows of. That deadline is computed
//     conservatively: a renewal started at time t counts as lasting until
//     t + lease, although the broker starts its own count later.
//   - Release stops the renewal timer and waits for a renewal in progress,
//     so no Extend call races with the Ack, Nack or DeadLetter that follows.
//
// # Not guaranteed
//
//   - Clocks: the deadline is measured on the local clock (injectable with
//     clockwork for tests). A broker whose clock runs fast, or a process
//     paused longer than Margin (GC, SIGSTOP, a VM migration), can still see
//     the item redelivered while old work runs. Fencing tokens are the
//     defence for the systems the work writes to.
//   - Cancelling a context does not stop code that ignores it.
package leasing
