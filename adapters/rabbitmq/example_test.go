package rabbitmq_test

import (
	"context"
	"fmt"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	_ "github.com/clusterbus/clusterbus/adapters/rabbitmq" // registers amqp:// and amqps://
)

// Open a RabbitMQ broker by URL, declare a queue and work one item.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := adapters.Open(ctx, "amqp://guest:guest@127.0.0.1:5672/?consumer_timeout=30m")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close()
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: "jobs", Lease: 30 * time.Second, MaxAttempts: 5}); err != nil {
		fmt.Println(err)
		return
	}
	if err := b.Enqueue(ctx, "jobs", adapters.Message{Body: []byte("hello")}); err != nil {
		fmt.Println(err)
		return
	}
	c, err := b.Consume(ctx, "jobs", adapters.ConsumeOptions{Prefetch: 8})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	d, err := c.Receive(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("attempt %d: %s\n", d.Attempt(), d.Message().Body)
	if err := d.Ack(ctx); err != nil {
		fmt.Println(err)
	}
}
