package adaptertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// suite holds what every case needs: the harness, the broker's
// capabilities and the timings derived from the lease.
type suite struct {
	h    Harness
	caps adapters.Capabilities
	// lease is the lease the suite declares its queues with.
	lease time.Duration
	// wait bounds the wait for something that must happen (a delivery, a
	// redelivery after a lease): several leases plus slack for a loaded
	// machine and brokers with one-second granularity.
	wait time.Duration
}

type testCase struct {
	name string
	fn   func(t *testing.T)
}

// Run runs the conformance suite against the broker that h opens. Each case
// is a subtest named after what it proves; a case skips, saying why, only
// where the broker's Capabilities report the feature Unsupported or where
// h.Restart is nil. Cases that do not restart the broker run in parallel
// (bounded by go test -parallel); the restart case runs alone, after them.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.Open == nil {
		t.Fatal("adaptertest: Harness.Open is nil")
	}
	s := &suite{h: h}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	b, err := h.Open(ctx)
	cancel()
	if err != nil {
		t.Fatalf("adaptertest: Harness.Open: %v", err)
	}
	s.caps = b.Capabilities()
	if err := b.Close(); err != nil {
		t.Errorf("adaptertest: Close of the capabilities client: %v", err)
	}
	s.lease = h.Lease
	if s.lease <= 0 {
		s.lease = time.Second
	}
	if s.caps.MinLease > 0 && s.lease < s.caps.MinLease {
		s.lease = s.caps.MinLease
	}
	if s.caps.MaxLease > 0 && s.lease > s.caps.MaxLease {
		s.lease = s.caps.MaxLease
	}
	s.wait = 6*s.lease + 10*time.Second
	t.Logf("capabilities: %s", s.caps)
	t.Logf("suite lease %s, wait bound %s", s.lease, s.wait)

	groups := []struct {
		name  string
		cases []testCase
	}{
		{"Topic", s.topicCases()},
		{"Queue", s.queueCases()},
		{"DeadLetter", s.deadLetterCases()},
		{"Limits", s.limitCases()},
		{"Errors", s.errorCases()},
		{"Stats", s.statsCases()},
		{"Retain", s.retainCases()},
	}
	t.Run("Contract", func(t *testing.T) {
		for _, g := range groups {
			t.Run(g.name, func(t *testing.T) {
				t.Parallel()
				for _, c := range g.cases {
					t.Run(c.name, func(t *testing.T) {
						t.Parallel()
						c.fn(t)
					})
				}
			})
		}
	})
	t.Run("Restart", func(t *testing.T) {
		for _, c := range s.restartCases() {
			t.Run(c.name, c.fn)
		}
	})
}

// unique returns prefix followed by a random suffix, a valid queue or topic
// name that no other case or run uses.
func unique(prefix string) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return "cbt-" + prefix + "-" + hex.EncodeToString(b[:])
}

// ctx returns a context that ends with the test, bounded by several waits.
func (s *suite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*s.wait)
	t.Cleanup(cancel)
	return ctx
}

// open opens a client of the broker and closes it when the test ends.
func (s *suite) open(t *testing.T) adapters.Broker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), s.wait)
	defer cancel()
	b, err := s.h.Open(ctx)
	if err != nil {
		t.Fatalf("Harness.Open: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil && !errors.Is(err, adapters.ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

// declare declares a queue with a unique name (unless cfg.Name is set) and
// the suite lease (unless cfg.Lease is set), and deletes it when the test
// ends, through b or, if b is closed by then, through a new client.
func (s *suite) declare(t *testing.T, b adapters.Broker, cfg adapters.QueueConfig) adapters.QueueConfig {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = unique("q")
	}
	if cfg.Lease == 0 {
		cfg.Lease = s.lease
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.wait)
	defer cancel()
	if err := b.DeclareQueue(ctx, cfg); err != nil {
		t.Fatalf("DeclareQueue(%+v): %v", cfg, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.wait)
		defer cancel()
		err := b.DeleteQueue(ctx, cfg.Name)
		if errors.Is(err, adapters.ErrClosed) || errors.Is(err, adapters.ErrUnavailable) {
			var b2 adapters.Broker
			if b2, err = s.h.Open(ctx); err == nil {
				err = b2.DeleteQueue(ctx, cfg.Name)
				b2.Close()
			}
		}
		if err != nil && !errors.Is(err, adapters.ErrNotFound) {
			t.Logf("cleanup: DeleteQueue(%q): %v", cfg.Name, err)
		}
	})
	return cfg
}

func (s *suite) consume(t *testing.T, b adapters.Broker, queue string, opts adapters.ConsumeOptions) adapters.Consumer {
	t.Helper()
	c, err := b.Consume(s.ctx(t), queue, opts)
	if err != nil {
		t.Fatalf("Consume(%q, %+v): %v", queue, opts, err)
	}
	t.Cleanup(func() {
		// Close hands back what it holds and returns: it must not wait
		// on the broker for long, even after a restart (ci15: a RabbitMQ
		// consumer's Close waited 3.5 minutes on a hung basic.consume).
		start := time.Now()
		c.Close()
		if d := time.Since(start); d > s.wait {
			t.Errorf("Consumer.Close took %s, want at most %s", d.Round(time.Millisecond), s.wait)
		}
	})
	return c
}

