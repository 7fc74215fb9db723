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
		{"NackDelayOutOfRangeIsInvalidArgument", s.testNackRange},
		{"ConsumeOptionsOutOfRangeAreInvalidArgument", s.testConsumeOptionsRange},
		{"InvalidQueueConfigIsInvalidArgument", s.testInvalidQueueConfig},
		{"InvalidMessagesAreInvalidArgument", s.testInvalidMessages},
		{"UnsupportedFeaturesAreRefused", s.testUnsupportedRefused},
		{"CapabilitiesAreConsistent", s.testCapabilities},
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

// Consume refuses a negative Prefetch or MaxPrefetch, and a MaxPrefetch
// below Prefetch, on every adapter (whether or not it resizes what it
// fetches ahead), naming the option; MaxPrefetch above Prefetch is accepted
// everywhere.
func (s *suite) testConsumeOptionsRange(t *testing.T) {
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{})
	for _, bad := range []adapters.ConsumeOptions{
		{Prefetch: -1},
		{MaxPrefetch: -1},
		{Prefetch: 4, MaxPrefetch: 2},
	} {
		c, err := b.Consume(s.ctx(t), q.Name, bad)
		if err == nil {
			c.Close()
		}
		if !errors.Is(err, adapters.ErrInvalidArgument) {
			t.Errorf("Consume with %+v: %v, want ErrInvalidArgument", bad, err)
			continue
		}
		if !strings.Contains(err.Error(), "ConsumeOptions.") {
			t.Errorf("Consume with %+v: %q does not name the option", bad, err)
		}
	}
	c, err := b.Consume(s.ctx(t), q.Name, adapters.ConsumeOptions{Prefetch: 2, MaxPrefetch: 4})
	if err != nil {
		t.Fatalf("Consume with Prefetch 2, MaxPrefetch 4: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
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

// Nack with a negative delay, or one above Capabilities.MaxDelay, fails with
// ErrInvalidArgument and leaves the delivery usable.
func (s *suite) testNackRange(t *testing.T) {
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{})
	c := s.consume(t, b, q.Name, adapters.ConsumeOptions{})
	s.enqueue(t, b, q.Name, adapters.Message{ID: "nack-range"})
	d := s.receive(t, c, "item to nack")
	bad := []time.Duration{-time.Second}
	if s.caps.MaxDelay > 0 && s.caps.DelayedNack.Available() {
		bad = append(bad, s.caps.MaxDelay+time.Second)
	}
	for _, delay := range bad {
		if err := d.Nack(s.ctx(t), delay); !errors.Is(err, adapters.ErrInvalidArgument) {
			t.Errorf("Nack(%s): %v, want ErrInvalidArgument", delay, err)
		}
	}
	s.ack(t, d)
}

// DeclareQueue with a lease outside the broker's range, a negative lease or
// MaxAttempts, or a negative dedupe window fails with ErrInvalidArgument.
func (s *suite) testInvalidQueueConfig(t *testing.T) {
	b := s.open(t)
	bad := map[string]adapters.QueueConfig{
		"negative Lease":        {Lease: -time.Second},
		"negative MaxAttempts":  {MaxAttempts: -1},
		"negative DedupeWindow": {DedupeWindow: -time.Second},
	}
	if s.caps.MaxLease > 0 {
		bad["Lease above MaxLease"] = adapters.QueueConfig{Lease: s.caps.MaxLease + time.Second}
	}
	if s.caps.MinLease > time.Millisecond {
		bad["Lease below MinLease"] = adapters.QueueConfig{Lease: s.caps.MinLease / 2}
	}
	for what, cfg := range bad {
		cfg.Name = unique("bad")
		err := b.DeclareQueue(s.ctx(t), cfg)
		if err == nil {
			b.DeleteQueue(s.ctx(t), cfg.Name)
		}
		if !errors.Is(err, adapters.ErrInvalidArgument) {
			t.Errorf("DeclareQueue with %s (%+v): %v, want ErrInvalidArgument", what, cfg, err)
		}
	}
}

// Messages with a malformed header name, a reserved (cb-) header, a header
// value with a newline, or an over-long ID fail Enqueue and Publish with
// ErrInvalidArgument.
func (s *suite) testInvalidMessages(t *testing.T) {
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{})
	topic := unique("t")
	bad := map[string]adapters.Message{
		"header name with a space": {Headers: map[string]string{"bad name": "v"}},
		"reserved header":          {Headers: map[string]string{adapters.ReservedHeaderPrefix + "x": "v"}},
		"header value with LF":     {Headers: map[string]string{"h": "a\nb"}},
		"ID of 129 bytes":          {ID: strings.Repeat("i", 129)},
	}
	for what, m := range bad {
		if err := b.Enqueue(s.ctx(t), q.Name, m); !errors.Is(err, adapters.ErrInvalidArgument) {
			t.Errorf("Enqueue of a message with %s: %v, want ErrInvalidArgument", what, err)
		}
		if err := b.Publish(s.ctx(t), topic, m); !errors.Is(err, adapters.ErrInvalidArgument) {
			t.Errorf("Publish of a message with %s: %v, want ErrInvalidArgument", what, err)
		}
	}
}

