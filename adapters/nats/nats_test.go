package nats_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/nats"
	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
)

func open(t *testing.T, srv *testServer) *nats.Broker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := nats.Open(ctx, nats.Options{Servers: []string{srv.URL()}, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func uniqueName(t *testing.T) string {
	return fmt.Sprintf("t-%d", time.Now().UnixNano())
}

func TestParseURLAcceptsHostsCredentialsAndOptions(t *testing.T) {
	u, err := url.Parse("nats://alice:s3cret@a.example:4222,b.example:4223?prefix=acme.bus&replicas=3&name=node1&connect_timeout=2s")
	if err != nil {
		t.Fatal(err)
	}
	got, err := nats.ParseURL(u)
	if err != nil {
		t.Fatalf("ParseURL: %v", err)
	}
	want := nats.Options{
		Servers:        []string{"nats://a.example:4222", "nats://b.example:4223"},
		User:           "alice",
		Password:       "s3cret",
		Prefix:         "acme.bus",
		Replicas:       3,
		Name:           "node1",
		ConnectTimeout: 2 * time.Second,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseURL = %+v, want %+v", got, want)
	}
	u, _ = url.Parse("nats://localhost")
	if got, err := nats.ParseURL(u); err != nil || got.Servers[0] != "nats://localhost:4222" {
		t.Errorf("ParseURL(nats://localhost) = %v, %v; want port 4222", got.Servers, err)
	}
}

func TestParseURLRejectsBadInputNamingWhatIsAccepted(t *testing.T) {
	cases := map[string]string{
		"nats://h:4222?bogus=1":           "accepted: prefix, replicas, name, connect_timeout",
		"nats://h:4222?replicas=0":        "want a number from 1 to 5",
		"nats://h:4222?replicas=x":        "want a number from 1 to 5",
		"nats://h:4222?prefix=a..b":       "prefix",
		"nats://h:4222?prefix=a*":         "prefix",
		"nats://h:4222?connect_timeout=":  "", // empty is the default
		"nats://h:4222?connect_timeout=x": "positive duration",
		"nats://h:4222/path":              "no path",
		"nats://":                         "no host",
		"nats://,h:4222":                  "empty host",
	}
	for raw, want := range cases {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("url.Parse(%q): %v", raw, err)
		}
		_, err = nats.ParseURL(u)
		if want == "" {
			if err != nil {
				t.Errorf("ParseURL(%q): %v, want nil", raw, err)
			}
			continue
		}
		if !errors.Is(err, adapters.ErrInvalidArgument) || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseURL(%q): %v, want ErrInvalidArgument mentioning %q", raw, err, want)
		}
	}
}

func TestOpenByURLRegistersNatsScheme(t *testing.T) {
	srv := startServer(t, false)
	b, err := adapters.Open(testCtx(t), srv.URL()+"?prefix=viaurl")
	if err != nil {
		t.Fatalf("adapters.Open: %v", err)
	}
	defer b.Close()
	if got := b.(*nats.Broker).Options().Prefix; got != "viaurl" {
		t.Errorf("prefix %q, want viaurl", got)
	}
	if c := b.Capabilities(); c.Name != "nats" || c.MaxMessageSize <= 0 {
		t.Errorf("capabilities %v", c)
	}
}

func TestOpenUnreachableIsUnavailable(t *testing.T) {
	ctx := testCtx(t)
	_, err := nats.Open(ctx, nats.Options{Servers: []string{"nats://127.0.0.1:1"}, ConnectTimeout: time.Second})
	if !errors.Is(err, adapters.ErrUnavailable) || !adapters.IsRetryable(err) {
		t.Fatalf("Open of a closed port: %v, want retryable ErrUnavailable", err)
	}
	t.Logf("error: %v", err)
}

// Deleting the only queue and declaring another right away works: the
// keepalive stream keeps the account's store directory.
func TestDeclareRightAfterLastQueueDeleted(t *testing.T) {
	srv := startServer(t, false)
	b := open(t, srv)
	ctx := testCtx(t)
	for i := range 5 {
		q := fmt.Sprintf("%s-%d", uniqueName(t), i)
		if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: q}); err != nil {
			t.Fatalf("round %d: DeclareQueue: %v", i, err)
		}
		if err := b.Enqueue(ctx, q, adapters.Message{Body: []byte("x")}); err != nil {
			t.Fatalf("round %d: Enqueue: %v", i, err)
		}
		if err := b.DeleteQueue(ctx, q); err != nil {
			t.Fatalf("round %d: DeleteQueue: %v", i, err)
		}
		if err := b.Enqueue(ctx, q, adapters.Message{Body: []byte("x")}); !errors.Is(err, adapters.ErrNotFound) {
			t.Fatalf("round %d: Enqueue after DeleteQueue: %v, want ErrNotFound", i, err)
		}
	}
}

