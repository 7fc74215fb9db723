package bus_test

import (
	"context"
	"fmt"
	"time"

	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/bus"
)

// A one-node cluster on the in-memory broker: it warms up for one failure
// timeout, takes the lead and runs its lead duty with the term as fencing
// token; a cache region is cleared through the cluster.
func Example() {
	broker := mem.New()
	defer broker.Close()

	cfg := bus.DefaultConfig()
	cfg.Cluster = "example"
	cfg.NodeID = "node-1"
	cfg.HeartbeatInterval = 50 * time.Millisecond
	cfg.FailureTimeout = 200 * time.Millisecond
	node, err := bus.New(broker, cfg)
	if err != nil {
		panic(err)
	}
	ran := make(chan uint64, 1)
	_ = node.RegisterDuty("upgrade", "", func(ctx context.Context, term uint64) error {
		ran <- term
		return nil
	})
	users := bus.NewCache[string](node, "users")
	users.Load("u1", func() (string, error) { return "Ada", nil })

	ctx := context.Background()
	if err := node.Start(ctx); err != nil {
		panic(err)
	}
	defer node.Stop(ctx)

	fmt.Println("duty ran with term", <-ran)
	lead, term := node.IsLead()
	fmt.Println("lead:", lead, "term:", term, "serving:", node.Serving())

	_ = node.Invalidate(ctx, "users", "u1")
	_, cached := users.Get("u1")
	fmt.Println("u1 cached after invalidation:", cached)
	// Output:
	// duty ran with term 1
	// lead: true term: 1 serving: true
	// u1 cached after invalidation: false
}
