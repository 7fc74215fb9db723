package azservicebus_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	sb "github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/azservicebus"
)

func uniqueName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func declare(t *testing.T, b adapters.Broker, cfg adapters.QueueConfig) {
	t.Helper()
	if err := b.DeclareQueue(ctxFor(t, time.Minute), cfg); err != nil {
		t.Fatalf("DeclareQueue(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { _ = b.DeleteQueue(context.Background(), cfg.Name) })
}

func consume(t *testing.T, b adapters.Broker, q string, opts adapters.ConsumeOptions) adapters.Consumer {
	t.Helper()
	c, err := b.Consume(ctxFor(t, time.Minute), q, opts)
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestParseURLAcceptsDocumentedForms(t *testing.T) {
	t.Setenv("SB_TEST_CS", "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=v")
	for _, raw := range []string{
		"azservicebus://?connection_string_env=SB_TEST_CS",
		"azservicebus://?connection_string=" + url.QueryEscape("Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=v") + "&subscription_idle=10m",
	} {
		u, _ := url.Parse(raw)
		cfg, err := azservicebus.ParseURL(u)
		if err != nil {
			t.Errorf("ParseURL(%s): %v", raw, err)
			continue
		}
		if !strings.HasPrefix(cfg.ConnectionString, "Endpoint=sb://x.servicebus.windows.net/") {
			t.Errorf("ParseURL(%s): connection string %q", raw, cfg.ConnectionString)
		}
	}
}

func TestParseURLRejectsBadInputNamingWhatIsAccepted(t *testing.T) {
	cases := map[string]string{
		"azservicebus://?connection_string_env=SB_TEST_UNSET_VAR": "SB_TEST_UNSET_VAR",
		"azservicebus://?connection_string=x&bogus=1":             "accepted: admin_endpoint, connection_string, connection_string_env, subscription_idle",
		"azservicebus://ns.servicebus.windows.net":                "no host",
		"azservicebus://": "no connection string",
		"azservicebus://?connection_string=a&connection_string_env=b": "not both",
		"azservicebus://?connection_string=a&subscription_idle=soon":  "subscription_idle",
	}
	for raw, want := range cases {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		_, err = azservicebus.ParseURL(u)
		if !errors.Is(err, adapters.ErrInvalidArgument) || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseURL(%s) = %v; want ErrInvalidArgument mentioning %q", raw, err, want)
		}
	}
}

func TestOpenRejectsBadConfigBeforeConnecting(t *testing.T) {
	emu := "Endpoint=sb://127.0.0.1:1;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true"
	cases := map[string]azservicebus.Config{
		"needs admin_endpoint":                 {ConnectionString: emu},
		"only for UseDevelopmentEmulator=true": {ConnectionString: "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=v", AdminEndpoint: "http://127.0.0.1:1"},
		"Endpoint":                             {ConnectionString: "SharedAccessKeyName=k;SharedAccessKey=v"},
		"at least 5m0s":                        {ConnectionString: emu, AdminEndpoint: "http://127.0.0.1:1", SubscriptionIdle: time.Minute},
		"want http://HOST:PORT":                {ConnectionString: emu, AdminEndpoint: "ftp://x"},
	}
	for want, cfg := range cases {
		_, err := azservicebus.Open(context.Background(), cfg)
		if !errors.Is(err, adapters.ErrInvalidArgument) || !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%+v) = %v; want ErrInvalidArgument mentioning %q", cfg, err, want)
		}
	}
}

func TestOpenUnreachableIsUnavailable(t *testing.T) {
	cfg := azservicebus.Config{
		ConnectionString: "Endpoint=sb://127.0.0.1:1;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true",
		AdminEndpoint:    "http://127.0.0.1:1",
	}
	_, err := azservicebus.Open(ctxFor(t, time.Minute), cfg)
	if !errors.Is(err, adapters.ErrUnavailable) {
		t.Fatalf("Open of a closed port = %v; want ErrUnavailable", err)
	}
	t.Logf("error: %v", err)
}

func TestRegistryOpensTestServerURL(t *testing.T) {
	s := needServer(t)
	b, err := adapters.Open(ctxFor(t, time.Minute), s.URL())
	if err != nil {
		t.Fatalf("adapters.Open: %v", err)
	}
	defer b.Close()
	if got := b.Capabilities().Name; got != "azservicebus" {
		t.Fatalf("Capabilities().Name = %q", got)
	}
}

