// Package driver is the part every broker adapter shares: the state machine
// of one delivery's lease, a consumer's set of held deliveries, and the
// mapping of a client's own context errors (MapCtx: a timeout the caller's
// ctx did not cause is ErrUnavailable, not the caller's cancellation), and
// the kept outcome of an asynchronous enqueue (Outcome).
//
// An adapter (adapters/nats, rabbitmq, kafka, sqs, azservicebus) speaks its
// broker's protocol; what a delivery may do and when it is lost is the same
// for all of them and is written here once, the way gocloud.dev splits a
// driver from its portable type:
//
//	        Begin               Settled / Failed(lease lost)
//	held ───────────▶ settling ───────────────────────────▶ done
//	 ▲  │                │ Failed(other) / Extended            ▲
//	 │  │                ▼                                     │
//	 │  │              held                                    │
//	 │  └── deadline passes (Expire hook) or Take (Close) ─────┘
//
// A Lease serializes the operations on one delivery (a second Ack waits for
// the first, then finds the lease done) and keeps its state under a mutex
// that is never held during broker I/O, so LeaseDeadline never waits on the
// network. Every refusal is an adapters.ErrLeaseLost error that says why.
package driver
