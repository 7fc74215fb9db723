package kafkatest_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	_ "github.com/clusterbus/clusterbus/adapters/kafka"
	"github.com/clusterbus/clusterbus/adapters/kafka/kafkatest"
)

// TestStartServesKafkaAndRestartKeepsItems checks that the adapter can use
// the server through its URL and that an item enqueued before a Restart is
// still there after it.
func TestStartServesKafkaAndRestartKeepsItems(t *testing.T) {
	s, err := kafkatest.Start(kafkatest.Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, err := adapters.Open(ctx, s.URL())
	if err != nil {
		t.Fatalf("Open(%s): %v", s.URL(), err)
	}
	defer b.Close()
	q := fmt.Sprintf("kafkatest-%d", time.Now().UnixNano())
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: q}); err != nil {
		t.Fatal(err)
	}
	if err := b.Enqueue(ctx, q, adapters.Message{ID: "m1", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	b2, err := adapters.Open(ctx, s.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	c, err := b2.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, err := c.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.Message().ID != "m1" {
		t.Fatalf("received %q after Restart, want m1", d.Message().ID)
	}
	_ = d.Ack(ctx)
}
