package rabbitmq

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

func uniqueName(prefix string) string {
	var b [5]byte
	rand.Read(b[:])
	return "cbt-" + prefix + "-" + hex.EncodeToString(b[:])
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func openTest(t *testing.T, rawURL string) *Broker {
	t.Helper()
	b, err := Open(testCtx(t), rawURL, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func declareTest(t *testing.T, b *Broker, cfg adapters.QueueConfig) adapters.QueueConfig {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = uniqueName("q")
	}
	if err := b.DeclareQueue(testCtx(t), cfg); err != nil {
		t.Fatalf("DeclareQueue: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		b2, err := Open(ctx, testURL(), Options{Logger: testLogger(t)})
		if err == nil {
			b2.DeleteQueue(ctx, cfg.Name)
			b2.Close()
		}
	})
	return cfg
}

func receive(t *testing.T, c adapters.Consumer, within time.Duration) adapters.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	d, err := c.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	return d
}

func TestParseURLRejectsUnknownParameterNamingAccepted(t *testing.T) {
	_, err := parseURL("amqp://guest:guest@localhost:5672/?prefetch=10", &Options{})
	if !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Fatalf("err = %v, want ErrInvalidArgument", err)
	}
	for _, want := range []string{`"prefetch"`, "heartbeat", "consumer_timeout", "cacertfile"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestParseURLReadsAdapterParametersAndKeepsSDKOnes(t *testing.T) {
	var o Options
	u, err := parseURL("amqps://u:p@h:5671/v?consumer_timeout=2m&max_backoff=1s&heartbeat=5", &o)
	if err != nil {
		t.Fatal(err)
	}
	if o.ConsumerTimeout != 2*time.Minute || o.MaxBackoff != time.Second {
		t.Errorf("options = %+v, want consumer_timeout 2m, max_backoff 1s", o)
	}
	if strings.Contains(u, "consumer_timeout") || !strings.Contains(u, "heartbeat=5") {
		t.Errorf("dial URL %q: want heartbeat kept and consumer_timeout removed", u)
	}
}

func TestParseURLRejectsBadSchemeHostAndDuration(t *testing.T) {
	for _, raw := range []string{
		"http://localhost:5672/",
		"amqp:///vhost",
		"amqp://localhost/?consumer_timeout=soon",
		"amqp://localhost/?heartbeat=99999999",
		"amqp://a b@localhost/",
	} {
		if _, err := parseURL(raw, &Options{}); !errors.Is(err, adapters.ErrInvalidArgument) {
			t.Errorf("parseURL(%q) = %v, want ErrInvalidArgument", raw, err)
		} else {
			t.Logf("%s: %v", raw, err)
		}
	}
}

func TestOpenRegistersAmqpAndAmqps(t *testing.T) {
	s := strings.Join(adapters.Schemes(), ",")
	if !strings.Contains(s, "amqp") || !strings.Contains(s, "amqps") {
		t.Fatalf("schemes %s: want amqp and amqps", s)
	}
}

func TestOpenUnreachableIsUnavailable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := adapters.Open(ctx, "amqp://guest:secret@127.0.0.1:1/")
	if !errors.Is(err, adapters.ErrUnavailable) || !adapters.IsRetryable(err) {
		t.Fatalf("err = %v, want retryable ErrUnavailable", err)
	}
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("error leaks the password: %v", err)
	}
}

func TestRedeclareWithOtherMaxAttemptsNamesArgument(t *testing.T) {
	requireBroker(t)
	b := openTest(t, testURL())
	q := declareTest(t, b, adapters.QueueConfig{MaxAttempts: 3, Lease: time.Second})
	err := b.DeclareQueue(testCtx(t), adapters.QueueConfig{Name: q.Name, MaxAttempts: 4, Lease: time.Second})
	if !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Fatalf("redeclare with MaxAttempts 4: %v, want ErrInvalidArgument", err)
	}
	t.Log(err)
	for _, want := range []string{"x-delivery-limit", "MaxAttempts", "PRECONDITION_FAILED"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %s", want)
		}
	}
	err = b.DeclareQueue(testCtx(t), adapters.QueueConfig{Name: q.Name, MaxAttempts: 3, Lease: 2 * time.Second})
	if !errors.Is(err, adapters.ErrInvalidArgument) || !strings.Contains(err.Error(), "Lease") {
		t.Fatalf("redeclare with Lease 2s: %v, want ErrInvalidArgument naming Lease", err)
	}
	t.Log(err)
	// The same config still declares, and the broker is still usable.
	if err := b.DeclareQueue(testCtx(t), q); err != nil {
		t.Fatalf("redeclare with the same config: %v", err)
	}
}