func TestDeclareQueueWithOtherConfigIsInvalidArgument(t *testing.T) {
	b := openTest(t)
	q := uniqueName("redecl")
	declare(t, b, adapters.QueueConfig{Name: q, Lease: 5 * time.Second, MaxAttempts: 3})
	err := b.DeclareQueue(ctxFor(t, time.Minute), adapters.QueueConfig{Name: q, Lease: 10 * time.Second, MaxAttempts: 3})
	if !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Fatalf("redeclare with another lease = %v; want ErrInvalidArgument", err)
	}
	// A second client sees the lease and max attempts through the admin API.
	b2 := openTest(t)
	if err := b2.DeclareQueue(ctxFor(t, time.Minute), adapters.QueueConfig{Name: q, Lease: 5 * time.Second, MaxAttempts: 3}); err != nil {
		t.Fatalf("same config from another client: %v", err)
	}
	if err := b.DeclareQueue(ctxFor(t, time.Minute), adapters.QueueConfig{Name: q, Lease: time.Second}); !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Fatalf("lease under Service Bus's 5s minimum = %v; want ErrInvalidArgument", err)
	}
	if err := b.DeclareQueue(ctxFor(t, time.Minute), adapters.QueueConfig{Name: uniqueName("ord"), Lease: 5 * time.Second, Ordered: true}); !errors.Is(err, adapters.ErrUnsupported) {
		t.Fatalf("Ordered = %v; want ErrUnsupported", err)
	}
}

