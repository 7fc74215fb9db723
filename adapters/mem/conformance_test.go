package mem_test

import (
	"context"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/adaptertest"
	"github.com/clusterbus/clusterbus/adapters/mem"
)

// TestConformance runs the shared suite on one in-memory server with the
// real clock; every Open is a new client of that server.
func TestConformance(t *testing.T) {
	srv := mem.NewServer()
	t.Cleanup(srv.Close)
	adaptertest.Run(t, adaptertest.Harness{
		Open: func(context.Context) (adapters.Broker, error) { return srv.Client(), nil },
		Restart: func(context.Context) error {
			srv.Restart()
			return nil
		},
		Lease: 500 * time.Millisecond,
	})
}