func TestOtherClientConsumesWithDeclaredLease(t *testing.T) {
	requireBroker(t)
	a := openTest(t, testURL())
	q := declareTest(t, a, adapters.QueueConfig{Lease: 700 * time.Millisecond, MaxAttempts: 7})
	if err := a.Enqueue(testCtx(t), q.Name, adapters.Message{ID: "one"}); err != nil {
		t.Fatal(err)
	}
	b := openTest(t, testURL())
	c, err := b.Consume(testCtx(t), q.Name, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	d := receive(t, c, 30*time.Second)
	if left := d.LeaseDeadline().Sub(start); left > 700*time.Millisecond+time.Since(start) || left < 300*time.Millisecond {
		t.Errorf("lease deadline %s after receive, want about 700ms (the declared lease)", left)
	}
	if got := c.(*consumer).cfg.MaxAttempts; got != 7 {
		t.Errorf("consumer MaxAttempts = %d, want 7 from the declaring client", got)
	}
	d.Ack(testCtx(t))
}

// Nack with a delay goes through a retry queue; the attempt count keeps
// increasing across it, and the last attempt's nack dead-letters with a
// reason.
func TestNackDelayCarriesAttemptsThenDeadLetters(t *testing.T) {
	requireBroker(t)
	b := openTest(t, testURL())
	q := declareTest(t, b, adapters.QueueConfig{Lease: 5 * time.Second, MaxAttempts: 3})
	if err := b.Enqueue(testCtx(t), q.Name, adapters.Message{ID: "n", Headers: map[string]string{"h": "v"}}); err != nil {
		t.Fatal(err)
	}
	c, err := b.Consume(testCtx(t), q.Name, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var nacked time.Time
	for want := 1; want <= 3; want++ {
		d := receive(t, c, 30*time.Second)
		if d.Attempt() != want || d.Message().Headers["h"] != "v" {
			t.Fatalf("delivery %d: attempt %d headers %v", want, d.Attempt(), d.Message().Headers)
		}
		if want > 1 {
			if since := time.Since(nacked); since < 150*time.Millisecond {
				t.Errorf("attempt %d arrived %s after Nack(150ms): early", want, since)
			} else {
				t.Logf("attempt %d arrived %s after Nack(150ms) was called", want, since)
			}
		}
		nacked = time.Now()
		if err := d.Nack(testCtx(t), 150*time.Millisecond); err != nil {
			t.Fatalf("Nack: %v", err)
		}
	}
	dl, err := b.Consume(testCtx(t), q.Name, adapters.ConsumeOptions{DeadLetters: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dl.Close()
	d := receive(t, dl, 30*time.Second)
	if d.Message().ID != "n" || !strings.Contains(d.Message().Headers[adapters.HeaderDeadLetterReason], "max attempts") {
		t.Fatalf("dead letter %q headers %v: want id n with a max-attempts reason", d.Message().ID, d.Message().Headers)
	}
	if d.Message().Headers[HeaderDeadLetterAttempts] != "3" {
		t.Errorf("dead letter attempts header %q, want 3", d.Message().Headers[HeaderDeadLetterAttempts])
	}
	d.Ack(testCtx(t))
}

func TestSettleAfterLeaseExpiryIsLeaseLost(t *testing.T) {
	requireBroker(t)
	b := openTest(t, testURL())
	q := declareTest(t, b, adapters.QueueConfig{Lease: 300 * time.Millisecond})
	b.Enqueue(testCtx(t), q.Name, adapters.Message{ID: "x"})
	c, err := b.Consume(testCtx(t), q.Name, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d := receive(t, c, 30*time.Second)
	d2 := receive(t, c, 30*time.Second) // comes back after the lease
	if d2.Attempt() != d.Attempt()+1 {
		t.Errorf("redelivery attempt %d, want %d", d2.Attempt(), d.Attempt()+1)
	}
	for name, f := range map[string]func(context.Context) error{
		"Ack":        d.Ack,
		"Nack":       func(ctx context.Context) error { return d.Nack(ctx, 0) },
		"Extend":     func(ctx context.Context) error { return d.Extend(ctx, 100*time.Millisecond) },
		"DeadLetter": func(ctx context.Context) error { return d.DeadLetter(ctx, "late") },
	} {
		if err := f(testCtx(t)); !errors.Is(err, adapters.ErrLeaseLost) {
			t.Errorf("%s after expiry: %v, want ErrLeaseLost", name, err)
		}
	}
	if err := d2.Ack(testCtx(t)); err != nil {
		t.Errorf("Ack of the redelivery: %v", err)
	}
}

func TestExtendPastConsumerTimeoutIsUnsupported(t *testing.T) {
	requireBroker(t)
	b := openTest(t, testURL()+"?consumer_timeout=1s")
	if b.Capabilities().MaxLease != time.Second {
		t.Fatalf("MaxLease %s, want consumer_timeout 1s", b.Capabilities().MaxLease)
	}
	q := declareTest(t, b, adapters.QueueConfig{Lease: time.Second})
	b.Enqueue(testCtx(t), q.Name, adapters.Message{ID: "x"})
	c, err := b.Consume(testCtx(t), q.Name, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d := receive(t, c, 30*time.Second)
	if err := d.Extend(testCtx(t), 500*time.Millisecond); err != nil {
		t.Fatalf("Extend within consumer_timeout: %v", err)
	}
	time.Sleep(600 * time.Millisecond) // let the delivery age past half the timeout
	err = d.Extend(testCtx(t), 900*time.Millisecond)
	if !errors.Is(err, adapters.ErrUnsupported) || !strings.Contains(err.Error(), "consumer_timeout") {
		t.Fatalf("Extend past consumer_timeout: %v, want ErrUnsupported naming consumer_timeout", err)
	}
	t.Log(err)
	d.Ack(testCtx(t))
}

// Closing a consumer's broker connection returns its unsettled item at
// once (RabbitMQ requeues what a closed channel held) with the attempt
// counted, not after the lease.
func TestClosedBrokerReturnsItemAtOnce(t *testing.T) {
	requireBroker(t)
	a := openTest(t, testURL())
	q := declareTest(t, a, adapters.QueueConfig{Lease: time.Minute})
	a.Enqueue(testCtx(t), q.Name, adapters.Message{ID: "x"})
	b, err := Open(testCtx(t), testURL(), Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := b.Consume(testCtx(t), q.Name, adapters.ConsumeOptions{})
	d := receive(t, c, 30*time.Second)
	b.Close()
	if err := d.Ack(testCtx(t)); !errors.Is(err, adapters.ErrLeaseLost) {
		t.Errorf("Ack after Close: %v, want ErrLeaseLost", err)
	}
	c2, err := a.Consume(testCtx(t), q.Name, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	start := time.Now()
	d2 := receive(t, c2, 20*time.Second) // well inside the 1-minute lease
	if d2.Attempt() != 2 {
		t.Errorf("attempt %d, want 2", d2.Attempt())
	}
	t.Logf("returned %s after Close, attempt %d", time.Since(start), d2.Attempt())
	d2.Ack(testCtx(t))
}

// A batch to a queue that was never declared comes back as returns (one per
// message) and fails with ErrNotFound, without blocking the client on the
// returns; the channel stays usable for the next batch.
func TestEnqueueBatchUndeclaredIsNotFound(t *testing.T) {
	requireBroker(t)
	b := openTest(t, testURL())
	ms := make([]adapters.Message, 20)
	for i := range ms {
		ms[i] = adapters.Message{ID: fmt.Sprint(i), Body: []byte("x")}
	}
	for range 2 {
		if err := b.EnqueueBatch(testCtx(t), uniqueName("never"), ms); !errors.Is(err, adapters.ErrNotFound) {
			t.Fatalf("EnqueueBatch to an undeclared queue: %v, want ErrNotFound", err)
		}
	}
	q := declareTest(t, b, adapters.QueueConfig{})
	if err := b.EnqueueBatch(testCtx(t), q.Name, ms); err != nil {
		t.Fatalf("EnqueueBatch after the returns: %v", err)
	}
}