// A process that dies holding the last attempt (its connection drops, so
// its expiry timer cannot move the item) does not lose the item: the server
// redelivers it past MaxAttempts and the next consumer dead-letters it.
func TestLastAttemptHolderDiesItemStillDeadLettered(t *testing.T) {
	srv := startServer(t, false)
	b1, b2 := open(t, srv), open(t, srv)
	ctx := testCtx(t)
	q := uniqueName(t)
	if err := b1.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: time.Second, MaxAttempts: 1}); err != nil {
		t.Fatal(err)
	}
	if err := b1.Enqueue(ctx, q, adapters.Message{ID: "doomed", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	c1, err := b1.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := c1.Receive(ctx)
	if err != nil || d.Attempt() != 1 {
		t.Fatalf("Receive: %v (attempt %v)", err, d)
	}
	b1.Conn().Close() // the process "dies": no release, no timer move

	c2, err := b2.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	rctx, cancel := context.WithTimeout(ctx, 4*time.Second)
	defer cancel()
	if d, err := c2.Receive(rctx); err == nil {
		t.Fatalf("item past MaxAttempts delivered again (attempt %d), want it dead-lettered", d.Attempt())
	}
	dlq, err := b2.Consume(ctx, q, adapters.ConsumeOptions{DeadLetters: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dlq.Close()
	dd, err := dlq.Receive(ctx)
	if err != nil {
		t.Fatalf("dead-letter Receive: %v", err)
	}
	reason := dd.Message().Headers[adapters.HeaderDeadLetterReason]
	if dd.Message().ID != "doomed" || !strings.Contains(reason, "max attempts (1)") {
		t.Errorf("dead letter %q with reason %q", dd.Message().ID, reason)
	}
	t.Logf("reason: %s", reason)
	if err := dd.Ack(ctx); err != nil {
		t.Fatal(err)
	}
}

// Header values with leading blanks or the escape byte, and user headers
// that look like NATS's own, come through unchanged and do not change what
// the server does (a user "Nats-Msg-Id" does not deduplicate).
func TestHeadersThatNATSWouldAlterRoundTrip(t *testing.T) {
	srv := startServer(t, false)
	b := open(t, srv)
	ctx := testCtx(t)
	q := uniqueName(t)
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: q}); err != nil {
		t.Fatal(err)
	}
	h := map[string]string{
		"lead":                 "  two blanks",
		"tab":                  "\tx",
		"tilde":                "~home",
		"Nats-Msg-Id":          "same",
		"Nats-Expected-Stream": "elsewhere",
		"empty":                "",
	}
	for i := range 2 {
		if err := b.Enqueue(ctx, q, adapters.Message{ID: fmt.Sprint(i), Headers: h}); err != nil {
			t.Fatalf("Enqueue %d: %v", i, err)
		}
	}
	c, err := b.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 2 {
		d, err := c.Receive(ctx)
		if err != nil {
			t.Fatalf("Receive %d: %v", i, err)
		}
		if !reflect.DeepEqual(d.Message().Headers, h) {
			t.Errorf("headers %q, want %q", d.Message().Headers, h)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// A subscription reports a gap when the server restarts, then receives
// again.
func TestSubscriptionReportsGapAcrossRestart(t *testing.T) {
	srv := startServer(t, false)
	b := open(t, srv)
	ctx := testCtx(t)
	topic := uniqueName(t)
	sub, err := b.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := sub.Receive(rctx); !errors.Is(err, adapters.ErrGap) {
		t.Fatalf("first Receive after restart: %v, want ErrGap", err)
	}
	got := make(chan error, 1)
	go func() {
		for {
			m, err := sub.Receive(rctx)
			if errors.Is(err, adapters.ErrGap) {
				continue
			}
			if err == nil && m.ID != "after" {
				err = fmt.Errorf("got %q", m.ID)
			}
			got <- err
			return
		}
	}()
	for {
		_ = b.Publish(ctx, topic, adapters.Message{ID: "after"})
		select {
		case err := <-got:
			if err != nil {
				t.Fatal(err)
			}
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// With Sync (fsync always), an item whose Enqueue returned is there after a
// restart.
func TestEnqueuedItemSurvivesRestartWithSync(t *testing.T) {
	srv := startServer(t, true)
	b := open(t, srv)
	ctx := testCtx(t)
	q := uniqueName(t)
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: q}); err != nil {
		t.Fatal(err)
	}
	if err := b.Enqueue(ctx, q, adapters.Message{ID: "kept", Body: []byte("durable")}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := b.Consume(ctx, q, adapters.ConsumeOptions{})
	for err != nil && adapters.IsRetryable(err) {
		time.Sleep(100 * time.Millisecond)
		c, err = b.Consume(ctx, q, adapters.ConsumeOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, err := c.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.Message().ID != "kept" || string(d.Message().Body) != "durable" {
		t.Errorf("got %q %q", d.Message().ID, d.Message().Body)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
}

// Enqueue while the server is down fails with a retryable error once its
// context ends, not with a bare timeout the caller did not set.
func TestEnqueueWhileServerDownIsRetryable(t *testing.T) {
	srv := startServer(t, false)
	b := open(t, srv)
	ctx := testCtx(t)
	q := uniqueName(t)
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: q}); err != nil {
		t.Fatal(err)
	}
	srv.mu.Lock()
	srv.srv.Shutdown()
	srv.srv = nil
	srv.mu.Unlock()
	err := b.Enqueue(context.Background(), q, adapters.Message{Body: []byte("x")})
	if !adapters.IsRetryable(err) {
		t.Fatalf("Enqueue with the server down: %v, want a retryable ErrUnavailable", err)
	}
	t.Logf("error: %v", err)
}

// On an Ordered queue a second consumer gets nothing while the first holds
// an item, even though more items wait: one item in flight keeps the order.
func TestOrderedQueueHoldsOneItemInFlight(t *testing.T) {
	srv := startServer(t, false)
	b1, b2 := open(t, srv), open(t, srv)
	ctx := testCtx(t)
	q := uniqueName(t)
	if err := b1.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Ordered: true, Lease: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := b1.Enqueue(ctx, q, adapters.Message{ID: fmt.Sprint(i), Key: "k"}); err != nil {
			t.Fatal(err)
		}
	}
	c1, err := b1.Consume(ctx, q, adapters.ConsumeOptions{Prefetch: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	c2, err := b2.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	d, err := c1.Receive(ctx)
	if err != nil || d.Message().ID != "0" {
		t.Fatalf("first Receive: %v, %v", err, d)
	}
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if d2, err := c2.Receive(rctx); err == nil {
		t.Fatalf("second consumer got %q while %q was held", d2.Message().ID, d.Message().ID)
	}
	if err := d.Nack(ctx, 0); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"0", "1", "2"} {
		d, err := c2.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d.Message().ID != want {
			t.Errorf("got %q (attempt %d), want %q", d.Message().ID, d.Attempt(), want)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// Prefetch hands out items already waiting and every one can be acked.
func TestPrefetchDeliversEveryItemOnce(t *testing.T) {
	srv := startServer(t, false)
	b := open(t, srv)
	ctx := testCtx(t)
	q := uniqueName(t)
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: q}); err != nil {
		t.Fatal(err)
	}
	const n = 50
	for i := range n {
		if err := b.Enqueue(ctx, q, adapters.Message{ID: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := b.Consume(ctx, q, adapters.ConsumeOptions{Prefetch: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	seen := map[string]bool{}
	for range n {
		d, err := c.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if seen[d.Message().ID] {
			t.Errorf("%s twice", d.Message().ID)
		}
		seen[d.Message().ID] = true
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if len(seen) != n {
		t.Errorf("%d distinct items, want %d", len(seen), n)
	}
}

// MaxMessageSize follows the server's max_payload learned at connect, and a
// message over it fails with ErrTooLarge.
func TestMaxMessageSizeFollowsServerMaxPayload(t *testing.T) {
	s, err := natsserver.Start(natsserver.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), MaxPayload: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	ctx := testCtx(t)
	b, err := nats.Open(ctx, nats.Options{Servers: []string{s.ClientURL()}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	max := b.Capabilities().MaxMessageSize
	if max != 64<<10-4096 {
		t.Errorf("MaxMessageSize %d, want %d", max, 64<<10-4096)
	}
	err = b.Publish(ctx, "big", adapters.Message{Body: make([]byte, max+1)})
	if !errors.Is(err, adapters.ErrTooLarge) {
		t.Errorf("Publish of %d bytes: %v, want ErrTooLarge", max+1, err)
	}
}

// On a NATS server without JetStream, topics work and queues fail with
// ErrUnsupported saying JetStream is needed.
func TestWithoutJetStreamQueuesAreUnsupported(t *testing.T) {
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Shutdown)
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	ctx := testCtx(t)
	b, err := nats.Open(ctx, nats.Options{Servers: []string{s.ClientURL()}, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	err = b.DeclareQueue(ctx, adapters.QueueConfig{Name: "jobs"})
	if !errors.Is(err, adapters.ErrUnsupported) || !strings.Contains(err.Error(), "JetStream") {
		t.Errorf("DeclareQueue without JetStream: %v, want ErrUnsupported naming JetStream", err)
	}
	sub, err := b.Subscribe(ctx, "news")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := b.Publish(ctx, "news", adapters.Message{ID: "n1"}); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.Receive(ctx); err != nil || m.ID != "n1" {
		t.Errorf("topic without JetStream: %v %q", err, m.ID)
	}
}
