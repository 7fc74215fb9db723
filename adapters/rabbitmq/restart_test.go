package rabbitmq

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// requireRestart returns the hook that restarts the local RabbitMQ
// (rabbitmqctl stop_app, start_app, await_startup), or skips the test with
// the reason it cannot: CLUSTERBUS_TEST_AMQP_RESTART is not 1 (restarting
// disrupts a shared broker) or no rabbitmqctl reaches the node.
func requireRestart(t *testing.T) func(context.Context) error {
	t.Helper()
	requireBroker(t)
	restart, why := restartHook()
	if restart == nil {
		t.Skip(why)
	}
	return restart
}

// restartBroker restarts the broker and returns when it is up again.
func restartBroker(t *testing.T, restart func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	if err := restart(ctx); err != nil {
		t.Fatalf("restart the broker: %v", err)
	}
	t.Logf("broker restarted in %s", time.Since(start))
}

// An item nacked with a delay sits in a delay queue inside RabbitMQ; a
// broker restart during the delay must not lose it. The restart takes
// 20-30s here (stop_app waits for the node to stop): the "stopping" item's
// delay ends as the node stops, the "down" item's while it is down (it is
// dead-lettered back as the queues recover: the case the classic delay
// queues of earlier versions lost), the "after" item's once it is up
// again. All come back, no earlier than asked, with their attempt count,
// key, headers and body.
func TestDelayedNackSurvivesBrokerRestart(t *testing.T) {
	restart := requireRestart(t)
	b := openTest(t, testURL())
	q := declareTest(t, b, adapters.QueueConfig{Lease: time.Minute, MaxAttempts: 5})
	delays := map[string]time.Duration{"stopping": 2 * time.Second, "down": 10 * time.Second, "after": 45 * time.Second}
	for id := range delays {
		m := adapters.Message{ID: id, Key: "k-" + id, Headers: map[string]string{"h": id}, Body: []byte("body " + id)}
		if err := b.Enqueue(testCtx(t), q.Name, m); err != nil {
			t.Fatal(err)
		}
	}
	c, err := b.Consume(testCtx(t), q.Name, adapters.ConsumeOptions{Prefetch: len(delays)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	nacked := map[string]time.Time{}
	for range delays {
		d := receive(t, c, 30*time.Second)
		id := d.Message().ID
		if d.Attempt() != 1 {
			t.Fatalf("%s: attempt %d, want 1", id, d.Attempt())
		}
		nacked[id] = time.Now()
		if err := d.Nack(testCtx(t), delays[id]); err != nil {
			t.Fatalf("Nack(%s) of %s: %v", delays[id], id, err)
		}
	}

	restartBroker(t, restart)
	up := time.Now()

	back := map[string]bool{}
	deadline := time.Now().Add(5 * time.Minute)
	for len(back) < len(delays) {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		d, err := c.Receive(ctx)
		cancel()
		if err != nil {
			t.Fatalf("Receive after the restart (back so far: %v): %v", back, err)
		}
		m := d.Message()
		since := time.Since(nacked[m.ID])
		t.Logf("%s back %s after Nack(%s), %s after the broker was up, attempt %d", m.ID, since, delays[m.ID], time.Since(up), d.Attempt())
		if back[m.ID] {
			t.Logf("%s came back twice (at-least-once allows it)", m.ID)
		}
		back[m.ID] = true
		if _, known := delays[m.ID]; !known {
			t.Errorf("unexpected item %q", m.ID)
		}
		// Attempt 2: one delivery before the delayed nack. RabbitMQ counts a
		// delivery to a channel that dies before the consumer takes it, so
		// an item back in the queue before the restart cut the consumer's
		// channel may arrive as attempt 3; never one whose delay ended after
		// the broker was up.
		cut := d.Attempt() == 3 && nacked[m.ID].Add(delays[m.ID]).Before(up)
		if d.Attempt() != 2 && !cut {
			t.Errorf("%s: attempt %d, want 2 (one delivery before the delayed nack)", m.ID, d.Attempt())
		}
		if cut {
			t.Logf("%s: attempt 3: RabbitMQ had delivered it to the consumer's channel before the restart closed it", m.ID)
		}
		if since < delays[m.ID] {
			t.Errorf("%s: back %s after Nack(%s): early", m.ID, since, delays[m.ID])
		}
		if m.Key != "k-"+m.ID || m.Headers["h"] != m.ID || string(m.Body) != "body "+m.ID {
			t.Errorf("%s came back as key %q headers %v body %q", m.ID, m.Key, m.Headers, m.Body)
		}
		if err := d.Ack(testCtx(t)); err != nil {
			t.Errorf("Ack %s: %v", m.ID, err)
		}
	}
}

// An item whose last attempt is held when the broker restarts returns to
// the queue with its delivery counted, and RabbitMQ dead-letters it by
// itself (x-delivery-limit). That move must not lose it either: the item
// is in the dead-letter queue after the restart, with a max-attempts
// reason and its headers.
func TestBrokerDeadLetteringSurvivesRestart(t *testing.T) {
	restart := requireRestart(t)
	b := openTest(t, testURL())
	q := declareTest(t, b, adapters.QueueConfig{Lease: time.Minute, MaxAttempts: 2})
	m := adapters.Message{ID: "poison", Headers: map[string]string{"h": "v"}, Body: []byte("x")}
	if err := b.Enqueue(testCtx(t), q.Name, m); err != nil {
		t.Fatal(err)
	}
	c, err := b.Consume(testCtx(t), q.Name, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d := receive(t, c, 30*time.Second)
	if err := d.Nack(testCtx(t), 0); err != nil {
		t.Fatal(err)
	}
	d = receive(t, c, 30*time.Second)
	if d.Attempt() != 2 {
		t.Fatalf("second delivery: attempt %d, want 2", d.Attempt())
	}
	// Hold the last attempt across the restart.
	restartBroker(t, restart)
	up := time.Now()
	if err := d.Ack(testCtx(t)); !errors.Is(err, adapters.ErrLeaseLost) {
		t.Errorf("Ack of the delivery held across the restart: %v, want ErrLeaseLost", err)
	}

	dl, err := b.Consume(testCtx(t), q.Name, adapters.ConsumeOptions{DeadLetters: true})
	if err != nil {
		t.Fatalf("Consume dead letters after the restart: %v", err)
	}
	defer dl.Close()
	got := receive(t, dl, 5*time.Minute)
	gm := got.Message()
	t.Logf("dead letter %q %s after the broker was up, headers %v", gm.ID, time.Since(up), gm.Headers)
	if gm.ID != "poison" || gm.Headers["h"] != "v" || string(gm.Body) != "x" {
		t.Errorf("dead letter %q headers %v body %q, want the poison item", gm.ID, gm.Headers, gm.Body)
	}
	reason := gm.Headers[adapters.HeaderDeadLetterReason]
	if !strings.Contains(reason, "max attempts (2)") {
		t.Errorf("dead-letter reason %q, want one naming max attempts (2)", reason)
	}
	if gm.Headers[HeaderDeadLetterAttempts] == "" {
		t.Logf("dead-lettered by RabbitMQ (x-delivery-limit): %s", reason)
	} else {
		t.Logf("dead-lettered by the adapter (the returned item arrived over its attempts): %s", reason)
	}
	if err := got.Ack(testCtx(t)); err != nil {
		t.Errorf("Ack of the dead letter: %v", err)
	}
}
