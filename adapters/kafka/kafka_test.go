package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/kafka"
)

func TestParseURLAcceptsBrokersAndParameters(t *testing.T) {
	cfg, err := kafka.ParseURL("kafka://a:1,b,c:3/?partitions=3&replication=2&session_timeout=9s&heartbeat_interval=2s&prefix=app.one&client_id=n1")
	if err != nil {
		t.Fatalf("ParseURL: %v", err)
	}
	if got, want := strings.Join(cfg.Brokers, ","), "a:1,b:9092,c:3"; got != want {
		t.Errorf("Brokers %q, want %q", got, want)
	}
	if cfg.Partitions != 3 || cfg.Replication != 2 || cfg.SessionTimeout != 9*time.Second ||
		cfg.HeartbeatInterval != 2*time.Second || cfg.Prefix != "app.one" || cfg.ClientID != "n1" {
		t.Errorf("parameters not applied: %+v", cfg)
	}
	def, err := kafka.ParseURL("kafka://localhost")
	if err != nil {
		t.Fatalf("ParseURL without parameters: %v", err)
	}
	if d := kafka.DefaultConfig(); def.Partitions != d.Partitions || def.SessionTimeout != d.SessionTimeout || def.Prefix != d.Prefix {
		t.Errorf("defaults not applied: %+v", def)
	}
}

func TestParseURLRejectsBadInputNamingWhatIsAccepted(t *testing.T) {
	cases := []struct{ url, mention string }{
		{"kafka://h:9092?bogus=1", "partitions="},
		{"kafka://h:9092?partitions=0", "1 to 1024"},
		{"kafka://h:9092?replication=0", "-1"},
		{"kafka://h:9092?session_timeout=soon", "duration"},
		{"kafka://h:9092?session_timeout=2s&heartbeat_interval=1s", "third"},
		{"kafka://h:9092?prefix=a/b", "prefix"},
		{"kafka://", "no broker address"},
		{"kafka://u:p@h:9092", "SASL"},
		{"kafka://h:9092/path", "path"},
		{"nats://h:4222", "kafka://host"},
		{"kafka://h:9092?a=%zz", "malformed query"},
	}
	for _, c := range cases {
		_, err := kafka.ParseURL(c.url)
		if !errors.Is(err, adapters.ErrInvalidArgument) {
			t.Errorf("ParseURL(%q): %v, want ErrInvalidArgument", c.url, err)
			continue
		}
		if !strings.Contains(err.Error(), c.mention) || !strings.HasPrefix(err.Error(), "kafka:") {
			t.Errorf("ParseURL(%q): %q does not start with \"kafka:\" and mention %q", c.url, err, c.mention)
		}
		if strings.Contains(err.Error(), ":p@") {
			t.Errorf("ParseURL(%q): error leaks the password: %q", c.url, err)
		}
	}
}

func TestOpenUnreachableBrokerIsUnavailable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	_, err = adapters.Open(ctx, "kafka://"+addr)
	if !errors.Is(err, adapters.ErrUnavailable) || !adapters.IsRetryable(err) {
		t.Fatalf("Open of %s: %v, want a retryable ErrUnavailable", addr, err)
	}
	if !strings.Contains(err.Error(), addr) {
		t.Errorf("error %q does not name the address", err)
	}
	t.Logf("failed in %s: %v", time.Since(start), err)
}

func TestOpenThroughRegistry(t *testing.T) {
	srv := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := adapters.Open(ctx, srv.URL())
	if err != nil {
		t.Fatalf("adapters.Open(%q): %v", srv.URL(), err)
	}
	defer b.Close()
	if got := b.Capabilities().Name; got != "kafka" {
		t.Errorf("Capabilities().Name %q, want kafka", got)
	}
	if _, err := adapters.Open(ctx, srv.URL()+"&nope=1"); !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Errorf("unknown parameter through the registry: %v, want ErrInvalidArgument", err)
	}
}

func TestDeclareWithDifferentConfigIsRefused(t *testing.T) {
	srv := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b1, b2 := openT(ctx, t, srv), openT(ctx, t, srv)
	q := uniqueName("diff")
	if err := b1.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: 2 * time.Second}); err != nil {
		t.Fatalf("DeclareQueue: %v", err)
	}
	// Another client (another node) sees the declaration.
	if err := b2.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: 2 * time.Second}); err != nil {
		t.Errorf("same config from a second client: %v", err)
	}
	err := b2.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: 3 * time.Second})
	if !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Errorf("different lease from a second client: %v, want ErrInvalidArgument", err)
	}
	if err := b1.DeleteQueue(ctx, q); err != nil {
		t.Fatalf("DeleteQueue: %v", err)
	}
	if err := b2.DeleteQueue(ctx, q); !errors.Is(err, adapters.ErrNotFound) {
		t.Errorf("second DeleteQueue: %v, want ErrNotFound", err)
	}
	if err := b1.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: 3 * time.Second}); err != nil {
		t.Errorf("declare again after delete with a new config: %v", err)
	}
	_ = b1.DeleteQueue(ctx, q)
}