// Nack(delay) sends a scheduled copy: the ID, key and headers stay, the
// attempt goes on counting, and the attempts used by copies count against
// MaxAttempts (the adapter dead-letters when they are used up).
func TestNackDelayCopyKeepsIdentityAndCountsAttempts(t *testing.T) {
	b := openTest(t)
	ctx := ctxFor(t, 2*time.Minute)
	q := uniqueName("nackcopy")
	declare(t, b, adapters.QueueConfig{Name: q, Lease: 5 * time.Second, MaxAttempts: 3})
	want := adapters.Message{ID: "item-1", Key: "k1", Headers: map[string]string{"trace": "abc"}, Body: []byte("payload")}
	if err := b.Enqueue(ctx, q, want); err != nil {
		t.Fatal(err)
	}
	c := consume(t, b, q, adapters.ConsumeOptions{})
	for attempt := 1; attempt <= 3; attempt++ {
		d, err := c.Receive(ctx)
		if err != nil {
			t.Fatalf("attempt %d: Receive: %v", attempt, err)
		}
		m := d.Message()
		if d.Attempt() != attempt || m.ID != want.ID || m.Key != want.Key || m.Headers["trace"] != "abc" || len(m.Headers) != 1 || string(m.Body) != "payload" {
			t.Fatalf("attempt %d: got attempt %d, %+v", attempt, d.Attempt(), m)
		}
		start := time.Now()
		if err := d.Nack(ctx, 300*time.Millisecond); err != nil {
			t.Fatalf("attempt %d: Nack: %v", attempt, err)
		}
		t.Logf("attempt %d nacked (%s)", attempt, time.Since(start))
	}
	dlq := consume(t, b, q, adapters.ConsumeOptions{DeadLetters: true})
	d, err := dlq.Receive(ctx)
	if err != nil {
		t.Fatalf("dead-letter Receive: %v", err)
	}
	if d.Message().ID != want.ID || !strings.Contains(d.Message().Headers[adapters.HeaderDeadLetterReason], "max attempts (3)") {
		t.Fatalf("dead-lettered %+v", d.Message())
	}
	if err := d.Nack(ctx, time.Second); !errors.Is(err, adapters.ErrUnsupported) {
		t.Fatalf("Nack with a delay on the dead-letter queue = %v; want ErrUnsupported", err)
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
}

// A Nack(delay) copy whose lease then expires is redelivered by Service Bus
// (its own delivery count is low); the adapter sees the total attempts over
// MaxAttempts and dead-letters it instead of returning it.
func TestCopyOverMaxAttemptsAfterLeaseExpiryIsDeadLettered(t *testing.T) {
	b := openTest(t)
	ctx := ctxFor(t, 2*time.Minute)
	q := uniqueName("copyexp")
	declare(t, b, adapters.QueueConfig{Name: q, Lease: 5 * time.Second, MaxAttempts: 2})
	if err := b.Enqueue(ctx, q, adapters.Message{ID: "x"}); err != nil {
		t.Fatal(err)
	}
	c := consume(t, b, q, adapters.ConsumeOptions{})
	d, err := c.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Nack(ctx, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	d, err = c.Receive(ctx)
	if err != nil || d.Attempt() != 2 {
		t.Fatalf("second delivery: attempt %v, %v", d, err)
	}
	// Let its lease expire; the next Receive must not return it.
	rctx, cancel := context.WithTimeout(ctx, 12*time.Second)
	defer cancel()
	if d2, err := c.Receive(rctx); err == nil {
		t.Fatalf("item came back with attempt %d over MaxAttempts 2", d2.Attempt())
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Receive: %v", err)
	}
	dlq := consume(t, b, q, adapters.ConsumeOptions{DeadLetters: true})
	dd, err := dlq.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("dead-letter reason: %q", dd.Message().Headers[adapters.HeaderDeadLetterReason])
	if dd.Message().ID != "x" || !strings.Contains(dd.Message().Headers[adapters.HeaderDeadLetterReason], "max attempts (2) exceeded") {
		t.Fatalf("dead-lettered %+v", dd.Message())
	}
}

// Native MaxDeliveryCount: lease expiries dead-letter with Service Bus's own
// reason, exposed with its description.
func TestNativeMaxDeliveryCountReasonIsReadable(t *testing.T) {
	b := openTest(t)
	ctx := ctxFor(t, 2*time.Minute)
	q := uniqueName("native")
	declare(t, b, adapters.QueueConfig{Name: q, Lease: 5 * time.Second, MaxAttempts: 1})
	if err := b.Enqueue(ctx, q, adapters.Message{ID: "y"}); err != nil {
		t.Fatal(err)
	}
	c := consume(t, b, q, adapters.ConsumeOptions{})
	if _, err := c.Receive(ctx); err != nil { // never settled: the lock expires
		t.Fatal(err)
	}
	dlq := consume(t, b, q, adapters.ConsumeOptions{DeadLetters: true})
	d, err := dlq.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r := d.Message().Headers[adapters.HeaderDeadLetterReason]; !strings.HasPrefix(r, "MaxDeliveryCountExceeded") {
		t.Fatalf("reason %q, want MaxDeliveryCountExceeded…", r)
	}
}

// After the server loses everything (SIGKILL, empty restart) a subscription
// reports ErrGap (for the recovered fault: ReceiveMessages returning nothing
// and no error, and for the lost subscription), makes its Service Bus
// subscription again and receives new messages.
func TestSubscriptionSurvivesServerLosingEverything(t *testing.T) {
	s := needServer(t)
	b := openTest(t)
	ctx := ctxFor(t, 3*time.Minute)
	topic := uniqueName("crash")
	sub, err := b.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := b.Publish(ctx, topic, adapters.Message{ID: "before"}); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.Receive(ctx); err != nil || m.ID != "before" {
		t.Fatalf("before crash: %v %v", m, err)
	}
	if err := s.crash(ctx); err != nil {
		t.Fatalf("crash: %v", err)
	}
	got := make(chan error, 1)
	gaps := 0
	go func() {
		for {
			m, err := sub.Receive(ctx)
			if errors.Is(err, adapters.ErrGap) {
				gaps++
				t.Logf("gap: %v", err)
				continue
			}
			if err == nil && m.ID != "after" {
				continue
			}
			got <- err
			return
		}
	}()
	for i := 0; ; i++ {
		err := b.Publish(ctx, topic, adapters.Message{ID: "after"})
		if err != nil {
			t.Logf("publish %d after crash: %v", i, err)
		}
		select {
		case err := <-got:
			if err != nil {
				t.Fatalf("Receive after crash: %v", err)
			}
			if gaps == 0 {
				t.Fatalf("received after the server lost the subscription, but no ErrGap was reported")
			}
			t.Logf("received after crash, %d gap report(s)", gaps)
			return
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("no message after crash")
		}
	}
}

// The test server refuses messages over 256 KiB as Service Bus Standard
// does, so the at-limit conformance case shows that the adapter's 248 KiB
// (plus system properties) fits on the wire.
func TestServerRefusesMessagesOver256KiB(t *testing.T) {
	s := needServer(t)
	b := openTest(t)
	q := uniqueName("big")
	declare(t, b, adapters.QueueConfig{Name: q, Lease: 5 * time.Second})
	client, err := sb.NewClientFromConnectionString(s.connectionString(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(context.Background())
	sender, err := client.NewSender(q, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = sender.SendMessage(ctxFor(t, time.Minute), &sb.Message{Body: make([]byte, 257*1024)}, nil)
	if err == nil {
		t.Fatal("a 257 KiB message was accepted")
	}
	t.Logf("refused: %v", err)
}

// With Prefetch, a consumer holds several locked items; each is acked once,
// and after the consumer is closed every item not acked reaches another
// consumer: the prefetched ones it holds are abandoned at once, and those
// the SDK received on outstanding link credit while it closed come back when
// their locks expire (the contract allows either).
func TestPrefetchAcksEachOnceAndCloseReturnsTheRest(t *testing.T) {
	b := openTest(t)
	ctx := ctxFor(t, 2*time.Minute)
	q := uniqueName("prefetch")
	declare(t, b, adapters.QueueConfig{Name: q, Lease: 5 * time.Second})
	const n = 20
	for i := range n {
		if err := b.Enqueue(ctx, q, adapters.Message{ID: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := b.Consume(ctx, q, adapters.ConsumeOptions{Prefetch: 8})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for range 10 {
		d, err := c.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if seen[d.Message().ID] {
			t.Fatalf("item %s delivered twice", d.Message().ID)
		}
		seen[d.Message().ID] = true
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.Close()
	c2 := consume(t, b, q, adapters.ConsumeOptions{})
	start := time.Now()
	for len(seen) < n {
		d, err := c2.Receive(ctx)
		if err != nil {
			t.Fatalf("after %d of %d items: %v", len(seen), n, err)
		}
		if seen[d.Message().ID] {
			t.Fatalf("item %s delivered again after its ack", d.Message().ID)
		}
		seen[d.Message().ID] = true
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("the other %d items arrived within %s of the close", n-10, time.Since(start))
}

// The test server's schedule-message management operation (the adapter
// schedules with ScheduledEnqueueTime on a plain send instead): the SDK's
// ScheduleMessages gets sequence numbers back and the message appears no
// earlier than its time.
// Consumer.Close abandons the deliveries Receive returned and that are not
// settled: the item comes back to another consumer at once (well inside its
// one-minute lock) as a new attempt, an item acked before the close does
// not, and the old delivery can no longer be settled (ErrLeaseLost, matching
// ErrClosed too).
func TestCloseAbandonsUnsettledDeliveries(t *testing.T) {
	b := openTest(t)
	ctx := ctxFor(t, 2*time.Minute)
	q := uniqueName("close-held")
	declare(t, b, adapters.QueueConfig{Name: q, Lease: time.Minute})
	for _, id := range []string{"held", "acked"} {
		if err := b.Enqueue(ctx, q, adapters.Message{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := b.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var held adapters.Delivery
	for range 2 {
		d, err := c.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d.Message().ID == "held" {
			held = d
		} else if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := held.Ack(ctx); !errors.Is(err, adapters.ErrLeaseLost) || !errors.Is(err, adapters.ErrClosed) {
		t.Errorf("Ack after Close: %v, want ErrLeaseLost matching ErrClosed", err)
	}
	c2 := consume(t, b, q, adapters.ConsumeOptions{})
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	d, err := c2.Receive(rctx)
	if err != nil {
		t.Fatalf("the held item did not come back before its lock expired: %v", err)
	}
	if d.Message().ID != "held" || d.Attempt() != 2 {
		t.Errorf("got %q attempt %d, want \"held\" attempt 2", d.Message().ID, d.Attempt())
	}
	if err := d.Ack(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestServerScheduleMessagesOperation(t *testing.T) {
	s := needServer(t)
	b := openTest(t)
	ctx := ctxFor(t, time.Minute)
	q := uniqueName("sched")
	declare(t, b, adapters.QueueConfig{Name: q, Lease: 5 * time.Second})
	client, err := sb.NewClientFromConnectionString(s.connectionString(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close(context.Background())
	sender, err := client.NewSender(q, nil)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now().Add(time.Second)
	seqs, err := sender.ScheduleMessages(ctx, []*sb.Message{{Body: []byte("later")}}, at, nil)
	if err != nil || len(seqs) != 1 || seqs[0] <= 0 {
		t.Fatalf("ScheduleMessages = %v, %v", seqs, err)
	}
	c := consume(t, b, q, adapters.ConsumeOptions{})
	d, err := c.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if now := time.Now(); now.Before(at) || string(d.Message().Body) != "later" {
		t.Fatalf("got %q at %s, scheduled for %s", d.Message().Body, now, at)
	}
}

// A forced detach of every receiver link (a fault the SDK recovers from by
// itself): a consumer blocked in Receive keeps going (ReceiveMessages gives
// back nothing and no error after the recovery, and the adapter receives
// again), a delivery held across the fault can still be acked (the SDK
// settles it on the management link when its own link is gone), and new
// items arrive.
func TestConsumerSurvivesForcedLinkDetach(t *testing.T) {
	s := needServer(t)
	b := openTest(t)
	ctx := ctxFor(t, 2*time.Minute)
	q := uniqueName("detach")
	declare(t, b, adapters.QueueConfig{Name: q, Lease: 30 * time.Second})
	if err := b.Enqueue(ctx, q, adapters.Message{ID: "held"}); err != nil {
		t.Fatal(err)
	}
	c := consume(t, b, q, adapters.ConsumeOptions{})
	held, err := c.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		d   adapters.Delivery
		err error
	}
	next := make(chan result, 1)
	go func() {
		d, err := c.Receive(ctx)
		next <- result{d, err}
	}()
	time.Sleep(200 * time.Millisecond) // let that Receive block on the link (no condition to wait on from outside)
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/$fault/detach-receivers", s.AdminPort()), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	t.Logf("fault: %s", body)
	// The Ack races the fault: it settles on the old link or, once the SDK
	// sees the detach, on the management link. If an attempt's answer is lost
	// with the link, the retry finds the lock gone: ErrLeaseLost although the
	// item was completed. Anything else is a failure.
	ackErr := held.Ack(ctx)
	if ackErr != nil && !errors.Is(ackErr, adapters.ErrLeaseLost) {
		t.Fatalf("Ack of a delivery held across the fault: %v", ackErr)
	}
	t.Logf("Ack across the fault: %v", ackErr)
	if err := b.Enqueue(ctx, q, adapters.Message{ID: "after"}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-next:
		if r.err != nil {
			t.Fatalf("Receive across the fault: %v", r.err)
		}
		if r.d.Message().ID != "after" && (ackErr == nil || r.d.Message().ID != "held") {
			t.Fatalf("Receive across the fault got %q (Ack said %v)", r.d.Message().ID, ackErr)
		}
		if err := r.d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("Receive did not return the item enqueued after the fault")
	}
}

// EnqueueBatch to an undeclared queue is ErrNotFound; a batch larger than
// one Service Bus message batch (the test server's link allows 256 KiB)
// goes out as several, with a message near MaxMessageSize among them, and
// every item arrives once, in order.
func TestEnqueueBatchSpanningMessageBatches(t *testing.T) {
	b := openTest(t)
	ctx := ctxFor(t, 2*time.Minute)
	const n = 300
	ms := make([]adapters.Message, n)
	for i := range ms {
		ms[i] = adapters.Message{ID: fmt.Sprintf("m%03d", i), Body: make([]byte, 2048)}
	}
	ms[150].Body = make([]byte, 240<<10)
	if err := b.EnqueueBatch(ctx, uniqueName("never"), ms); !errors.Is(err, adapters.ErrNotFound) {
		t.Fatalf("EnqueueBatch to an undeclared queue: %v, want ErrNotFound", err)
	}
	q := uniqueName("batch")
	declare(t, b, adapters.QueueConfig{Name: q, Lease: 30 * time.Second})
	if err := b.EnqueueBatch(ctx, q, ms); err != nil {
		t.Fatalf("EnqueueBatch of %d: %v", n, err)
	}
	c, err := b.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	defer c.Close()
	for i := range n {
		d, err := c.Receive(ctx)
		if err != nil {
			t.Fatalf("Receive %d of %d: %v", i+1, n, err)
		}
		if got, want := d.Message().ID, ms[i].ID; got != want {
			t.Fatalf("item %d is %s, want %s", i, got, want)
		}
		if got, want := len(d.Message().Body), len(ms[i].Body); got != want {
			t.Fatalf("item %s has %d bytes, want %d", ms[i].ID, got, want)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatalf("Ack: %v", err)
		}
	}
}
