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
// # Not provided
//
// Clustering, TLS, accounts and monitoring are not configured: this is a
// single-node server for development and small deployments. Run a real NATS
// cluster and point clusterbus at it for anything else.
package natsserver
