// Package rabbittest gives tests a 3-node RabbitMQ cluster on this machine:
// three rabbitmq-server processes (cb1@localhost, cb2@localhost,
// cb3@localhost) with AMQP on 127.0.0.1:5681-5683, their own data
// directories and a shared Erlang cookie, joined with rabbitmqctl
// join_cluster, so quorum queues are replicated on all three. The script
// .ci/rabbitmq-cluster.sh starts it (CI runs it once before the tests);
// Cluster starts it through the same script when it is absent. The
// machine's own RabbitMQ on 5672 is left alone.
//
//	c, err := rabbittest.StartCluster(ctx)
//	b, err := adapters.Open(ctx, c.URL(0))
//	c.Kill(1)   // kill -9 of node cb2
//	c.Start(1)  // it comes back and rejoins
//
// CLUSTERBUS_TEST_AMQP_CLUSTER_URLS (comma-separated amqp:// URLs, one per
// node) points the tests at an external cluster instead; Kill, Start,
// StopApp and StartApp then fail with ErrNotOwned.
//
// The adapter itself never imports this package.
package rabbittest
