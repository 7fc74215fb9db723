package mem_test

import (
	"context"
	"fmt"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
)

// Two nodes share one in-memory server; a fake clock makes the lease expire
// without waiting, and the item moves to the other node as attempt 2.
func Example() {
	ctx := context.Background()
	clock := clockwork.NewFakeClock()
	srv := mem.NewServer(mem.WithClock(clock))
	defer srv.Close()
	node1, node2 := srv.Client(), srv.Client()

	_ = node1.DeclareQueue(ctx, adapters.QueueConfig{Name: "jobs", Lease: 30 * time.Second})
	_ = node1.Enqueue(ctx, "jobs", adapters.Message{ID: "job-1", Body: []byte("resize image 42")})

	c1, _ := node1.Consume(ctx, "jobs", adapters.ConsumeOptions{})
	d, _ := c1.Receive(ctx)
	fmt.Println("node1 got", d.Message().ID, "attempt", d.Attempt())

	// node1 stalls past its lease.
	clock.Advance(31 * time.Second)

	c2, _ := node2.Consume(ctx, "jobs", adapters.ConsumeOptions{})
	d2, _ := c2.Receive(ctx)
	fmt.Println("node2 got", d2.Message().ID, "attempt", d2.Attempt())
	fmt.Println("node1 ack:", d.Ack(ctx) != nil)
	fmt.Println("node2 ack:", d2.Ack(ctx))
	// Output:
	// node1 got job-1 attempt 1
	// node2 got job-1 attempt 2
	// node1 ack: true
	// node2 ack: <nil>
}

// Disconnect stands for a node losing its broker connection: its
// operations fail with a retryable error and its subscription reports a gap
// once it is back.
func ExampleServer_Disconnect() {
	ctx := context.Background()
	srv := mem.NewServer()
	defer srv.Close()
	node1, node2 := srv.Client(), srv.Client()
	sub, _ := node1.Subscribe(ctx, "cache-clear")

	srv.Disconnect(node1)
	err := node1.Publish(ctx, "cache-clear", adapters.Message{Body: []byte("region users")})
	fmt.Println("publish while disconnected retryable:", adapters.IsRetryable(err))
	_ = node2.Publish(ctx, "cache-clear", adapters.Message{Body: []byte("missed by node1")})

	srv.Reconnect(node1)
	_, err = sub.Receive(ctx)
	fmt.Println(err)
	// Output:
	// publish while disconnected retryable: true
	// mem: receive from topic "cache-clear": messages may have been missed: reconnected or buffer overflowed
}
