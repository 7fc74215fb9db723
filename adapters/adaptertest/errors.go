package adaptertest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

func (s *suite) errorCases() []testCase {
	return []testCase{
		{"SettleTwiceIsLeaseLost", s.testSettleTwice},
		{"ExtendOutOfRangeIsInvalidArgument", s.testExtendRange},
		{"InvalidNamesAreInvalidArgument", s.testInvalidNames},
		{"UndeclaredQueueIsNotFound", s.testUndeclared},
		{"ClosedBrokerIsClosed", s.testClosedBroker},
		{"CancelledContextEndsReceive", s.testCancelledReceive},
	}
}

// After a delivery is settled, every further Ack, Nack, Extend and
// DeadLetter on it fails with ErrLeaseLost.
func (s *suite) testSettleTwice(t *testing.T) {
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{})
	c := s.consume(t, b, q.Name, adapters.ConsumeOptions{})
	settle := map[string]func(context.Context, adapters.Delivery) error{
		"Ack":  func(ctx context.Context, d adapters.Delivery) error { return d.Ack(ctx) },
		"Nack": func(ctx context.Context, d adapters.Delivery) error { return d.Nack(ctx, 0) },
	}
	if s.caps.DeadLetter.Available() {
		settle["DeadLetter"] = func(ctx context.Context, d adapters.Delivery) error { return d.DeadLetter(ctx, "test") }
	}
	again := map[string]func(context.Context, adapters.Delivery) error{}
	for k, v := range settle {
		again[k] = v
	}
	if s.caps.LeaseExtension.Available() {
		again["Extend"] = func(ctx context.Context, d adapters.Delivery) error { return d.Extend(ctx, s.lease) }
	}
	for _, first := range []string{"Ack", "Nack", "DeadLetter"} {
		if settle[first] == nil {
			continue
		}
		s.enqueue(t, b, q.Name, adapters.Message{ID: "settle-" + first})
		d := s.receive(t, c, "item to settle with "+first)
		if err := settle[first](s.ctx(t), d); err != nil {
			t.Fatalf("%s: %v", first, err)
		}
		for name, fn := range again {
			if err := fn(s.ctx(t), d); !errors.Is(err, adapters.ErrLeaseLost) {
				t.Errorf("%s after %s: %v, want ErrLeaseLost", name, first, err)
			}
		}
		if first == "Nack" {
			// Take the nacked item back out so it does not disturb the
			// next round.
			d := s.receive(t, c, "nacked item")
			s.ack(t, d)
		}
	}
}

// Extend with d <= 0 or d > the queue lease fails with ErrInvalidArgument
// and leaves the delivery usable.
func (s *suite) testExtendRange(t *testing.T) {
	s.skipUnless(t, "LeaseExtension", s.caps.LeaseExtension)
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{})
	c := s.consume(t, b, q.Name, adapters.ConsumeOptions{})
	s.enqueue(t, b, q.Name, adapters.Message{ID: "extend-range"})
	d := s.receive(t, c, "item to extend")
	for _, bad := range []time.Duration{0, -time.Second, q.Lease + time.Second} {
		if err := d.Extend(s.ctx(t), bad); !errors.Is(err, adapters.ErrInvalidArgument) {
			t.Errorf("Extend(%s) with a %s lease: %v, want ErrInvalidArgument", bad, q.Lease, err)
		}
	}
	s.ack(t, d)
}

// Malformed queue and topic names fail every operation with
// ErrInvalidArgument.
func (s *suite) testInvalidNames(t *testing.T) {
	b := s.open(t)
	ctx := s.ctx(t)
	for _, name := range []string{"", "has space", "-leading-dash", "dot.ted", "slash/ed", "star*", strings.Repeat("x", 65), "ünïcode"} {
		checks := map[string]error{
			"DeclareQueue": b.DeclareQueue(ctx, adapters.QueueConfig{Name: name, Lease: s.lease}),
			"Enqueue":      b.Enqueue(ctx, name, adapters.Message{Body: []byte("x")}),
			"Publish":      b.Publish(ctx, name, adapters.Message{Body: []byte("x")}),
			"DeleteQueue":  b.DeleteQueue(ctx, name),
		}
		_, checks["Consume"] = consumeErr(ctx, b, name)
		_, checks["Subscribe"] = subscribeErr(ctx, b, name)
		for op, err := range checks {
			if !errors.Is(err, adapters.ErrInvalidArgument) {
				t.Errorf("%s(%q): %v, want ErrInvalidArgument", op, name, err)
			}
		}
	}
}

func consumeErr(ctx context.Context, b adapters.Broker, q string) (bool, error) {
	c, err := b.Consume(ctx, q, adapters.ConsumeOptions{})
	if err == nil {
		c.Close()
	}
	return err == nil, err
}

func subscribeErr(ctx context.Context, b adapters.Broker, topic string) (bool, error) {
	sub, err := b.Subscribe(ctx, topic)
	if err == nil {
		sub.Close()
	}
	return err == nil, err
}

