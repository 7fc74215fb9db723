// Package integration holds tests that run the built clusterbus binary as
// several processes: a broker and nodes that are killed (SIGKILL), stopped
// (SIGTERM) and cut off from the broker (a TCP proxy in the test), with
// conditions read from each node's /api/cluster and /ha/health.
//
// # Running
//
//	go test ./integration/            # builds the binary once, runs every broker
//	go test -short ./integration/     # skips them
//
// Each multi-process test runs once per broker, as subtests named nats,
// rabbitmq, kafka, sqs and azservicebus (e.g.
// TestChaosFlowsCompleteExactlyOnceUnderKill9/kafka), each with a broker of
// its own: nats is a `clusterbus broker` process; rabbitmq is the server at
// CLUSTERBUS_TEST_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/),
// with names unique to the run; kafka is an in-process kfake cluster
// (adapters/kafka/kafkatest) the nodes reach at kafka://127.0.0.1:PORT; sqs
// is fauxqs (adapters/sqs/sqstest, Node.js); azservicebus is the Service
// Bus test server (adapters/azservicebus/sbtest, Node.js). A broker that
// cannot be started or reached skips its subtests with the reason, and
// fails them when CI=true.
//
// CLUSTERBUS_INTEGRATION_BROKER=<url> restricts the run to that one broker
// (the nodes get it as --broker). The link-cut test puts a TCP proxy in
// front of the broker's address (the URL's host:port, the sqs endpoint
// parameter or the Service Bus connection string's endpoint); it skips on
// Kafka, whose clients reconnect to the address the broker advertises.
//
// # Production topology (own brokers, not once per broker)
//
//   - TestNATSClusterServerLoss: chaos on a 3-server NATS cluster whose
//     servers are processes of this test binary (so they can be killed with
//     SIGKILL; see envNATSServer), R3 streams; the servers leading the flows
//     stream and the JetStream meta group are killed during the run.
//   - TestRabbitMQClusterNodeLoss: chaos on the 3-node RabbitMQ cluster of
//     adapters/rabbitmq/rabbittest (.ci/rabbitmq-cluster.sh), the node
//     leading the flows queue killed with SIGKILL.
//   - TestRollingRestartBehindHAProxy: three nodes behind a real HAProxy,
//     upgraded one at a time to another build under client traffic.
//   - TestBrokerOutage: a 30 s outage of a single NATS server and of a
//     3-server cluster under flow load.
//   - TestComposeFileWorksAsWritten: docker-compose.yml, Dockerfile and
//     deploy/haproxy.cfg checked (and docker-compose config run).
//
// A chaos run on a cluster also accepts a step repeated across a broker
// server kill (an ack in flight to the dying server is lost, and the item
// comes back after its lease), and counts a completion record delivered
// again (attempt > 1) once.
//
// Knobs: CLUSTERBUS_CHAOS_EXECUTIONS (executions per chaos run, default
// 1000 on every broker), CLUSTERBUS_CHAOS_LOG_LEVEL (the chaos nodes' log
// level, default warn) and CLUSTERBUS_INTEGRATION_LOG_DIR (keep every
// process's log there instead of in a temporary directory).
//
// Node resilience (resilience_test.go, partition_test.go; NATS only):
// TestStartBeforeBroker (a node started before its broker waits with 503
// and serves once it is up), TestCrashLoopDoesNotFence (a crash-looping
// third node never fences a healthy pair; a node keeps its ID in its data
// dir), TestOutageLeadStaysOldest (a broker restart under three nodes: no
// younger node leads at any 50 ms poll), TestConfigTyposRejected (every
// config mistake exits 2 before connecting, naming the key) and
// TestBrokerPartitionOneLeadServes (a 3-server NATS cluster, R3, one
// server's routes cut for 90 s through proxies: never two leads after the
// detection window, the minority 503 throughout, one lead after the heal;
// it logs the timeline).
//
// Execution control (control_test.go, NATS): TestFlowCancelAndHistoryAcrossRestart
// (a running http step cancelled with `clusterbus flow cancel` through
// another node: its request ends, the next step never runs, both nodes
// record it cancelled with the reason; after every node restarted with an
// empty data dir, `flow history` and `flow list --status` answer the same
// from the catalog the broker retains).
//
// Deployed definitions (deploy_test.go, NATS and RabbitMQ):
// TestDeployedFlowsAcrossNodes (`clusterbus flow deploy` on node a, the
// flow submitted on node b, which never had the file; v2 deployed while
// v1 executions wait in a wait step: each ends on its version; every node
// restarted with its data dir, then a joiner with an empty one; rollback
// and undeploy through the CLI; then every node restarted with an empty
// data dir: on NATS the definitions and execution records come back from
// JetStream, on RabbitMQ, which retains nothing, they are gone).
//
// # What is checked
//
// Timing is the defaults: heartbeat 500ms, failure timeout 1.5s. The
// tests wait on conditions with deadlines of the failure timeout plus a
// margin and log the times they measured.
//
// The chaos test fails on a missing completion, on two holders working on
// one item at once, and on a step repeated without a crash of the node
// that ran it. A second completion record of an execution fails it on
// brokers that deduplicate (NATS, SQS FIFO queues, Service Bus). On those
// that do not (RabbitMQ, Kafka) package flows documents that a crash
// between recording a step and its ack can fork an execution, and the
// checker cannot tell a fork's two copies from one item held twice, so
// there repeated completions and lease findings are logged as lines
// starting "FINDING (<broker>, no dedupe)" instead of failing: exactly-once
// completion is not guaranteed on those brokers, and the log says how
// often it was missed.
package integration
