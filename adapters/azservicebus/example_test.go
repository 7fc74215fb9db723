package azservicebus_test

import (
	"context"
	"fmt"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	_ "github.com/clusterbus/clusterbus/adapters/azservicebus" // registers azservicebus://
)

// Open a namespace by URL, with the connection string in an environment
// variable, declare a queue and work one item.
func Example() {
	ctx := context.Background()
	b, err := adapters.Open(ctx, "azservicebus://?connection_string_env=SERVICEBUS_CONNECTION_STRING")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close()
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: "jobs", Lease: 30 * time.Second, MaxAttempts: 5}); err != nil {
		fmt.Println(err)
		return
	}
	_ = b.Enqueue(ctx, "jobs", adapters.Message{ID: "job-1", Body: []byte("work")})
	c, _ := b.Consume(ctx, "jobs", adapters.ConsumeOptions{})
	defer c.Close()
	d, err := c.Receive(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	// ... do the work, calling d.Extend while it runs longer than the lease ...
	_ = d.Ack(ctx)
}
