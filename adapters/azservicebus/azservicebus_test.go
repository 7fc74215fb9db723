package azservicebus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

func TestQueueRoundTripAckAgainstTestServer(t *testing.T) {
	b := openTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	q := "smoke-" + time.Now().Format("150405.000000")[7:]
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: 5 * time.Second, MaxAttempts: 3}); err != nil {
		t.Fatalf("DeclareQueue: %v", err)
	}
	t.Cleanup(func() { _ = b.DeleteQueue(context.Background(), q) })
	if err := b.Enqueue(ctx, q, adapters.Message{ID: "a", Key: "k", Headers: map[string]string{"h": "v"}, Body: []byte{0, 255}}); err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	c, err := b.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	d, err := c.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	m := d.Message()
	if m.ID != "a" || m.Key != "k" || m.Headers["h"] != "v" || string(m.Body) != "\x00\xff" || d.Attempt() != 1 {
		t.Fatalf("got %+v attempt %d", m, d.Attempt())
	}
	if err := d.Extend(ctx, time.Second); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	if err := d.Ack(ctx); !errors.Is(err, adapters.ErrLeaseLost) {
		t.Fatalf("second Ack: %v, want ErrLeaseLost", err)
	}
}
