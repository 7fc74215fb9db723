// Package kafkatest starts an in-process Kafka for tests: a kfake cluster
// (github.com/twmb/franz-go/pkg/kfake) with one broker (or several) on
// loopback ports.
// The kafka adapter's tests and the multi-process integration tests share
// it; the adapter itself never imports it.
//
//	s, err := kafkatest.Start(kafkatest.Options{})
//	if err != nil { ... }
//	defer s.Stop()
//	b, err := adapters.Open(ctx, s.URL())
//
// # What you get
//
// A broker at 127.0.0.1:PORT (Options.Port, or a free port) that any
// process on the machine can reach, so node processes started by a test
// connect with kafka://127.0.0.1:PORT. URL adds TestQuery: short group
// session timeouts and four partitions per queue, so that a consumer that
// dies or joins is rebalanced in seconds. With Options.DataDir set, Restart
// closes the cluster (every connection drops) and starts it again on the
// same port from the same directory: topics, records and committed offsets
// survive.
//
// # Several brokers
//
// Options.Brokers starts that many kfake brokers in the process, each on a
// loopback port; URL lists them all. RemoveBroker closes one broker's
// listener and connections and moves the leadership of its partitions to
// the others; ShuffleLeaders runs a leader election over every partition.
// That exercises what a client sees of a broker loss: connections cut,
// NOT_LEADER errors, metadata refreshes, bootstrap through another host.
//
// What it cannot model: the brokers share one in-memory store, so there is
// no replication, no in-sync replica set, no acks=all wait, no unclean
// leader election and no data loss when a broker goes; a broker cannot be
// killed with SIGKILL apart from the others (one process); the controller
// and the group coordinator do not fail over as in Kafka (the coordinator
// is whichever broker the client asks). Broker-loss durability has to be
// tested on real Kafka (CLUSTERBUS_TEST_KAFKA_BROKERS).
//
// # What it is not
//
// kfake is a Kafka protocol implementation written for tests, not Apache
// Kafka: it runs one process's worth of brokers in memory (plus the data
// directory), and it advertises its own listen address, so a TCP proxy in
// front of it cannot cut a single client's link (clients reconnect to the
// advertised address after the first metadata request). Start cannot fail
// for want of installed software; it fails only if the port is taken.
package kafkatest
