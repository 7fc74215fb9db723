// Package signed is an adapters.Broker decorator that authenticates every
// message: it signs what is published or enqueued and verifies what is
// received, on topics and queues alike, so that no package above the broker
// (bus, flows, workqueue) has signing code of its own and none of them ever
// sees a message a cluster key did not make.
//
//	b, err := signed.Wrap(raw, signed.Config{Cluster: "prod", Sender: nodeID, Keys: ring})
//
// # The envelope
//
// A signed message's body is an envelope (see envelope.go): the MAC,
// HMAC-SHA256 under the first key of the KeyRing, then the signed part:
// the kind (topic or queue), the cluster, the destination (topic or queue
// name), the sender, the sender's incarnation (its start time) and sequence
// number, the send time, and the application's message ID, key, headers and
// body. The broker-level message carries the key (for ordering), no
// headers, and for queue items the ID followed by "~" and a tag computed
// with the signing key, so that the broker's dedupe still drops repeats of
// a genuine item but a client without the key cannot take the ID of an
// item before it is enqueued (and have the broker drop the real one as a
// duplicate); topic messages carry the ID as is; on receipt the application
// gets the ID, key, headers and body from inside the envelope. Headers an
// adapter adds on receipt (the cb- prefix, such as the dead-letter reason)
// are outside the MAC and passed through.
//
// # What a receiver checks
//
// In this order, each failure counted under its reason in
// clusterbus_messages_rejected_total{reason} (every reason present from the
// start, at zero), logged at most once a minute per sender, and kept for
// Stats (the node shows it as an alert in /api/cluster):
//
//   - unsigned: the body is not an envelope;
//   - malformed: the envelope does not decode;
//   - forged: no key of the ring made the MAC (a foreign key, a node
//     without the key, an altered message);
//   - foreign-cluster: signed for another cluster;
//   - wrong-destination: signed for another topic or queue, or a topic
//     message enqueued on a queue (an item signed for queue A and put on
//     queue B fails here);
//   - stale (topics): sent more than Config.MaxAge before or after the
//     receiver's clock;
//   - replay (topics): a sequence number this subscription already took
//     from that sender's incarnation (or older than the last 1024), or a
//     message from an earlier incarnation of a sender than one already
//     heard. A subscription knows its own sender's current incarnation
//     from the start, so replays of a node's previous run never reach it.
//
// A topic message that fails is dropped. A queue item that fails is
// dead-lettered with the reason "unauthenticated: <reason>: <detail>", so
// nothing is lost and an operator can look at it; it never reaches the
// application. Reading a dead-letter queue (ConsumeOptions.DeadLetters)
// returns items that fail verification as they are, marked with
// HeaderRejected, so a tool can show them without trusting them.
//
// # Queue items and freshness
//
// Queue items are durable and may legitimately wait for a long time (a
// broker outage, a delayed retry, a dead letter put back by
// `clusterbus queue replay` days later), so by default they have no
// freshness window: the MAC, cluster and destination are checked, not the
// age (Config.QueueMaxAge sets a limit for deployments that want one). What
// this does not stop is a client of the broker that captured a valid item
// putting the same bytes back on the same queue: that is what
// `queue replay` does on purpose. The item's ID is under the MAC, so a
// broker that deduplicates drops such a copy within its dedupe window; past
// it the copy runs like a redelivery, which the layers above already
// tolerate (flow steps are at-least-once with idempotency keys, duties check
// their slot). Nobody without a key can change what an item says or where
// it goes.
//
// # Retained values
//
// The Broker implements adapters.Retainer when the broker it wraps does
// (adapters.RetainerOf; otherwise Retain and Retained fail with
// adapters.ErrUnsupported). Retain stores an envelope of kind "retained"
// whose destination is the log and whose key is the value's key; Retained
// returns only values that verify, signed for this cluster, this log and
// the key they are stored under, and counts the others like rejected
// messages (kind "retained"). Retained values have no freshness limit: they
// are meant to outlive every node.
//
// # Keys and rotation
//
// A KeyRing holds one or more keys of at least MinKeyLen bytes: the first
// signs, all verify. To rotate without downtime: add the new key second on
// every node (all verify it), then put it first on every node (all sign
// with it, all still verify the old), then remove the old one. KeyRing.Set
// swaps the list atomically while the broker runs (the node re-reads
// --cluster-key-file on SIGHUP).
//
// # Without a key
//
// Without a cluster key the node does not use this decorator: it trusts the
// broker's own access control (user accounts and ACLs on the topics and
// queues), and anything that can publish on the cluster's topics can speak
// for a node. The layers above still bound, validate and drop bad input;
// none of them latches on a single message.
//
// # What is not guaranteed
//
// Every holder of the key can sign as any sender: the sender name is
// authenticated as "a member of the cluster", not as one particular node.
// Freshness relies on clocks within MaxAge of each other. The broker-level
// ID of a queue item depends on the signing key, so the broker's dedupe
// does not drop a repeat enqueued across a switch of signing key (the
// layers above tolerate a repeat, as after any redelivery). Replay state is
// per subscription and kept for twice MaxAge after a sender's last
// message: a subscription that starts after a message was sent cannot tell
// a first replay of it from the original, within its freshness window. A
// node whose clock went back across a restart is ignored by the others
// until its previous run's state expires (at most twice MaxAge).
package signed
