package nats_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	_ "github.com/clusterbus/clusterbus/adapters/nats" // registers nats://
	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
)

// Start an embedded server, open it by URL, and move one item through a
// leased queue.
func Example() {
	dir, err := os.MkdirTemp("", "clusterbus-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	srv, err := natsserver.Start(natsserver.Config{Listen: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		panic(err)
	}
	defer srv.Shutdown()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := adapters.Open(ctx, srv.ClientURL()+"?prefix=example")
	if err != nil {
		panic(err)
	}
	defer b.Close()

	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: "jobs", Lease: 10 * time.Second}); err != nil {
		panic(err)
	}
	if err := b.Enqueue(ctx, "jobs", adapters.Message{ID: "job-1", Body: []byte("resize image 42")}); err != nil {
		panic(err)
	}
	c, err := b.Consume(ctx, "jobs", adapters.ConsumeOptions{})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	d, err := c.Receive(ctx)
	if err != nil {
		panic(err)
	}
	fmt.Printf("%s: %s (attempt %d)\n", d.Message().ID, d.Message().Body, d.Attempt())
	if err := d.Ack(ctx); err != nil {
		panic(err)
	}
	// Output: job-1: resize image 42 (attempt 1)
}
