// Package bus is a clusterbus node: it joins a cluster through any
// adapters.Broker, keeps a shared view of the members, elects the oldest
// live node as the lead, runs lead duties there alone, broadcasts
// cache-clear events, applies a split-brain policy and reports health.
//
//	n, err := bus.New(broker, cfg, bus.WithLogger(log))
//	n.RegisterDuty("mail", "every 1m", sendMail)
//	users := bus.NewCache[User](n, "users")
//	err = n.Start(ctx)
//	http.Handle("/", n.Handler()) // /ha/health, /api/cluster, /metrics (package console adds the page)
//	...
//	n.Drain(); n.Stop(ctx)
//
// # Membership
//
// Every node publishes a heartbeat every HeartbeatInterval on the topic
// "clusterbus-<cluster>": node ID, incarnation (random per process), host,
// IP, start time, version, state, sequence number and send time. A member is
// live once heard twice (one message alone, a stray or a replay, makes no
// member live) and while it was heard within FailureTimeout. Stop publishes
// a leave and the others drop the node at once; its incarnation is
// tombstoned, so a replay of its heartbeats does not bring it back. A node
// restarted with the same ID (clusterbus node keeps it in its data dir)
// replaces its previous incarnation at once. A node is connected while it
// hears its own heartbeat back within FailureTimeout and no publish has
// failed since; there is no broker-specific ping.
//
// Its own link is decided before anyone else's: a member is taken for
// failed only if this node heard its own heartbeat at least half a
// FailureTimeout after the member's last one (else the silence is this
// node's), and a node whose link comes back after an outage of D gives
// every member min(D, 10 × FailureTimeout) + FailureTimeout to be heard
// again before deciding who is gone: clients reconnect on their own
// backoff, about D after the broker returns. The cost: if the oldest died
// during the outage, the next lead takes over that much later.
//
// The state is kept in two pure types that the loops call under the
// node's lock: membership (apply a heartbeat, expire, forget, down) and
// snapshot (the split-brain verdict and the lead over plain values);
// both are table-tested without clocks or goroutines.
//
// # Lead
//
// The lead is the oldest live member (earliest start time as reported by
// the member; node ID breaks ties) among those "active", "starting" or
// "fenced" for less than one FailureTimeout; if that member is not active,
// there is no lead until it is (or, if fenced, until one FailureTimeout
// has passed). So after a broker outage the younger nodes, back first,
// wait for the oldest instead of leading for a moment and handing over. A node
// is "starting" for one FailureTimeout after Start and cannot be the lead
// meanwhile, so it hears the cluster before it claims anything. Every node computes the lead
// from what it heard; views agree once heartbeats have propagated (about one
// HeartbeatInterval), and failover takes about one FailureTimeout.
//
// Each time a node gains the lead it opens a term: term = highest term it
// has heard of + 1. Terms travel in every heartbeat, so a term is higher than
// every term its lead had heard of. What this does NOT guarantee: two nodes
// that cannot hear each other (a partition with SplitBrain "off", or a lead
// that has not yet noticed it lost its side) may lead at once and may even
// hold the same term; terms restart from 1 when the whole cluster restarts
// (nothing is stored); and start times come from each node's clock, so a
// node whose clock is far behind looks older than it is (the status flags
// clock skew above ClockSkewThreshold). A shared resource that remembers the
// highest term it accepted and refuses lower ones is what makes the token a
// fence.
//
// # Lead duties
//
// RegisterDuty adds a function that runs on the lead only, with a context
// cancelled when the lead is lost and the term as fencing token. An
// unscheduled duty runs once per lead term (retried with backoff while it
// fails). A scheduled duty ("every 1m") runs once per slot [k·1m, (k+1)·1m)
// of Unix time, in one of two ways depending on the broker:
//
//   - Brokers that drop duplicate IDs (Capabilities.Dedupe available: NATS
//     JetStream, mem, SQS FIFO, Service Bus): the lead enqueues each slot as
//     the item "duty:NAME:SLOT" on the queue "clusterbus-<cluster>-duties"
//     (declared Dedupe) and consumes that queue while it leads with a
//     workqueue.Worker (one handler): each item runs under its lease, which
//     leasing renews while the duty runs, and is acked when the duty returns
//     nil; a failed run is retried with backoff (from HeartbeatInterval,
//     capped at 30s), an item for a duty not registered on this node is
//     returned to the queue, and an item that fails the header checks or
//     does not decode is dead-lettered with the reason. Attempts are capped
//     at five, then the item is dead-lettered. A new lead enqueues the
//     current slot again and the broker drops the repeat; two leads on both
//     sides of a partition produce one item, which one of them runs. If the
//     node loses the lead mid-run, the duty's context is cancelled and the
//     item handed back at once; if the node dies, the item comes back when
//     its lease expires (about ten failure timeouts). Either way the next
//     lead runs the slot again.
//   - Other brokers: the lead runs each slot itself, and when a run
//     succeeds records the slot as done and tells the cluster at once in a
//     heartbeat; a new lead skips slots it heard were done. Two leads (a
//     partition under SplitBrain "off", or before the losing side notices)
//     may both run a slot.
//
// Either way the guarantee is at least once per slot while there is a lead,
// not exactly once: a slot whose run was interrupted, or whose completion
// did not reach the new lead (or whose dedupe window, two minutes by default,
// has passed when a new lead re-enqueues it), runs again. Make duties
// idempotent per slot and fence their writes with the term. Slots missed
// while there was no lead are not caught up, except the current one.
//
// # Cache-clear events
//
// Invalidate(ctx, region, keys...) runs the region's handlers locally and
// broadcasts the event; every node runs its handlers for the region. Each
// sender numbers its events, and its heartbeats carry the last number it
// published. A receiver that sees a jump, meets a sender that has already
// published events it did not see, or is told by the broker that the
// subscription may have missed messages (adapters.ErrGap, a resubscribe)
// clears every region: caches may be emptied needlessly, never left stale
// — provided the sender's publish reached the broker (Invalidate returns the
// error otherwise). Cache is a small map-based cache wired to this.
//
// # Cluster settings
//
// Settings (Node.Settings) are cluster-wide key/value strings every node
// holds the same copy of: Get, Set, Delete, List, Map and Watch, and over
// HTTP GET /api/settings, GET|PUT|DELETE /api/settings/{key}. They are a
// catalog (package catalog) named "settings", started with the node's Start
// (before it subscribes; a failure leaves the node unstarted) and stopped
// with Stop; kept in Config.DataDir and, where the broker retains (NATS,
// Kafka), in the broker. Concurrent sets of one key end with the later one
// (hybrid logical clock, then node ID) on every node.
//
// # Message authentication and cluster panic
//
// The node has no signing code of its own: authentication is a property of
// the broker it is given. With a cluster key, wrap the broker with
// adapters/signed (clusterbus node does so when CLUSTERBUS_CLUSTER_KEY or
// --cluster-key-file is set): every message the node sends is signed, and
// an unsigned, forged, stale or replayed message is dropped (topics) or
// dead-lettered (queues) before the node sees it, so it can change neither
// membership, terms nor health. Without a key the node trusts the broker's
// own access control. Messages that do reach the node and are malformed or
// name another cluster, carry an unknown state, a zero sequence or a term
// above 2^62 (so no message can wrap the fencing token) are dropped and
// counted (clusterbus_heartbeats_rejected_total) and change nothing.
//
// Cluster panic: heartbeats from another incarnation of this node's ID,
// heard for a whole FailureTimeout (a dead previous incarnation cannot keep
// sending; one replayed message is not enough), are the evidence of a
// second live node with this ID. The node then stays a visible member in
// state "panic", answers 503, never leads and never serves. The panic
// clears once that other incarnation has not been heard for 2 ×
// FailureTimeout: both duplicates stay in panic while both run, and the
// one left running resumes when the operator stops the other.
//
// # Split brain
//
// The known members are the live ones plus those that failed without a
// leave and have not been downed; a member that never became active (it
// crashed while starting: a crash loop) counts only while it is live.
// keep-majority serves while more than half of the known members are live
// here (exactly half: the side holding the oldest known member), as XL
// Release's keep-majority; keep-oldest serves while the oldest known member
// is live here; static-quorum serves while at least Quorum members are live
// here; off never fences. Any node that is not connected to the broker is
// fenced. A fenced node drops the lead, reports Serving() false
// (ServingChanged wakes work consumers) and answers 503.
//
// Downing, as in Akka: only a side in good standing removes ("downs")
// members it has not heard for ForgetAfter (default 20 × FailureTimeout),
// and it lists their incarnations in its heartbeats. A side that may not
// serve never forgets anyone, so it stays fenced until it hears enough of
// the cluster again; it never un-fences by a timeout alone. When a downed
// node hears the serving side again it finds itself in that list and
// rejoins as a new incarnation (a new start time: the youngest, so the lead
// stays where it is). Node.Down (POST /api/cluster/down, clusterbus cluster
// down NODE) downs an unreachable member by hand.
//
// The availability cost: if most of the cluster fails at once, the
// survivors wait (503) for a restart or a manual down. Three of five
// crashing leaves two nodes fenced until one of the three returns or an
// operator downs two of them; choose keep-oldest (serve while the oldest
// is reachable), static-quorum:N or off to trade that for the risk of two
// sides serving.
//
// # Not guaranteed
//
// No consensus: views are eventually consistent over the broker. Clock
// skew is detected (send time vs receipt) and shown, not corrected.
package bus
