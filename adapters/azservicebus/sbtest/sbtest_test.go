package sbtest_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	_ "github.com/clusterbus/clusterbus/adapters/azservicebus"
	"github.com/clusterbus/clusterbus/adapters/azservicebus/sbtest"
)

// TestStartServesServiceBusAndRestartKeepsItems checks that the adapter can
// use the server through its URL and that a clean Restart keeps an item.
func TestStartServesServiceBusAndRestartKeepsItems(t *testing.T) {
	s, err := sbtest.Start(sbtest.Options{})
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("Service Bus test server unavailable (CI=true): %v", err)
		}
		t.Skipf("Service Bus test server unavailable: %v", err)
	}
	t.Cleanup(s.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := adapters.Open(ctx, s.URL())
	if err != nil {
		t.Fatalf("Open(%s): %v", s.URL(), err)
	}
	defer b.Close()
	q := "sbtest-q"
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
