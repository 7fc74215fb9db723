package adaptertest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

func (s *suite) restartCases() []testCase {
	return []testCase{
		{"SubscriptionsAndConsumersResume", s.testRestart},
		{"DelayedItemsComeBackAfterRestart", s.testDelayedRestart},
	}
}

// retry calls fn until it succeeds, fails with a non-retryable error, or
// ctx ends; transient errors (ErrUnavailable) while the broker comes back are
// expected.
func retry(ctx context.Context, t *testing.T, what string, fn func(context.Context) error) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := fn(cctx)
		cancel()
		if err == nil || ctx.Err() != nil {
			return err
		}
		if !adapters.IsRetryable(err) && !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		t.Logf("%s: %v (retrying)", what, err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Across a broker restart (Harness.Restart): a subscription made before it
// receives messages published after it (it may report ErrGap first), a
// consumer opened before it receives an item enqueued before it (attempt
// counts may have grown if the restart cut a lease) and items enqueued after
// it, and the clients need no reopening.
func (s *suite) testRestart(t *testing.T) {
	if s.h.Restart == nil {
		t.Skip("Harness.Restart is nil: the harness cannot restart this broker")
	}
	s.skipUnless(t, "Restart", s.caps.Restart)
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{})
	topic := unique("t")
	sub := s.subscribe(t, s.open(t), topic)
	c := s.consume(t, s.open(t), q.Name, adapters.ConsumeOptions{})
	want := richMessage()
	s.enqueue(t, b, q.Name, want)

	ctx, cancel := context.WithTimeout(context.Background(), 4*s.wait)
	defer cancel()
	start := time.Now()
	if err := s.h.Restart(ctx); err != nil {
		t.Fatalf("Harness.Restart: %v", err)
	}
	t.Logf("broker restarted in %s", time.Since(start))

	// Topic: publish until the old subscription receives a message
	// published after the restart. Publishes made while the client is still
	// reconnecting may fail or be lost (topics are at-most-once).
	gaps := 0
	got := make(chan string, 1)
	subErr := make(chan error, 1)
	go func() {
		for {
			m, err := sub.Receive(ctx)
			if errors.Is(err, adapters.ErrGap) {
				gaps++
				continue
			}
			if err != nil {
				subErr <- err
				return
			}
			got <- m.ID
			return
		}
	}()
	published := 0
publish:
	for {
		id := fmt.Sprintf("after-restart-%d", published)
		if err := b.Publish(ctx, topic, adapters.Message{ID: id}); err != nil && !adapters.IsRetryable(err) {
			t.Fatalf("Publish after restart: %v", err)
		}
		published++
		select {
		case id := <-got:
			t.Logf("subscription received %q after %d publishes (%d gap reports) %s after the restart", id, published, gaps, time.Since(start))
			break publish
		case err := <-subErr:
			t.Fatalf("subscription after restart: %v", err)
		case <-time.After(250 * time.Millisecond):
		}
	}

	// Queue: the item enqueued before the restart is still there.
	var d adapters.Delivery
	err := retry(ctx, t, "Receive after restart", func(cctx context.Context) (err error) {
		d, err = c.Receive(cctx)
		return err
	})
	if err != nil {
		t.Fatalf("consumer after restart: %v", err)
	}
	if diff := diffMessage(d.Message(), want); diff != "" {
		t.Errorf("item enqueued before the restart changed: %s", diff)
	}
	if err := retry(ctx, t, "Ack after restart", d.Ack); err != nil {
		t.Fatalf("Ack after restart: %v", err)
	}
	// And new items flow.
	if err := retry(ctx, t, "Enqueue after restart", func(cctx context.Context) error {
		return b.Enqueue(cctx, q.Name, adapters.Message{ID: "after-restart"})
	}); err != nil {
		t.Fatalf("Enqueue after restart: %v", err)
	}
	for {
		err = retry(ctx, t, "Receive after restart", func(cctx context.Context) (err error) {
			d, err = c.Receive(cctx)
			return err
		})
		if err != nil {
			t.Fatalf("consumer after restart, second item: %v", err)
		}
		if d.Message().ID == want.ID {
			// A redelivery of the first item is allowed if its Ack raced
			// the reconnect; take it again.
			t.Logf("first item delivered again (attempt %d)", d.Attempt())
			retry(ctx, t, "Ack", d.Ack)
			continue
		}
		break
	}
	if d.Message().ID != "after-restart" {
		t.Errorf("got %q, want \"after-restart\"", d.Message().ID)
	}
	if err := retry(ctx, t, "Ack after restart", d.Ack); err != nil {
		t.Fatalf("Ack after restart: %v", err)
	}
}

// Items nacked with a delay just before the broker restarts come back,
// within 4 × s.wait of the restart: none is lost or stuck in the delay
// path (issue 12: a RabbitMQ delay queue kept one for 12 minutes). One
// back before its delay is logged as a finding: brokers need not keep a
// delay's timer across a restart.
func (s *suite) testDelayedRestart(t *testing.T) {
	if s.h.Restart == nil {
		t.Skip("Harness.Restart is nil: the harness cannot restart this broker")
	}
	s.skipUnless(t, "Restart", s.caps.Restart)
	s.skipUnless(t, "DelayedNack", s.caps.DelayedNack)
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{Lease: time.Minute})
	c := s.consume(t, b, q.Name, adapters.ConsumeOptions{Prefetch: 2})
	delays := map[string]time.Duration{"short": 100 * time.Millisecond, "long": 3 * time.Second}
	if m := s.caps.MaxDelay; m > 0 && m < delays["long"] {
		delays["long"] = m
	}
	for id := range delays {
		s.enqueue(t, b, q.Name, adapters.Message{ID: id})
	}
	nacked := map[string]time.Time{}
	for range delays {
		d := s.receive(t, c, "an item to nack with a delay")
		id := d.Message().ID
		nacked[id] = time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), s.wait)
		err := d.Nack(ctx, delays[id])
		cancel()
		if err != nil {
			t.Fatalf("Nack(%s) of %s: %v", delays[id], id, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*s.wait)
	defer cancel()
	if err := s.h.Restart(ctx); err != nil {
		t.Fatalf("Harness.Restart: %v", err)
	}
	up := time.Now()
	back := map[string]bool{}
	for len(back) < len(delays) {
		var d adapters.Delivery
		err := retry(ctx, t, "Receive after restart", func(cctx context.Context) (err error) {
			d, err = c.Receive(cctx)
			return err
		})
		if err != nil {
			t.Fatalf("delayed items not back %s after the restart (back: %v): %v", time.Since(up), back, err)
		}
		id := d.Message().ID
		since := time.Since(nacked[id])
		t.Logf("%s (Nack %s) back %s after the nack, %s after the broker was up, attempt %d",
			id, delays[id], since.Round(time.Millisecond), time.Since(up).Round(time.Millisecond), d.Attempt())
		if since < delays[id] {
			// Not a loss; a broker may not keep a delay's timer across a
			// restart (nats-server redelivers on recovery). Said, not failed.
			t.Logf("FINDING: %s back %s after Nack(%s): early, the broker did not keep the delay across its restart", id, since, delays[id])
		}
		if _, ok := delays[id]; !ok {
			t.Errorf("unexpected item %q", id)
		}
		back[id] = true
		_ = retry(ctx, t, "Ack", d.Ack)
	}
}
