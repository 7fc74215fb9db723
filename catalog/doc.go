// Package catalog is a replicated key/value catalog shared by every node of
// a cluster, over the broker only: flow definitions, cluster settings,
// execution records. One Catalog per name ("flows", "settings", ...) per
// node; values are small (KBs), up to tens of thousands of keys.
//
//	c, err := catalog.Open(broker, catalog.Config{Cluster: "prod", NodeID: id, Name: "settings", Dir: dataDir})
//	err = c.Start(ctx)
//	_, err = c.Put(ctx, "http.base_url", []byte("https://example.com"))
//	e, ok := c.Get("http.base_url")
//
// # Merge rules
//
// Every write carries a Rev: a hybrid logical clock (a Lamport clock that is
// never below the writer's wall clock in milliseconds) and the writer's node
// ID. A node's clock moves past every Rev it merges, so a Put always wins
// over every write its node has seen; between concurrent writes the higher
// clock wins, then the higher node ID (Rev.Less). Deletes are tombstones
// (Entry.Deleted) that merge like values, so a delete is not undone by a
// node that missed it.
//
// Because a Put wins over everything its node has seen, a read-modify-write
// (Get, change, Put) replaces a write that landed between its Get and its
// Put. PutIf closes that gap: it writes only if the local copy is still the
// one read, and returns ErrChanged otherwise, so the caller reads and
// merges again. (It does not order the write against writes the node has
// not seen yet; those are concurrent and merge by Rev.)
//
// Keys for which Config.FirstWriteWins returns true (immutable flow
// versions) merge the other way: a tombstone beats a value, and among two
// values (or two tombstones) the LOWEST Rev wins, so that every node keeps
// the first write; Put on such a key that holds another value, or a
// tombstone, fails with ErrConflict (the same value again returns the
// existing entry, retained and published once more, so that a retried Put
// completes).
//
// Merging is commutative, associative and idempotent: nodes that have
// merged the same writes, in any order, hold the same entries.
//
// # Replication
//
// The catalog's topic is "<Cluster>-catalog-<Name>". Messages are JSON
// with a header "catalog-kind": put (a write, published by Put before it
// returns), sync-request (a node's digest and a request ID), sync-reply
// (entries, split in parts that fit Capabilities.MaxMessageSize) and
// digest. A node that receives a sync request whose digest differs from
// its own answers after a short random delay with all its entries, unless
// another node already answered it with the same digest; with an equal
// digest it answers "same" in one small message. Every node publishes its
// digest (entry count and a hash over key/rev pairs) every
// Config.DigestInterval (default 10 s, jittered); a node that sees a
// different digest asks for a sync (at most once per second), so writes
// lost on the topic (at-most-once delivery) and writes made while nodes
// were apart converge within about one or two intervals. Answers to such
// background requests leave out writes of the last two seconds (they are
// still on their way as put messages) and are not sent when nothing else
// differs, so that a catalog under steady writes, whose digests always
// differ a little, does not resend itself every interval. Answers only
// carry the entries of the 256 key buckets whose hash differs from the
// requester's. A node answers at most 10 sync requests a second.
//
// # Persistence
//
// With Config.Dir set, the node's copy lives in Dir/catalog-<Name>.json (a
// snapshot, written to a temporary file and renamed) and
// Dir/catalog-<Name>.log (a journal of changes since the snapshot, one JSON
// entry per line, folded into the snapshot when it grows past the number of
// entries and on Stop). Journal appends are written, not fsynced: they
// survive the process dying, not the machine losing power (the snapshot is
// fsynced before its rename; on NATS and Kafka the broker's copy covers
// the rest). A restarted node loads both (a torn last journal line is
// ignored) before it hears from the others. Where the broker
// implements adapters.Retainer, every Put is also retained in the broker
// before it returns and Start reads the retained copy, so that a
// whole-cluster restart with empty data dirs keeps every entry. After
// Start the node retains the local entries the broker lacks (or holds
// older), and forgets retained values that are invalid or expired; the
// writer of an entry that expires forgets it in the broker. The broker
// keeps the last value retained for a key, not the winning one: when a put
// message (sent after its entry was retained) loses against an entry this
// node wrote, the node retains its entry again, so that two writes of one
// key at nearly the same time do not leave the loser in the broker
// (clusterbus_catalog_retained_again_total).
//
// # Hostile input
//
// Every message is bounded and validated before anything is merged: kind,
// JSON shape, key pattern (KeyPattern), value size, Rev (node ID present,
// clock not more than MaxClockSkew ahead of the receiver's wall clock),
// entry count. Bad input is dropped, counted in
// clusterbus_catalog_rejected_total{catalog,reason} and logged at most once
// a minute per sender. Authentication is the job of the adapters/signed
// decorator wrapping the broker.
package catalog