// EnqueueBatch goes through the adapter's BatchEnqueuer: an undeclared
// queue is ErrNotFound, and a batch larger than the writer's batch size
// (256, so several produce requests over several partitions) is stored
// whole, each item once.
func TestEnqueueBatchSpanningWriterBatches(t *testing.T) {
	srv := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := openT(ctx, t, srv)
	be, ok := b.(adapters.BatchEnqueuer)
	if !ok {
		t.Fatalf("%T does not implement adapters.BatchEnqueuer", b)
	}
	const n = 600
	ms := make([]adapters.Message, n)
	for i := range ms {
		ms[i] = adapters.Message{ID: fmt.Sprint(i), Key: fmt.Sprint("k", i%7), Body: []byte("x")}
	}
	if err := be.EnqueueBatch(ctx, uniqueName("never"), ms); !errors.Is(err, adapters.ErrNotFound) {
		t.Fatalf("EnqueueBatch to an undeclared queue: %v, want ErrNotFound", err)
	}
	q := uniqueName("batch")
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: 10 * time.Second}); err != nil {
		t.Fatalf("DeclareQueue: %v", err)
	}
	defer b.DeleteQueue(context.Background(), q)
	if err := be.EnqueueBatch(ctx, q, ms); err != nil {
		t.Fatalf("EnqueueBatch of %d: %v", n, err)
	}
	c, err := b.Consume(ctx, q, adapters.ConsumeOptions{Prefetch: 64})
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	defer c.Close()
	seen := map[string]bool{}
	for len(seen) < n {
		d, err := c.Receive(ctx)
		if err != nil {
			t.Fatalf("Receive after %d of %d: %v", len(seen), n, err)
		}
		id := d.Message().ID
		if seen[id] {
			t.Fatalf("item %s delivered twice", id)
		}
		seen[id] = true
		if err := d.Ack(ctx); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
}

func TestDedupeQueueIsRefused(t *testing.T) {
	srv := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b := openT(ctx, t, srv)
	cfg := adapters.QueueConfig{Name: uniqueName("dup"), Dedupe: true}
	if err := b.DeclareQueue(ctx, cfg); !errors.Is(err, adapters.ErrUnsupported) {
		t.Errorf("DeclareQueue(%+v): %v, want ErrUnsupported", cfg, err)
	}
}