func (s *suite) subscribe(t *testing.T, b adapters.Broker, topic string) adapters.Subscription {
	t.Helper()
	sub, err := b.Subscribe(s.ctx(t), topic)
	if err != nil {
		t.Fatalf("Subscribe(%q): %v", topic, err)
	}
	t.Cleanup(func() { sub.Close() })
	return sub
}

func (s *suite) enqueue(t *testing.T, b adapters.Broker, queue string, m adapters.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), s.wait)
	defer cancel()
	if err := b.Enqueue(ctx, queue, m); err != nil {
		t.Fatalf("Enqueue(%q, id %q): %v", queue, m.ID, err)
	}
}

func (s *suite) publish(t *testing.T, b adapters.Broker, topic string, m adapters.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), s.wait)
	defer cancel()
	if err := b.Publish(ctx, topic, m); err != nil {
		t.Fatalf("Publish(%q, id %q): %v", topic, m.ID, err)
	}
}

// tryReceive waits up to within for a delivery.
func tryReceive(c adapters.Consumer, within time.Duration) (adapters.Delivery, error) {
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	return c.Receive(ctx)
}

// receive waits up to s.wait for a delivery and fails the test without one.
func (s *suite) receive(t *testing.T, c adapters.Consumer, what string) adapters.Delivery {
	t.Helper()
	d, err := tryReceive(c, s.wait)
	if err != nil {
		t.Fatalf("Receive (%s): %v", what, err)
	}
	return d
}

// expectNone checks that c receives nothing for the duration. A delivery
// that does arrive is reported and acked.
func (s *suite) expectNone(t *testing.T, c adapters.Consumer, dur time.Duration, what string) {
	t.Helper()
	d, err := tryReceive(c, dur)
	switch {
	case err == nil:
		t.Errorf("%s: got item %q (attempt %d) within %s, want none", what, d.Message().ID, d.Attempt(), dur)
		d.Ack(context.Background())
	case !errors.Is(err, context.DeadlineExceeded):
		t.Errorf("%s: Receive: %v, want context.DeadlineExceeded", what, err)
	}
}

// recvMsg receives the next topic message within s.wait. ErrGap is logged
// and skipped (a gap in a case that does not cut the connection fails later
// as a missing message).
func (s *suite) recvMsg(t *testing.T, sub adapters.Subscription, what string) adapters.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), s.wait)
	defer cancel()
	for {
		m, err := sub.Receive(ctx)
		if errors.Is(err, adapters.ErrGap) {
			t.Logf("Receive (%s): %v (skipped)", what, err)
			continue
		}
		if err != nil {
			t.Fatalf("Receive (%s): %v", what, err)
		}
		return m
	}
}

func (s *suite) ack(t *testing.T, d adapters.Delivery) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), s.wait)
	defer cancel()
	if err := d.Ack(ctx); err != nil {
		t.Fatalf("Ack(%q, attempt %d): %v", d.Message().ID, d.Attempt(), err)
	}
}

// appHeaders returns h without the adapter's reserved headers.
func appHeaders(h map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range h {
		if !strings.HasPrefix(strings.ToLower(k), adapters.ReservedHeaderPrefix) {
			out[k] = v
		}
	}
	return out
}

// diffMessage describes how got differs from want (ID, key, application
// headers and body), or returns "".
func diffMessage(got, want adapters.Message) string {
	var d []string
	if got.ID != want.ID {
		d = append(d, fmt.Sprintf("ID %q, want %q", got.ID, want.ID))
	}
	if got.Key != want.Key {
		d = append(d, fmt.Sprintf("Key %q, want %q", got.Key, want.Key))
	}
	gh, wh := appHeaders(got.Headers), appHeaders(want.Headers)
	if !maps.Equal(gh, wh) {
		d = append(d, fmt.Sprintf("Headers %v, want %v", gh, wh))
	}
	if !bytes.Equal(got.Body, want.Body) {
		d = append(d, fmt.Sprintf("Body %s, want %s", short(got.Body), short(want.Body)))
	}
	return strings.Join(d, "; ")
}

func short(b []byte) string {
	if len(b) > 24 {
		return fmt.Sprintf("%q… (%d bytes)", b[:24], len(b))
	}
	return fmt.Sprintf("%q", b)
}

// binaryBody is every byte value once: not valid UTF-8, contains NUL.
func binaryBody() []byte {
	b := make([]byte, 256)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

// richMessage has an ID, a key, several headers and a binary body.
func richMessage() adapters.Message {
	return adapters.Message{
		ID:  unique("id"),
		Key: "key-é-1",
		Headers: map[string]string{
			"trace-id": "0af7651916cd43dd8448eb211c80319c",
			"Tenant":   "Acme Corp",
			"x.y_z-1":  "héllo wörld ✓",
		},
		Body: binaryBody(),
	}
}

// queueLease returns want capped to the broker's MaxLease and at least the
// suite lease.
func (s *suite) queueLease(want time.Duration) time.Duration {
	if s.caps.MaxLease > 0 && want > s.caps.MaxLease {
		want = s.caps.MaxLease
	}
	return max(want, s.lease)
}

func (s *suite) skipUnless(t *testing.T, what string, sup adapters.Support) {
	t.Helper()
	if !sup.Available() {
		t.Skipf("%s: Capabilities.%s is Unsupported", s.caps.Name, what)
	}
}

func sortedKeys(m map[string]int) []string {
	return slices.Sorted(maps.Keys(m))
}