// Enqueue, Consume (of the queue and its dead-letter queue) and DeleteQueue
// on a well-formed name that was never declared fail with ErrNotFound.
func (s *suite) testUndeclared(t *testing.T) {
	b := s.open(t)
	ctx := s.ctx(t)
	name := unique("never")
	if err := b.Enqueue(ctx, name, adapters.Message{Body: []byte("x")}); !errors.Is(err, adapters.ErrNotFound) {
		t.Errorf("Enqueue on an undeclared queue: %v, want ErrNotFound", err)
	}
	if _, err := consumeErr(ctx, b, name); !errors.Is(err, adapters.ErrNotFound) {
		t.Errorf("Consume on an undeclared queue: %v, want ErrNotFound", err)
	}
	c, err := b.Consume(ctx, name, adapters.ConsumeOptions{DeadLetters: true})
	if err == nil {
		c.Close()
	}
	if !errors.Is(err, adapters.ErrNotFound) {
		t.Errorf("Consume(DeadLetters) on an undeclared queue: %v, want ErrNotFound", err)
	}
	if err := b.DeleteQueue(ctx, name); !errors.Is(err, adapters.ErrNotFound) {
		t.Errorf("DeleteQueue on an undeclared queue: %v, want ErrNotFound", err)
	}
}

// After Broker.Close every operation fails with ErrClosed, and Receive on a
// subscription or consumer opened before — including one blocked in Receive
// at the time — returns ErrClosed promptly.
func (s *suite) testClosedBroker(t *testing.T) {
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{})
	topic := unique("t")
	sub := s.subscribe(t, b, topic)
	c := s.consume(t, b, q.Name, adapters.ConsumeOptions{})
	blocked := make(chan error, 2)
	for _, recv := range []func(context.Context) error{
		func(ctx context.Context) error { _, err := sub.Receive(ctx); return err },
		func(ctx context.Context) error { _, err := c.Receive(ctx); return err },
	} {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), s.wait)
			defer cancel()
			blocked <- recv(ctx)
		}()
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for range 2 {
		if err := <-blocked; !errors.Is(err, adapters.ErrClosed) {
			t.Errorf("Receive blocked across Broker.Close returned %v, want ErrClosed", err)
		}
	}
	ctx := s.ctx(t)
	checks := map[string]error{
		"Publish":      b.Publish(ctx, topic, adapters.Message{Body: []byte("x")}),
		"Enqueue":      b.Enqueue(ctx, q.Name, adapters.Message{Body: []byte("x")}),
		"DeclareQueue": b.DeclareQueue(ctx, q),
		"DeleteQueue":  b.DeleteQueue(ctx, q.Name),
	}
	_, checks["Subscribe"] = subscribeErr(ctx, b, topic)
	_, checks["Consume"] = consumeErr(ctx, b, q.Name)
	_, checks["Subscription.Receive"] = sub.Receive(ctx)
	_, checks["Consumer.Receive"] = c.Receive(ctx)
	for op, err := range checks {
		if !errors.Is(err, adapters.ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", op, err)
		}
	}
	if err := b.Close(); err != nil && !errors.Is(err, adapters.ErrClosed) {
		t.Errorf("second Close: %v, want nil or ErrClosed", err)
	}
}

// Cancelling the context of a blocked Receive (subscription and consumer)
// returns the context's error promptly, and both stay usable.
func (s *suite) testCancelledReceive(t *testing.T) {
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{})
	topic := unique("t")
	sub := s.subscribe(t, b, topic)
	c := s.consume(t, b, q.Name, adapters.ConsumeOptions{})
	const prompt = 2 * time.Second
	for what, recv := range map[string]func(context.Context) error{
		"Subscription.Receive": func(ctx context.Context) error { _, err := sub.Receive(ctx); return err },
		"Consumer.Receive":     func(ctx context.Context) error { _, err := c.Receive(ctx); return err },
	} {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- recv(ctx) }()
		time.Sleep(50 * time.Millisecond) // let it block; it must work either way
		start := time.Now()
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("%s after cancel: %v, want context.Canceled", what, err)
			}
			t.Logf("%s returned %s after cancel", what, time.Since(start))
		case <-time.After(prompt):
			t.Errorf("%s still blocked %s after its context was cancelled", what, prompt)
			<-done
		}
	}
	s.publish(t, b, topic, adapters.Message{ID: "after-cancel"})
	if m := s.recvMsg(t, sub, "after a cancelled Receive"); m.ID != "after-cancel" {
		t.Errorf("subscription after a cancelled Receive got %q, want \"after-cancel\"", m.ID)
	}
	s.enqueue(t, b, q.Name, adapters.Message{ID: "after-cancel"})
	d := s.receive(t, c, "after a cancelled Receive")
	if d.Message().ID != "after-cancel" {
		t.Errorf("consumer after a cancelled Receive got %q, want \"after-cancel\"", d.Message().ID)
	}
	s.ack(t, d)
}