// A feature that Capabilities reports Unsupported is refused with
// ErrUnsupported, never silently ignored.
func (s *suite) testUnsupportedRefused(t *testing.T) {
	c := s.caps
	if c.Ordering.Available() && c.Dedupe.Available() && c.DelayedNack.Available() &&
		c.LeaseExtension.Available() && c.DeadLetter.Available() {
		t.Skipf("%s: every optional feature is available; nothing to refuse", c.Name)
	}
	b := s.open(t)
	for what, cfg := range map[string]adapters.QueueConfig{
		"Ordered": {Ordered: !c.Ordering.Available()},
		"Dedupe":  {Dedupe: !c.Dedupe.Available()},
	} {
		if !cfg.Ordered && !cfg.Dedupe {
			continue
		}
		cfg.Name, cfg.Lease = unique("unsup"), s.lease
		err := b.DeclareQueue(s.ctx(t), cfg)
		if err == nil {
			b.DeleteQueue(s.ctx(t), cfg.Name)
		}
		if !errors.Is(err, adapters.ErrUnsupported) {
			t.Errorf("DeclareQueue with %s on a broker without it: %v, want ErrUnsupported", what, err)
		}
	}
	if c.DelayedNack.Available() && c.LeaseExtension.Available() && c.DeadLetter.Available() {
		return
	}
	q := s.declare(t, b, adapters.QueueConfig{})
	con := s.consume(t, b, q.Name, adapters.ConsumeOptions{})
	s.enqueue(t, b, q.Name, adapters.Message{ID: "unsupported"})
	d := s.receive(t, con, "item for unsupported settlements")
	if !c.LeaseExtension.Available() {
		if err := d.Extend(s.ctx(t), s.lease); !errors.Is(err, adapters.ErrUnsupported) {
			t.Errorf("Extend without LeaseExtension: %v, want ErrUnsupported", err)
		}
	}
	if !c.DelayedNack.Available() {
		if err := d.Nack(s.ctx(t), s.lease); !errors.Is(err, adapters.ErrUnsupported) {
			t.Errorf("Nack(%s) without DelayedNack: %v, want ErrUnsupported", s.lease, err)
		}
	}
	if !c.DeadLetter.Available() {
		if err := d.DeadLetter(s.ctx(t), "x"); !errors.Is(err, adapters.ErrUnsupported) {
			t.Errorf("DeadLetter without DeadLetter support: %v, want ErrUnsupported", err)
		}
	}
	s.ack(t, d)
}

// Capabilities are self-consistent: a name, a positive size limit or none,
// MinLease <= MaxLease, and the same value from every client.
func (s *suite) testCapabilities(t *testing.T) {
	c := s.caps
	if c.Name == "" {
		t.Error("Capabilities.Name is empty")
	}
	if c.MaxMessageSize < 0 || c.MaxHeaders < 0 || c.MinLease < 0 || c.MaxLease < 0 || c.MaxDelay < 0 {
		t.Errorf("negative limit in %s", c)
	}
	if c.MaxLease > 0 && c.MinLease > c.MaxLease {
		t.Errorf("MinLease %s above MaxLease %s", c.MinLease, c.MaxLease)
	}
	if got := s.open(t).Capabilities(); got != c {
		t.Errorf("second client reports %s, first %s", got, c)
	}
}
