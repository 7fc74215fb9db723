package nats

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
)

// TestAdaptivePrefetchGrowsAndShrinksWithoutRedelivering: a consumer opened
// with Prefetch 1 and MaxPrefetch 256 grows its pull while Receive takes
// items at once, and shrinks it when an item waited in its buffer past a
// tenth of the lease. Resizing gives nothing back: every item is delivered
// once, as attempt 1.
func TestAdaptivePrefetchGrowsAndShrinksWithoutRedelivering(t *testing.T) {
	srv, err := natsserver.Start(natsserver.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, err := Open(ctx, Options{Servers: []string{"nats://" + srv.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	const lease = 4 * time.Second
	q := adapters.QueueConfig{Name: "adapt", Lease: lease}
	if err := b.DeclareQueue(ctx, q); err != nil {
		t.Fatal(err)
	}
	enqueue := func(from, n int) {
		t.Helper()
		ms := make([]adapters.Message, 0, n)
		for i := from; i < from+n; i++ {
			ms = append(ms, adapters.Message{ID: fmt.Sprintf("i%05d", i), Body: []byte("x")})
		}
		if err := adapters.EnqueueBatch(ctx, b, q.Name, ms); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := b.Consume(ctx, q.Name, adapters.ConsumeOptions{Prefetch: 1, MaxPrefetch: 256})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cons.Close() })
	c := cons.(*consumer)
	size := func() int {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.size
	}
	seen := map[string]bool{}
	take := func(pause time.Duration) {
		t.Helper()
		d, err := c.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		id := d.Message().ID
		if seen[id] || d.Attempt() != 1 {
			t.Fatalf("%s delivered again (attempt %d): resizing gave it back", id, d.Attempt())
		}
		seen[id] = true
		time.Sleep(pause)
		if err := d.Ack(ctx); err != nil {
			t.Fatalf("Ack %s: %v", id, err)
		}
	}

	enqueue(0, 3000)
	largest := 1
	for range 3000 {
		take(0)
		largest = max(largest, size())
	}
	if largest < 64 {
		t.Fatalf("the pull grew to %d items at most while Receive took 3000 at once, want >= 64", largest)
	}
	t.Logf("grew to %d", largest)

	// Slow takes: an item waits in the buffer past lease/10 (plus the
	// transit allowance), so the pull shrinks.
	enqueue(3000, 40)
	for range 4 {
		take(800 * time.Millisecond)
	}
	if got := size(); got >= largest {
		t.Fatalf("pull still %d items after items waited 800 ms each with a %s lease, want it below %d", got, lease, largest)
	} else {
		t.Logf("shrank to %d", got)
	}
	for range 36 {
		take(0)
	}
	if len(seen) != 3040 {
		t.Fatalf("%d distinct items delivered, want 3040", len(seen))
	}
}
