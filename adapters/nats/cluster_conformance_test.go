package nats_test

import (
	"context"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/adaptertest"
	"github.com/clusterbus/clusterbus/adapters/nats"
	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
)

// TestConformanceCluster runs the conformance suite against a 3-server
// embedded NATS cluster with every stream replicated on 3 (R3). Clients
// know all three servers. Restart stops the server that leads the JetStream
// meta group and starts it again on the same ports and store: the other
// two keep serving while it is gone.
func TestConformanceCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("3-server cluster: skipped with -short")
	}
	c, err := natsserver.StartCluster(natsserver.ClusterConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Shutdown)
	log := testLogger(t)
	adaptertest.Run(t, adaptertest.Harness{
		Open: func(ctx context.Context) (adapters.Broker, error) {
			// Every client starts on server 1 (and fails over to the
			// others it learns of): a subscription reaches the other
			// servers through routes asynchronously, so a topic message
			// published through another server right after Subscribe
			// returns may miss it (see the package doc), which the
			// topic cases do not allow for.
			return nats.Open(ctx, nats.Options{Servers: []string{"nats://" + c.ClientAddr(0)}, Replicas: 3, Logger: log})
		},
		Restart: func(ctx context.Context) error {
			i := max(c.MetaLeader(), 0)
			t.Logf("restart: stopping %s (meta leader)", c.ServerName(i))
			c.Stop(i)
			time.Sleep(time.Second)
			if err := c.Restart(i); err != nil {
				return err
			}
			return c.WaitMetaLeader(30 * time.Second)
		},
		Lease: time.Second,
	})
}
