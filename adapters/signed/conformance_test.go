package signed_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/adaptertest"
	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/adapters/signed"
)

// TestConformance: the decorator keeps the Broker contract (on mem).
func TestConformance(t *testing.T) {
	srv := mem.NewServer()
	t.Cleanup(srv.Close)
	ring := mustRing(t, keyA)
	var n atomic.Int64
	adaptertest.Run(t, adaptertest.Harness{
		Open: func(context.Context) (adapters.Broker, error) {
			return signed.Wrap(srv.Client(), signed.Config{Cluster: "conf", Sender: fmt.Sprintf("n%d", n.Add(1)), Keys: ring})
		},
		Restart: func(context.Context) error {
			srv.Restart()
			return nil
		},
		Lease: 500 * time.Millisecond,
	})
}
