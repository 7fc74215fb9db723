package rabbitmq

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// closeConnection makes the broker close b's current connection, as if it
// had died, with rabbitmqctl close_connection. It skips the test where
// rabbitmqctl cannot see the connection (no rabbitmqctl, remote broker).
func closeConnection(t *testing.T, b *Broker) {
	t.Helper()
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		t.Skip("rabbitmqctl not found: cannot make the broker close a connection")
	}
	b.mu.Lock()
	conn := b.conn
	b.mu.Unlock()
	if conn == nil {
		t.Fatal("broker has no connection")
	}
	local := conn.LocalAddr().String()
	out, err := exec.Command("rabbitmqctl", "-q", "list_connections", "pid", "name").CombinedOutput()
	if err != nil {
		t.Skipf("rabbitmqctl list_connections: %v: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		pid, name, ok := strings.Cut(strings.TrimSpace(line), "\t")
		if ok && strings.HasPrefix(name, local+" ->") {
			if out, err := exec.Command("rabbitmqctl", "close_connection", pid, "clusterbus test").CombinedOutput(); err != nil {
				t.Fatalf("rabbitmqctl close_connection: %v: %s", err, out)
			}
			t.Logf("broker closed connection %s", name)
			return
		}
	}
	t.Skipf("connection from %s not listed by rabbitmqctl (is the broker at %s local?)", local, testURL())
}

// When the broker drops the connection, the Broker reconnects by itself:
// the held delivery's lease is lost at once, the item comes back at once
// (long before its one-minute lease) with its attempt counted, the consumer
// resumes without reopening, and the subscription reports a gap and then
// receives again.
func TestDroppedConnectionReconnectsConsumerAndSubscription(t *testing.T) {
	requireBroker(t)
	b := openTest(t, testURL())
	q := declareTest(t, b, adapters.QueueConfig{Lease: time.Minute})
	if err := b.Enqueue(testCtx(t), q.Name, adapters.Message{ID: "held"}); err != nil {
		t.Fatal(err)
	}
	c, err := b.Consume(testCtx(t), q.Name, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	topic := uniqueName("t")
	sub, err := b.Subscribe(testCtx(t), topic)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	d := receive(t, c, 30*time.Second)

	closeConnection(t, b)
	dropped := time.Now() // rabbitmqctl returns once the connection is closed
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := d.Extend(testCtx(t), time.Second)
		if errors.Is(err, adapters.ErrLeaseLost) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Extend 30s after the connection dropped: %v, want ErrLeaseLost", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := d.Ack(testCtx(t)); !errors.Is(err, adapters.ErrLeaseLost) {
		t.Errorf("Ack after the connection dropped: %v, want ErrLeaseLost", err)
	}
	d2 := receive(t, c, 30*time.Second)
	t.Logf("item back %s after the drop, attempt %d", time.Since(dropped), d2.Attempt())
	if d2.Message().ID != "held" || d2.Attempt() != 2 {
		t.Errorf("redelivery %q attempt %d, want \"held\" attempt 2", d2.Message().ID, d2.Attempt())
	}
	if err := d2.Ack(testCtx(t)); err != nil {
		t.Fatalf("Ack of the redelivery: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := sub.Receive(ctx); !errors.Is(err, adapters.ErrGap) {
		t.Fatalf("first subscription Receive after the drop: %v, want ErrGap", err)
	}
	// The resubscribe may still be under way: publish until one arrives.
	got := make(chan error, 1)
	go func() {
		m, err := sub.Receive(ctx)
		if err == nil && m.ID != "after" {
			err = errors.New("got " + m.ID)
		}
		got <- err
	}()
	for {
		if err := b.Publish(ctx, topic, adapters.Message{ID: "after"}); err != nil {
			t.Fatalf("Publish after reconnect: %v", err)
		}
		select {
		case err := <-got:
			if err != nil {
				t.Fatalf("subscription after reconnect: %v", err)
			}
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}
