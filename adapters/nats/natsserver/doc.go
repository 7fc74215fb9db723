// Package natsserver runs an embedded NATS server with JetStream, the default
// broker of clusterbus: one process on a bare machine that several clusterbus
// nodes share.
//
// It lives apart from package nats so that a program that connects to an
// external NATS does not link the server.
//
//	srv, err := natsserver.Start(natsserver.Config{DataDir: "/var/lib/clusterbus"})
//	if err != nil { … }
//	defer srv.Shutdown()
//	b, err := adapters.Open(ctx, srv.ClientURL()) // with package nats linked in
//
// # Listening
//
// Config.Listen is host:port; it defaults to DefaultListen (127.0.0.1:14222),
// on loopback and away from the standard NATS port 4222 so that it does not
// clash with a NATS server already running on the machine. Port 0 picks a free
// port; ClientURL tells which.
//
// # Durability
//
// JetStream stores streams under Config.DataDir (file storage). With
// Config.Sync the server fsyncs after every write (the sync_interval "always"
// setting): an acknowledged enqueue survives a crash of the machine or a power
// loss. Without it the server writes each message to the operating system
// before acknowledging it (survives a crash of the process) and fsyncs every
// two minutes (the NATS default), which is much faster; see the benchmark in
// package nats for the cost.
//
// # Clusters (for tests)
//
// Config.ClusterName, ClusterListen and Routes join a server to a cluster.
// StartCluster starts N servers on loopback (random client and route ports,
// one data directory each, names Name-1…Name-N, routes between every pair,
// JetStream clustered) and waits for a JetStream meta leader:
//
//	c, err := natsserver.StartCluster(natsserver.ClusterConfig{Dir: t.TempDir()})
//	defer c.Shutdown()
//	b, err := adapters.Open(ctx, c.ClientURL()+"?replicas=3")
//	i := c.StreamLeader("", "clusterbus_q_flows") // which server leads a stream
//	c.Stop(i); …; c.Restart(i)                      // same ports, same store
//
// RouteAddr(i) is server i's route listener and ClusterConfig.RouteVia lets a
// test put a proxy on every route (implicit routes are then off), so that it
// can cut the link between two servers. A stopped server in-process is a
// graceful shutdown; a kill -9 needs the server in a process of its own.
//
// Seen with nats-server 2.15.2: right after an account's last stream is
// deleted, creating a stream can fail with "could not create storage
// directory"; tests that delete streams keep one alive.
//
// # Not provided
//
// TLS, accounts and monitoring are not configured: this is a server for
// development, small deployments and tests. Run a real NATS cluster and
// point clusterbus at it for production.
package natsserver