// On an ordered queue, Nack and lease expiry hand the same item out again
// (attempt + 1) before the next item with its key; only a settled item lets
// the next one through.
func TestOrderedQueueKeepsOrderAcrossNackAndLeaseExpiry(t *testing.T) {
	srv := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b := openT(ctx, t, srv)
	q := uniqueName("ord")
	const lease = time.Second
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: lease, Ordered: true, MaxAttempts: 5}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteQueue(context.Background(), q) })
	for i := range 3 {
		if err := b.Enqueue(ctx, q, adapters.Message{ID: fmt.Sprint("k-", i), Key: "k"}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := b.Consume(ctx, q, adapters.ConsumeOptions{Prefetch: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	recv := func(wantID string, wantAttempt int) adapters.Delivery {
		t.Helper()
		d, err := c.Receive(ctx)
		if err != nil {
			t.Fatalf("Receive: %v", err)
		}
		if d.Message().ID != wantID || d.Attempt() != wantAttempt {
			t.Fatalf("got %q attempt %d, want %q attempt %d", d.Message().ID, d.Attempt(), wantID, wantAttempt)
		}
		return d
	}
	d := recv("k-0", 1)
	start := time.Now()
	if err := d.Nack(ctx, 500*time.Millisecond); err != nil {
		t.Fatalf("Nack: %v", err)
	}
	d = recv("k-0", 2)
	if el := time.Since(start); el < 450*time.Millisecond {
		t.Errorf("came back %s after Nack(500ms)", el)
	}
	// Let the lease run out: the same item comes back, not k-1.
	start = time.Now()
	d = recv("k-0", 3)
	if el := time.Since(start); el < lease/2 {
		t.Errorf("came back %s after the lease of %s started", el, lease)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	if err := recv("k-1", 1).Ack(ctx); err != nil {
		t.Fatal(err)
	}
	if err := recv("k-2", 1).Ack(ctx); err != nil {
		t.Fatal(err)
	}
}

// A delayed Nack survives the consumer that made it: the delayed item sits
// in the retry topic, and the retry-group member of another consumer
// re-queues it when it is due.
func TestDelayedNackSurvivesConsumerClose(t *testing.T) {
	srv := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b1, b2 := openT(ctx, t, srv), openT(ctx, t, srv)
	q := uniqueName("delay")
	if err := b1.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b1.DeleteQueue(context.Background(), q) })
	if err := b1.Enqueue(ctx, q, adapters.Message{ID: "later"}); err != nil {
		t.Fatal(err)
	}
	c1, err := b1.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := c1.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const delay = 3 * time.Second
	nacked := time.Now()
	if err := d.Nack(ctx, delay); err != nil {
		t.Fatalf("Nack: %v", err)
	}
	if err := c1.Close(); err != nil {
		t.Fatal(err)
	}
	c2, err := b2.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	d2, err := c2.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive after the first consumer closed: %v", err)
	}
	el := time.Since(nacked)
	t.Logf("came back %s after Nack(%s) through another consumer", el, delay)
	if el < delay-50*time.Millisecond {
		t.Errorf("came back after %s, before the delay %s", el, delay)
	}
	if d2.Message().ID != "later" || d2.Attempt() != 2 {
		t.Errorf("got %q attempt %d, want \"later\" attempt 2", d2.Message().ID, d2.Attempt())
	}
	if err := d2.Ack(ctx); err != nil {
		t.Errorf("Ack: %v", err)
	}
}

func openT(ctx context.Context, t *testing.T, srv *server) adapters.Broker {
	t.Helper()
	b, err := srv.open(ctx, t)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func uniqueName(prefix string) string {
	return fmt.Sprintf("kt-%s-%d", prefix, time.Now().UnixNano())
}

// After the broker restarts, a subscription first reports ErrGap (it cannot
// know what it missed while disconnected), then delivers messages published
// after the restart, without being reopened.
func TestSubscriptionReportsGapAfterRestart(t *testing.T) {
	srv := startServer(t)
	if !srv.canRestart() {
		t.Skip("CLUSTERBUS_TEST_KAFKA_BROKERS: an external Kafka cannot be restarted by the test")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pub, subB := openT(ctx, t, srv), openT(ctx, t, srv)
	topic := uniqueName("gap")
	sub, err := subB.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := pub.Publish(ctx, topic, adapters.Message{ID: "before"}); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.Receive(ctx); err != nil || m.ID != "before" {
		t.Fatalf("before the restart: %q, %v", m.ID, err)
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		gaps := 0
		for {
			m, err := sub.Receive(ctx)
			switch {
			case errors.Is(err, adapters.ErrGap):
				gaps++
				continue
			case err != nil:
				got <- err
			case gaps == 0:
				got <- fmt.Errorf("received %q after the restart without an ErrGap first", m.ID)
			default:
				t.Logf("received %q after %d gap report(s)", m.ID, gaps)
				got <- nil
			}
			return
		}
	}()
	for i := 0; ; i++ {
		// Publishes may fail while the client reconnects; keep trying.
		_ = pub.Publish(ctx, topic, adapters.Message{ID: fmt.Sprint("after-", i)})
		select {
		case err := <-got:
			if err != nil {
				t.Fatal(err)
			}
			return
		case <-time.After(250 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("no message after the restart")
		}
	}
}

// When the consumer holding an ordered queue's item closes, its partition
// moves and the new owner starts again at that item: the order holds
// across the move (the item keeps its attempt count: it was never
// re-appended).
func TestOrderedQueueKeepsOrderWhenPartitionMoves(t *testing.T) {
	srv := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b1, b2 := openT(ctx, t, srv), openT(ctx, t, srv)
	q := uniqueName("ordmove")
	if err := b1.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: 30 * time.Second, Ordered: true}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b1.DeleteQueue(context.Background(), q) })
	for i := range 3 {
		if err := b1.Enqueue(ctx, q, adapters.Message{ID: fmt.Sprint("k-", i), Key: "k"}); err != nil {
			t.Fatal(err)
		}
	}
	c1, err := b1.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := c1.Receive(ctx)
	if err != nil || d.Message().ID != "k-0" {
		t.Fatalf("first consumer: %v, %v", d, err)
	}
	c2, err := b2.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	got := make(chan adapters.Delivery, 3)
	go func() {
		for range 3 {
			d, err := c2.Receive(ctx)
			if err != nil {
				return
			}
			got <- d
			_ = d.Ack(ctx)
		}
	}()
	// c2 has joined and holds nothing of key k while c1 holds k-0.
	select {
	case d := <-got:
		t.Fatalf("second consumer received %q while the first held k-0", d.Message().ID)
	case <-time.After(3 * time.Second):
	}
	if err := c1.Close(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		select {
		case d := <-got:
			if want := fmt.Sprint("k-", i); d.Message().ID != want {
				t.Errorf("after the move: got %q, want %q", d.Message().ID, want)
			}
		case <-ctx.Done():
			t.Fatalf("after the move: item %d never arrived", i)
		}
	}
}
