package nats_test

import (
	"context"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/adaptertest"
	"github.com/clusterbus/clusterbus/adapters/nats"
)

// TestConformance runs the adapter conformance suite against an embedded
// NATS server on a random port in a temporary directory; Restart stops it
// and starts it again on the same port and store.
func TestConformance(t *testing.T) {
	srv := startServer(t, false)
	log := testLogger(t)
	adaptertest.Run(t, adaptertest.Harness{
		Open: func(ctx context.Context) (adapters.Broker, error) {
			return nats.Open(ctx, nats.Options{Servers: []string{srv.URL()}, Logger: log})
		},
		Restart: srv.Restart,
		Lease:   time.Second,
	})
}
