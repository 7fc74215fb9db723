// Package flows runs Flows and Rules on a cluster of nodes that share only a
// broker, so that an execution survives the death of the node running it.
//
// A Flow is a named, versioned set of steps, written in Go (Flow, Step) or
// in YAML (Parse, ParseDir, Engine.LoadDir, Engine.Deploy) with the
// built-in step kinds rule/branch, set, http, wait and await; CEL
// expressions (github.com/google/cel-go) see input, vars, exec and settings
// (the cluster settings, Options.Settings). A Rule is an ordered list of CEL
// conditions giving an outcome; it is a branching step inside a flow, or
// standalone (Engine.RegisterRule, Engine.Evaluate, or submitted like a
// flow).
//
// An Engine runs on every node, over one leased queue (package workqueue).
// Submit enqueues step 0 of an execution; any node takes it.
//
// # Deployed definitions
//
// With Options.Definitions (a catalog, package catalog, named
// DefinitionsCatalog) flows are deployed to the cluster instead of loaded
// on each node. A version is the YAML source of one flow document, stored
// under the immutable key "def/NAME/VERSION" (Deploy): the document's
// "version:" if it has one, else one more than the highest deployed; the
// head "head/NAME" (a small JSON value, last write wins) is the version new
// submissions use: a Deploy that creates a higher version moves it (as
// does a Deploy of content stored already, which creates nothing),
// Rollback moves it to any stored version, Undeploy writes a tombstone
// over it (submissions are refused; stored versions stay; a Deploy or a
// Rollback brings the flow back). Every node compiles each version as its
// catalog holds or delivers it (Watch), without a restart; an item carries
// its flow's name and version, so an execution runs to its end on the
// version it started with, whatever the head does meanwhile. Submit uses
// the head unless WithVersion names one. A directory of files seeds the
// catalog (Seed): each flow whose exact content is not deployed yet
// becomes a version; content that is deployed already changes nothing, so
// N nodes seeding the same directory create one version, and a rollback or
// an undeploy survives their restarts. A deployed flow shadows a flow of the same
// name registered in Go (Register) on that node.
//
// Conflicting concurrent deploys: two nodes that write the same version
// key with different content at once both succeed locally; when their
// catalogs exchange the writes, the lowest Rev (Lamport clock, then node
// ID) wins on every node (catalog.Config.FirstWriteWins), so every node
// ends up compiling the same content. Deploy syncs with the other nodes for
// up to a second after writing and returns an error matching
// catalog.ErrConflict if its write lost; a loser that does not see it within
// that second reports success for content the cluster then replaces (its
// Versions call shows the winner), and an execution submitted on the
// losing content in between continues on the winner's (a step it names
// that the winner lacks fails the execution). Concurrent head writes: the highest Rev
// wins (the later write, as far as the clocks tell). Where the definitions
// survive a restart of the whole cluster depends on the catalog: retained
// in the broker where the broker can (NATS JetStream), else only in each
// node's data dir (and exchanged between nodes on join).
//
// A node that takes an item of a version it does not have (deployed a
// moment ago, or while it was away) asks the other nodes for the catalog's
// entries (Sync, up to two seconds) and looks again. If the version is
// still missing, or does not compile on this node (a step kind its build
// does not know), the item goes back on the queue with a delay (1s,
// doubling, at most 30s; another node may take it) and is never
// dead-lettered for that reason alone: when its attempts run out, the node
// puts a fresh copy back on the queue (a new message ID "...~await-MS",
// fresh attempts, due after the delay) and acknowledges the old one. Such
// an item thus waits for as long as its version stays missing, with a
// retried event and a warning on each round; on a broker without dedupe a
// crash between that enqueue and the ack leaves two copies, as for any
// step (see below).
//
// # Recorded state
//
// An execution's state travels in its queue item: flow, version, step, step
// sequence number, input, vars and an optional checkpoint. When a step
// finishes, the engine enqueues the continuation (the next step, the new
// vars, sequence + 1) with message ID "execution:sequence" and only then
// acknowledges the current item. If the node dies in between, the current
// item comes back after its lease and the step runs again; on a broker that
// deduplicates (NATS JetStream, SQS FIFO, Service Bus, mem) the repeated
// continuation is dropped, so the execution does not fork. A wait is a
// continuation that carries a not-before time; a node that receives it early
// nacks it with the remaining delay, so no lease is held while waiting. A
// long step can return Outcome.Checkpoint to record its progress the same
// way and carry on from it (StepContext.Resume), possibly on another node.
//
// # Guaranteed
//
//   - Steps run at least once; each run gets the idempotency key
//     "execution:step:sequence" (the same on every retry of that step at that
//     point) and a fencing token, and the http step sends both as headers.
//   - A step's result is recorded only while its lease is valid (see
//     package leasing); work whose lease is lost is cancelled.
//   - Completion: the last step enqueues one completion record (Result) on
//     Config.ResultsQueue, message ID "execution:done", before its item is
//     acknowledged. On a broker with dedupe a repeat within the dedupe
//     window is dropped: one record per execution.
//   - A queue item that does not decode is dead-lettered with the reason;
//     the node keeps running. A YAML file with an unknown step kind, a CEL
//     expression that does not compile or a reference to a missing step is
//     rejected at load with the file, line and reason (LoadError).
//
// # Not guaranteed
//
//   - On a broker without dedupe (Kafka, RabbitMQ, SQS standard queues) a
//     crash between enqueueing the continuation and the ack forks the
//     execution from that step on, and can record completion twice. Readers
//     of the results queue must treat the execution ID as the key. The same
//     holds everywhere if the redelivery comes after the dedupe window.
//     Each node narrows this: an execution's record (below) says up to
//     which sequence number it has recorded its steps, and a node drops
//     (acknowledges without running) an item below that, so a repeat or a
//     fork's second copy that reaches a node whose copy of the record has
//     caught up ends there. What is left: a crash between the enqueue and
//     the record's write (written just after the step, off its path), a
//     record write that has not reached the node yet, and two copies
//     running at the same time.
//   - A wait, a RetryAfter and a drain hand-back each count as a delivery
//     attempt (the contract has no snooze). A wait (and an await's
//     timeout) longer than its attempts cover (the broker's longest delay,
//     Capabilities.MaxDelay) is carried on by a fresh copy of its item,
//     enqueued on its last attempt (message ID suffix "~wN"). A wait needs
//     a broker with delayed nack (Capabilities.DelayedNack); without it the
//     continuation comes back at once and uses up its attempts.
//   - Steps do not see a fork or a repeat themselves: make the systems they
//     call honour the idempotency key or the fencing token.
//   - Status, List and history answer from this node's copy of the
//     executions catalog, which converges within a moment of each write
//     (see package catalog): a step's record can lag its run by that much.
//
// # Execution records
//
// Every execution has a record in the replicated catalog "executions"
// (package catalog; topic "<Config.Cluster>-catalog-executions"): its
// state, the step it is at, and every step attempt with node, attempt,
// start, end, outcome and error (the latest 100). The node that runs a step
// writes the record at the step's boundary: after a step that continues,
// by one writer goroutine, so the step does not wait for it; the end of an
// execution, a failure, a park and a cancellation before the item is
// acknowledged. Writes of one record by several nodes merge to the one
// with the highest retry generation, then the highest sequence, then an
// ended state, keeping the union of their steps: a node whose write was
// replaced by one with less writes the union again. Records of executions
// that ended more than Config.Retention ago (default 7 days) are dropped
// on every node alike; Config.MaxRecords bounds the catalog. Where the
// broker retains catalogs (adapters.Retainer, NATS JetStream) the records
// survive a restart of every node; elsewhere they live in the nodes' data
// dirs (Config.DataDir) and are exchanged when a node joins, so they
// survive as long as one node keeps its data dir.
//
// # Control
//
// From any node (Go, HTTP, the clusterbus CLI):
//
//   - Cancel writes a cancel request in the catalog. Every node watches it:
//     a running step of the execution has its context cancelled (cause
//     ErrCancelled); at its next step boundary the execution stops and is
//     recorded as cancelled with the reason. A parked, failed or
//     dead-lettered execution is recorded as cancelled at once.
//   - Retry resumes a failed or dead-lettered execution from the state its
//     record kept when it failed: the failed step, with the vars it had, as
//     a new retry generation (message ID "execution:seq:rN") with fresh
//     attempts. Earlier steps do not run again; items of older generations
//     (the dead-lettered item, if replayed) are dropped.
//   - An await step parks the execution: its continuation is kept in the
//     catalog, the item is acknowledged, so no lease is held while it
//     waits, and with a timeout a delayed timeout item is enqueued (its own
//     message ID, "execution:seq:timeout"). Signal resolves the park
//     ("signal") and enqueues the continuation with the signal's data in
//     vars (under the step's save_as, default its name); a timeout item that
//     finds the park unresolved resolves it ("timeout") and runs
//     on-timeout. Whichever resolves it first wins and the other is
//     dropped: a signal after the timeout is refused (ErrNotAwaiting), a
//     timeout after the signal is acknowledged without running. On one
//     node the park is read and written with catalog.PutIf, so a resolution
//     that node has seen is never overwritten. Across nodes the catalog has
//     no compare-and-set: a signal and a timeout within the moment it
//     takes a write to reach the other node can both resolve it, and then
//     the write that wins the catalog's merge decides which continuation
//     runs; the other is dropped where the winner's write has arrived, but
//     can run if it starts before that. Both continuations have the same
//     sequence number, so whichever records first makes the other a repeat
//     (above). On brokers without dedupe a crash can also repeat the await
//     step itself: a repeat that finds the park resolved does not park
//     again; one that finds it unresolved parks again and enqueues a second
//     timeout item, and the two are one item's copies, as any repeat (the
//     second is dropped if the first's step has recorded by the time it
//     runs).

package flows
