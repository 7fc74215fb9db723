package adaptertest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// RoundTrip shows that a test server works through its broker URL: it
// opens url with adapters.Open (blank-import the adapter), enqueues one
// item on a new queue, calls between unless it is nil (a server's Restart,
// say), opens url again and receives that item. Test-server packages
// (kafkatest, sqstest, sbtest) run it on their own Start.
func RoundTrip(t testing.TB, url string, between func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	open := func() adapters.Broker {
		t.Helper()
		b, err := adapters.Open(ctx, url)
		if err != nil {
			t.Fatalf("Open(%s): %v", adapters.Redact(url), err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}
	b := open()
	q := fmt.Sprintf("roundtrip-%d", time.Now().UnixNano())
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: q}); err != nil {
		t.Fatal(err)
	}
	if err := b.Enqueue(ctx, q, adapters.Message{ID: "m1", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	after := ""
	if between != nil {
		if err := between(ctx); err != nil {
			t.Fatal(err)
		}
		b, after = open(), " after the restart"
	}
	c, err := b.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, err := c.Receive(ctx)
	if err != nil {
		t.Fatalf("receive%s: %v", after, err)
	}
	if d.Message().ID != "m1" {
		t.Fatalf("received %q%s, want m1", d.Message().ID, after)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
}
