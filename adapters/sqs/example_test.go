package sqs_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	_ "github.com/clusterbus/clusterbus/adapters/sqs" // registers sqs://
)

// Open SQS by URL (here a local emulator), declare a queue, enqueue an item
// and take it under a lease.
func Example() {
	ctx := context.Background()
	b, err := adapters.Open(ctx, "sqs://us-east-1?endpoint=http://127.0.0.1:4566&prefix=demo-")
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: "jobs", Lease: 30 * time.Second, MaxAttempts: 5}); err != nil {
		log.Fatal(err)
	}
	if err := b.Enqueue(ctx, "jobs", adapters.Message{ID: "job-1", Body: []byte("resize image 7")}); err != nil {
		log.Fatal(err)
	}
	c, err := b.Consume(ctx, "jobs", adapters.ConsumeOptions{Prefetch: 10})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	d, err := c.Receive(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s attempt %d: %s\n", d.Message().ID, d.Attempt(), d.Message().Body)
	if err := d.Ack(ctx); err != nil {
		log.Fatal(err)
	}
}
