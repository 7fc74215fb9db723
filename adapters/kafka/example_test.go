package kafka_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/kafka"
)

func ExampleParseURL() {
	cfg, err := kafka.ParseURL("kafka://k1:9092,k2?partitions=12&session_timeout=30s")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(cfg.Brokers, cfg.Partitions, cfg.SessionTimeout, cfg.HeartbeatInterval)

	_, err = kafka.ParseURL("kafka://k1:9092?partition=12")
	fmt.Println(err)
	// Output:
	// [k1:9092 k2:9092] 12 30s 1s
	// kafka: parse URL: invalid argument: unknown parameter "partition"; accepted: partitions=N, replication=N|-1, session_timeout=DURATION, heartbeat_interval=DURATION, prefix=NAME, client_id=NAME, tls=true, ca=FILE, cert=FILE, key=FILE, sasl=plain|scram-sha-256|scram-sha-512
}

// A worker on a leased queue. The adapter is linked in by importing the
// package; adapters.Open picks it by the URL scheme.
func Example() {
	ctx := context.Background()
	b, err := adapters.Open(ctx, "kafka://localhost:9092")
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: "mail", Lease: 30 * time.Second}); err != nil {
		log.Fatal(err)
	}
	if err := b.Enqueue(ctx, "mail", adapters.Message{Key: "user-7", Body: []byte("welcome")}); err != nil {
		log.Fatal(err)
	}
	c, err := b.Consume(ctx, "mail", adapters.ConsumeOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	d, err := c.Receive(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if err := d.Ack(ctx); err != nil {
		log.Fatal(err) // ErrLeaseLost: the lease ran out or a rebalance moved the partition
	}
}
