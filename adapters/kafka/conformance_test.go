package kafka_test

import (
	"context"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/adaptertest"
)

// TestConformance runs the shared conformance suite against kfake (or the
// Kafka named by CLUSTERBUS_TEST_KAFKA_BROKERS). Restart closes the kfake
// cluster and starts a new one on the same port and data directory, so
// records and committed offsets survive; against a real Kafka the restart
// case skips.
func TestConformance(t *testing.T) {
	srv := startServer(t)
	h := adaptertest.Harness{
		Open:  func(ctx context.Context) (adapters.Broker, error) { return srv.open(ctx, t) },
		Lease: time.Second,
	}
	if srv.canRestart() {
		h.Restart = srv.Restart
	}
	adaptertest.Run(t, h)
}
