// Package flows runs Flows and Rules on a cluster of nodes that share only a
// broker, so that an execution survives the death of the node running it.
//
// A Flow is a named, versioned set of steps, written in Go (Flow, Step) or
// in YAML (Parse, ParseDir, Engine.LoadDir, Engine.Deploy) with the built-in step kinds
// rule/branch, set, http and wait; CEL expressions (github.com/google/cel-go)
// see input, vars and exec. A Rule is an ordered list of CEL conditions
// giving an outcome; it is a branching step inside a flow, or standalone
// (Engine.RegisterRule, Engine.Evaluate, or submitted like a flow).
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
// submissions use: a Deploy that creates a higher version moves it,
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
// an undeploy survives their restarts.
//
// Conflicting concurrent deploys: two nodes that write the same version
// key with different content at once both succeed locally; when their
// catalogs exchange the writes, the lowest Rev (Lamport clock, then node
// ID) wins on every node (catalog.Config.FirstWriteWins), so every node
// ends up compiling the same content. Deploy syncs with the other nodes for
// up to a second after writing and returns an error matching
// catalog.ErrConflict if its write lost; a loser that does not see it within
// that second reports success for content the cluster then replaces (its
// Versions call shows the winner). Concurrent head writes: the highest Rev
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
//     Each node narrows this: it remembers, from the step_done and
//     completed events it has heard (its own included), up to which
//     sequence number each execution has recorded its steps, and drops
//     (acknowledges without running) an item below that, so a repeat or a
//     fork's second copy that reaches such a node ends there. A starting
//     engine catches up: it asks the other nodes on the events topic for
//     the executions they saw updated in the last 15 minutes and merges
//     their replies (split to fit the broker's message size), so a node
//     restarted after a crash knows what was recorded before it; in the
//     daemon the node's warm-up (one failure timeout before it serves)
//     gives the replies time to arrive before it takes work. What is left:
//     a crash between the enqueue and the step_done event, an event or a
//     reply that was missed (the topic is at most once), an execution the
//     node forgot (Config.IndexSize), and two copies running at the same
//     time. A consequence: an execution ID submitted again while a node
//     still remembers it past step 0 is dropped on that node.
//   - A wait, a RetryAfter and a drain hand-back each count as a delivery
//     attempt (the contract has no snooze). A wait needs a broker with
//     delayed nack (Capabilities.DelayedNack); without it the continuation
//     comes back at once and uses up its attempts.
//   - Steps do not see a fork or a repeat themselves: make the systems they
//     call honour the idempotency key or the fencing token.
//   - Status answers from this node's memory of execution events, which
//     travel on a broadcast topic (at most once), and of the catch-up
//     replies it got when it started (executions updated in the 15 minutes
//     before): an older execution that started before this node and has
//     been silent since is not known, the index is bounded
//     (Config.IndexSize), and a missed event makes a status lag until the
//     next one.
package flows
