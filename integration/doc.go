// Package integration holds tests that run the built clusterbus binary as
// several processes: a broker and nodes that are killed (SIGKILL), stopped
// (SIGTERM) and cut off from the broker (a TCP proxy in the test), with
// conditions read from each node's /api/cluster and /ha/health.
//
// # Running
//
//	go test ./integration/            # builds the binary once, runs for ~1 min
//	go test -short ./integration/     # skips them
//
// The broker is a `clusterbus broker` process unless
// CLUSTERBUS_INTEGRATION_BROKER names another broker URL (the nodes get it
// as --broker; the link-cut test puts its proxy in front of the URL's
// host:port, which works for brokers that do not redirect clients to other
// addresses).
//
// # What is checked
//
// Timing is the defaults: heartbeat 500ms, failure timeout 1.5s. The
// tests wait on conditions with deadlines of the failure timeout plus a
// margin and log the times they measured.
package integration
