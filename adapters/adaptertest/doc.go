// Package adaptertest is the conformance suite every broker adapter passes:
// one set of cases that proves an adapter honours the adapters.Broker
// contract against its real broker.
//
// # Running it
//
// An adapter runs the suite from a short conformance_test.go:
//
//	package nats_test
//
//	import (
//		"context"
//		"testing"
//		"time"
//
//		"github.com/clusterbus/clusterbus/adapters"
//		"github.com/clusterbus/clusterbus/adapters/adaptertest"
//		"github.com/clusterbus/clusterbus/adapters/nats"
//	)
//
//	func TestConformance(t *testing.T) {
//		srv := startServer(t) // the broker under test; skip (or, with CI=true, fail) if unreachable
//		adaptertest.Run(t, adaptertest.Harness{
//			Open: func(ctx context.Context) (adapters.Broker, error) {
//				return nats.Open(ctx, nats.Options{URL: srv.URL()})
//			},
//			Restart: func(ctx context.Context) error { return srv.Restart(ctx) },
//			Lease:   time.Second,
//		})
//	}
//
// Open must return a new, independent client each time (the suite opens
// several per case to stand for several nodes, and closes them). Restart is
// optional: nil skips the restart case. Lease is the lease queues are
// declared with; zero means one second, raised to Capabilities.MinLease.
// Every wait is bounded by a multiple of the lease plus slack, never a fixed
// sleep where a condition can be waited on, so a broker with one-second
// granularity (SQS) passes with the same code.
//
// Queue and topic names carry a random suffix, so runs against a shared
// broker do not collide; queues are deleted when their case ends.
//
// # What the cases prove
//
// The cases run in parallel (bounded by go test -parallel) under
// TestX/Contract/<group>/<case>, then TestX/Restart runs alone.
//
//   - Topic: broadcast reaches every subscriber on every client, each message
//     once; a late subscriber gets nothing published before it subscribed;
//     ID, key, headers and a body of all 256 byte values round-trip; Receive
//     on a closed subscription (also one blocked in Receive) is ErrClosed.
//   - Queue: a leased item is held by one consumer only; an unacked item
//     returns after its lease with attempt+1 and the old holder's Ack is
//     ErrLeaseLost; Extend, repeated, holds it across 2.5 leases; Nack(delay)
//     returns it no earlier than the delay and Nack(0) well inside the lease;
//     an acked item never returns (three leases); 8 consumers on 8 clients
//     ack 1,000 items exactly once each (duplicates and missing IDs
//     reported); round-trip of a rich message with Queue, Attempt and
//     LeaseDeadline checked and an empty ID replaced; duplicate IDs dropped
//     on a Dedupe queue; per-key order on an Ordered queue; declaring twice
//     with the same config keeps the items; closing a consumer releases its
//     items; Receive on a closed consumer is ErrClosed; operations on one
//     delivery run one at a time (an Ack racing an Extend succeeds, of two
//     racing Acks exactly one does, acked items stay acked).
//   - DeadLetter: DeadLetter(reason), and MaxAttempts used up by Nack or by
//     lease expiry, move the item to the dead-letter queue
//     (ConsumeOptions.DeadLetters) intact, with the reason in
//     adapters.HeaderDeadLetterReason.
//   - Limits: a message over MaxMessageSize, or with more than MaxHeaders
//     headers, fails Enqueue and Publish with ErrTooLarge and nothing
//     reaches the queue or the subscribers; a message of exactly
//     MaxMessageSize is accepted and round-trips.
//   - Errors: settling twice is ErrLeaseLost; Extend outside (0, lease],
//     Nack with a negative delay or one above MaxDelay, a queue config out
//     of range and a malformed message (header name, reserved cb- header,
//     CR/LF in a value, over-long ID) are ErrInvalidArgument; malformed names
//     are ErrInvalidArgument for every operation; a feature Capabilities calls
//     Unsupported is refused with ErrUnsupported; Capabilities are consistent
//     and the same on every client; undeclared queues are ErrNotFound; after Broker.Close every
//     operation and any Receive is ErrClosed; cancelling a Receive returns
//     context.Canceled within two seconds and leaves it usable.
//   - Restart: after Harness.Restart, existing subscriptions receive new
//     messages (ErrGap first is allowed), existing consumers receive the item
//     enqueued before the restart and new items, without reopening clients.
//
// # What the suite does not prove
//
// Timing figures (throughput, failover time) are benchmarks, not cases.
// Durability across a crash (as opposed to a clean restart) and behaviour
// under a network partition are left to the integration tests. A case skips
// only when Capabilities says the feature is Unsupported, when a limit is
// zero (no limit to test) or when the harness has no Restart.
package adaptertest
