package sqs_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/sqs"
	"github.com/clusterbus/clusterbus/adapters/sqs/sqstest"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestParseURLAcceptsRegionEndpointPrefixWait(t *testing.T) {
	u, _ := url.Parse("sqs://eu-west-1?endpoint=http://127.0.0.1:4566&prefix=prod-&wait=5s")
	cfg, err := sqs.ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Region != "eu-west-1" || cfg.Endpoint != "http://127.0.0.1:4566" || cfg.Prefix != "prod-" || cfg.WaitTime != 5*time.Second {
		t.Errorf("got %+v", cfg)
	}
	u, _ = url.Parse("sqs://us-east-1?wait=3")
	if cfg, err := sqs.ParseURL(u); err != nil || cfg.WaitTime != 3*time.Second {
		t.Errorf("wait=3: %+v, %v", cfg, err)
	}
}

func TestParseURLRejectsBadInputNamingWhatIsAccepted(t *testing.T) {
	cases := []struct{ url, want string }{
		{"sqs://eu-west-1?endpont=http://x", "accepted: endpoint, prefix, wait"},
		{"sqs://?endpoint=http://127.0.0.1:1", "Region is empty"},
		{"sqs://eu-west-1?wait=30s", "want 0 to 20s"},
		{"sqs://eu-west-1?wait=soon", "want a duration"},
		{"sqs://eu-west-1?prefix=a.b", "Prefix"},
		{"sqs://eu-west-1?endpoint=127.0.0.1:4566", "http:// or https://"},
		{"sqs://eu-west-1/queue", "no user, no path"},
	}
	for _, c := range cases {
		u, err := url.Parse(c.url)
		if err != nil {
			t.Fatal(err)
		}
		_, err = sqs.ParseURL(u)
		if !errors.Is(err, adapters.ErrInvalidArgument) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrInvalidArgument mentioning %q", c.url, err, c.want)
		}
	}
}

func TestOpenThroughRegistry(t *testing.T) {
	needBroker(t)
	if server == nil {
		t.Skip("needs the fauxqs endpoint")
	}
	b, err := adapters.Open(ctxT(t, time.Minute), "sqs://us-east-1?endpoint="+server.Endpoint()+"&wait=2s")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if c := b.Capabilities(); c.Name != "sqs" || c.MaxHeaders != 9 || c.MinLease != time.Second {
		t.Errorf("capabilities %s", c)
	}
}

func TestOpenUnreachableEndpointIsUnavailable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	_, err = sqs.Open(ctxT(t, time.Minute), sqs.Config{Region: "us-east-1", Endpoint: "http://" + addr,
		Credentials: aws.AnonymousCredentials{}, Logger: testLogger(t)})
	if !errors.Is(err, adapters.ErrUnavailable) || !adapters.IsRetryable(err) {
		t.Fatalf("Open of %s: %v, want retryable ErrUnavailable", addr, err)
	}
	t.Logf("error: %v", err)
}

func queueAttr(t *testing.T, b *sqs.Broker, name string, attr types.QueueAttributeName) (string, error) {
	t.Helper()
	ctx := ctxT(t, time.Minute)
	u, err := b.SQS().GetQueueUrl(ctx, &awssqs.GetQueueUrlInput{QueueName: aws.String(testPrefix + name)})
	if err != nil {
		return "", err
	}
	out, err := b.SQS().GetQueueAttributes(ctx, &awssqs.GetQueueAttributesInput{QueueUrl: u.QueueUrl, AttributeNames: []types.QueueAttributeName{attr}})
	if err != nil {
		return "", err
	}
	return out.Attributes[string(attr)], nil
}

func TestOrderedAndDedupeQueuesAreFIFOWithFIFODeadLetterQueue(t *testing.T) {
	b := open(t)
	for _, cfg := range []adapters.QueueConfig{{Ordered: true}, {Dedupe: true}} {
		q := declare(t, b, cfg)
		for _, n := range []string{q.Name + ".fifo", q.Name + "-dlq.fifo"} {
			v, err := queueAttr(t, b, n, types.QueueAttributeNameFifoQueue)
			if err != nil || v != "true" {
				t.Errorf("%+v: SQS queue %s: FifoQueue=%q, %v", cfg, n, v, err)
			}
		}
		if _, err := queueAttr(t, b, q.Name, types.QueueAttributeNameFifoQueue); err == nil {
			t.Errorf("%+v: a standard queue %q exists too", cfg, q.Name)
		}
	}
	q := declare(t, b, adapters.QueueConfig{MaxAttempts: 7, Lease: 1500 * time.Millisecond})
	if v, err := queueAttr(t, b, q.Name, types.QueueAttributeNameVisibilityTimeout); err != nil || v != "2" {
		t.Errorf("VisibilityTimeout %q, %v; want 2 (lease 1.5s rounded up)", v, err)
	}
	if v, err := queueAttr(t, b, q.Name, types.QueueAttributeNameRedrivePolicy); err != nil || !regexp.MustCompile(`"maxReceiveCount":"?7"?`).MatchString(v) || !strings.Contains(v, q.Name+"-dlq") {
		t.Errorf("RedrivePolicy %q, %v; want maxReceiveCount 7 to %s-dlq", v, err, q.Name)
	}
}

func TestLeaseRoundsUpToWholeSeconds(t *testing.T) {
	b := open(t)
	q := declare(t, b, adapters.QueueConfig{Lease: 1500 * time.Millisecond})
	if err := b.Enqueue(ctxT(t, time.Minute), q.Name, adapters.Message{ID: "x"}); err != nil {
		t.Fatal(err)
	}
	c, err := b.Consume(ctxT(t, time.Minute), q.Name, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, err := c.Receive(ctxT(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// Just after Receive about 2 s are left (1.5 s rounded up); the lower
	// bound leaves room for a loaded machine, the queue's VisibilityTimeout
	// of 2 is checked in TestOrderedAndDedupeQueuesAreFIFOWithFIFODeadLetterQueue.
	if left := time.Until(d.LeaseDeadline()); left < time.Second || left > 2*time.Second {
		t.Errorf("lease left %s, want about 2s (1.5s rounded up)", left)
	}
	if err := d.Ack(ctxT(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
}

func TestDeclareWithDifferentConfigIsInvalidArgument(t *testing.T) {
	b := open(t)
	q := declare(t, b, adapters.QueueConfig{Lease: 2 * time.Second, MaxAttempts: 3})
	for _, cfg := range []adapters.QueueConfig{
		{Name: q.Name, Lease: 3 * time.Second, MaxAttempts: 3},
		{Name: q.Name, Lease: 2 * time.Second, MaxAttempts: 4},
		{Name: q.Name, Lease: 2 * time.Second, MaxAttempts: 3, Ordered: true},
	} {
		err := open(t).DeclareQueue(ctxT(t, time.Minute), cfg)
		if !errors.Is(err, adapters.ErrInvalidArgument) {
			t.Errorf("DeclareQueue(%+v) over %+v: %v, want ErrInvalidArgument", cfg, q, err)
		} else {
			t.Logf("%v", err)
		}
	}
}

func TestDedupeWindowBeyondFiveMinutesIsRefused(t *testing.T) {
	b := open(t)
	err := b.DeclareQueue(ctxT(t, time.Minute), adapters.QueueConfig{Name: uniqueName("q"), Dedupe: true, DedupeWindow: 10 * time.Minute})
	if !errors.Is(err, adapters.ErrInvalidArgument) || !strings.Contains(err.Error(), "5m") {
		t.Errorf("DedupeWindow 10m: %v, want ErrInvalidArgument naming SQS's 5m", err)
	}
}

func TestNameTooLongForSQSIsRefused(t *testing.T) {
	needBroker(t)
	endpoint := ""
	if server != nil {
		endpoint = server.Endpoint()
	}
	cfg := config(t, endpoint)
	cfg.Prefix = strings.Repeat("p", 20)
	b, err := sqs.Open(ctxT(t, time.Minute), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	name := strings.Repeat("a", 64) // 20 + 64 + len("-dlq.fifo") > 80
	err = b.DeclareQueue(ctxT(t, time.Minute), adapters.QueueConfig{Name: name, Ordered: true})
	if !errors.Is(err, adapters.ErrInvalidArgument) || !strings.Contains(err.Error(), "80") {
		t.Errorf("%v, want ErrInvalidArgument naming the 80-character limit", err)
	}
}

func roundTripMessages() []adapters.Message {
	return []adapters.Message{
		{ID: "empty-body", Body: []byte{}},
		{ID: "empty-header", Headers: map[string]string{"a": "", "b": "x"}, Body: []byte("text")},
		{ID: "control-chars", Headers: map[string]string{"ctl": "a\x01b\x7f", "bad-utf8": "\xff\xfe"}, Body: []byte("\x01\x02")},
		{ID: "ünïcode-id ✓", Key: "kéy", Body: []byte("plain <xml> & \"text\" 😀")},
	}
}

func TestEdgeMessagesRoundTripOnQueue(t *testing.T) {
	b := open(t)
	q := declare(t, b, adapters.QueueConfig{})
	c, err := b.Consume(ctxT(t, time.Minute), q.Name, adapters.ConsumeOptions{Prefetch: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := map[string]adapters.Message{}
	for _, m := range roundTripMessages() {
		want[m.ID] = m
		if err := b.Enqueue(ctxT(t, time.Minute), q.Name, m); err != nil {
			t.Fatalf("Enqueue %q: %v", m.ID, err)
		}
	}
	for range want {
		d, err := c.Receive(ctxT(t, 30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		checkSame(t, d.Message(), want[d.Message().ID])
		if err := d.Ack(ctxT(t, time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestEdgeMessagesRoundTripOnTopic(t *testing.T) {
	b := open(t)
	topic := uniqueName("t")
	sub, err := b.Subscribe(ctxT(t, time.Minute), topic)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	want := map[string]adapters.Message{}
	for _, m := range roundTripMessages() {
		want[m.ID] = m
		if err := b.Publish(ctxT(t, time.Minute), topic, m); err != nil {
			t.Fatalf("Publish %q: %v", m.ID, err)
		}
	}
	for range want {
		m, err := sub.Receive(ctxT(t, 30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		checkSame(t, m, want[m.ID])
	}
}

func checkSame(t *testing.T, got, want adapters.Message) {
	t.Helper()
	if got.ID != want.ID || got.Key != want.Key || string(got.Body) != string(want.Body) || len(got.Headers) != len(want.Headers) {
		t.Errorf("got %+v, want %+v", got, want)
		return
	}
	for k, v := range want.Headers {
		if got.Headers[k] != v {
			t.Errorf("%s: header %q = %q, want %q", want.ID, k, got.Headers[k], v)
		}
	}
}

func TestHeaderNamesSQSRefusesAreInvalidArgument(t *testing.T) {
	b := open(t)
	q := declare(t, b, adapters.QueueConfig{})
	for _, name := range []string{"AWS.trace", "amazon.x", "a..b", "ends."} {
		err := b.Enqueue(ctxT(t, time.Minute), q.Name, adapters.Message{Headers: map[string]string{name: "v"}, Body: []byte("x")})
		if !errors.Is(err, adapters.ErrInvalidArgument) {
			t.Errorf("header %q: %v, want ErrInvalidArgument", name, err)
		}
		err = b.Publish(ctxT(t, time.Minute), "t", adapters.Message{Headers: map[string]string{name: "v"}, Body: []byte("x")})
		if !errors.Is(err, adapters.ErrInvalidArgument) {
			t.Errorf("publish with header %q: %v, want ErrInvalidArgument", name, err)
		}
	}
}

func TestPrefetchDeliversEveryItemOnce(t *testing.T) {
	b := open(t)
	q := declare(t, b, adapters.QueueConfig{Lease: 30 * time.Second})
	const n = 25
	for i := range n {
		if err := b.Enqueue(ctxT(t, time.Minute), q.Name, adapters.Message{ID: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := b.Consume(ctxT(t, time.Minute), q.Name, adapters.ConsumeOptions{Prefetch: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	seen := map[string]bool{}
	for range n {
		d, err := c.Receive(ctxT(t, 30*time.Second))
		if err != nil {
			t.Fatalf("after %d items: %v", len(seen), err)
		}
		if seen[d.Message().ID] || d.Attempt() != 1 {
			t.Errorf("item %q again or attempt %d", d.Message().ID, d.Attempt())
		}
		seen[d.Message().ID] = true
		if err := d.Ack(ctxT(t, time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	if d, err := c.Receive(ctxT(t, 2*time.Second)); err == nil {
		t.Errorf("extra item %q after all %d were acked", d.Message().ID, n)
	}
}

func TestFIFODeadLetterKeepsKeyAndReason(t *testing.T) {
	b := open(t)
	q := declare(t, b, adapters.QueueConfig{Ordered: true, Dedupe: true})
	m := adapters.Message{ID: "poison", Key: "order-42", Headers: map[string]string{"h": "v"}, Body: []byte{0, 1, 2}}
	if err := b.Enqueue(ctxT(t, time.Minute), q.Name, m); err != nil {
		t.Fatal(err)
	}
	c, err := b.Consume(ctxT(t, time.Minute), q.Name, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, err := c.Receive(ctxT(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.DeadLetter(ctxT(t, time.Minute), "cannot parse"); err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(ctxT(t, time.Minute)); !errors.Is(err, adapters.ErrLeaseLost) {
		t.Errorf("Ack after DeadLetter: %v, want ErrLeaseLost", err)
	}
	dlq, err := b.Consume(ctxT(t, time.Minute), q.Name, adapters.ConsumeOptions{DeadLetters: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dlq.Close()
	dd, err := dlq.Receive(ctxT(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got := dd.Message()
	if got.Headers[adapters.HeaderDeadLetterReason] != "cannot parse" {
		t.Errorf("reason %q", got.Headers[adapters.HeaderDeadLetterReason])
	}
	delete(got.Headers, adapters.HeaderDeadLetterReason)
	checkSame(t, got, m)
	if err := dd.DeadLetter(ctxT(t, time.Minute), "again"); !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Errorf("DeadLetter of a dead-letter queue item: %v, want ErrInvalidArgument", err)
	}
	if err := dd.Ack(ctxT(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
}

// subscriberQueues lists the SQS queues whose names start with topic.
func subscriberQueues(t *testing.T, b *sqs.Broker, topic string) []string {
	out, err := b.SQS().ListQueues(ctxT(t, time.Minute), &awssqs.ListQueuesInput{QueueNamePrefix: aws.String(topic + "-sub-")})
	if err != nil {
		t.Fatal(err)
	}
	return out.QueueUrls
}

func topicSubscriptions(t *testing.T, b *sqs.Broker, topic string) int {
	ctx := ctxT(t, time.Minute)
	tp, err := b.SNS().CreateTopic(ctx, &sns.CreateTopicInput{Name: aws.String(topic)})
	if err != nil {
		t.Fatal(err)
	}
	out, err := b.SNS().ListSubscriptionsByTopic(ctx, &sns.ListSubscriptionsByTopicInput{TopicArn: tp.TopicArn})
	if err != nil {
		t.Fatal(err)
	}
	return len(out.Subscriptions)
}

func TestSubscriptionCloseRemovesQueueAndSubscription(t *testing.T) {
	b := open(t)
	if live {
		t.Skip("lists queues by name; run against fauxqs only")
	}
	topic := uniqueName("t")
	s1, err := b.Subscribe(ctxT(t, time.Minute), topic)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := open(t).Subscribe(ctxT(t, time.Minute), topic)
	if err != nil {
		t.Fatal(err)
	}
	if q, n := subscriberQueues(t, b, topic), topicSubscriptions(t, b, topic); len(q) != 2 || n != 2 {
		t.Fatalf("with two subscribers: queues %v, %d subscriptions; want 2 and 2", q, n)
	}
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	if q, n := subscriberQueues(t, b, topic), topicSubscriptions(t, b, topic); len(q) != 1 || n != 1 {
		t.Errorf("after one Close: queues %v, %d subscriptions; want 1 and 1", q, n)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if q, n := subscriberQueues(t, b, topic), topicSubscriptions(t, b, topic); len(q) != 0 || n != 0 {
		t.Errorf("after both Close: queues %v, %d subscriptions; want none", q, n)
	}
}

// TestFauxqsRestart restarts a fauxqs of its own on the same port. fauxqs
// keeps nothing across a restart, so this checks what can be checked: a
// subscription reports ErrGap, re-creates its queue and SNS subscription and
// receives messages published afterwards; a consumer reports ErrNotFound for
// its vanished queue and receives again once the queue is declared again.
func TestFauxqsRestart(t *testing.T) {
	needBroker(t)
	if live || server == nil {
		t.Skip("restarts a local fauxqs")
	}
	fx, err := sqstest.Start(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fx.Stop() })
	cfg := config(t, fx.Endpoint())
	cfg.WaitTime = 2 * time.Second
	b, err := sqs.Open(ctxT(t, time.Minute), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	topic := uniqueName("t")
	sub, err := b.Subscribe(ctxT(t, time.Minute), topic)
	if err != nil {
		t.Fatal(err)
	}
	q := adapters.QueueConfig{Name: uniqueName("q")}
	if err := b.DeclareQueue(ctxT(t, time.Minute), q); err != nil {
		t.Fatal(err)
	}
	c, err := b.Consume(ctxT(t, time.Minute), q.Name, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	fx2, err := fx.Restart()
	if err != nil {
		t.Fatal(err)
	}
	fx = fx2
	t.Logf("fauxqs restarted on %s", fx.Endpoint())

	// Subscription: a gap, then messages published after it re-subscribed.
	ctx := ctxT(t, 2*time.Minute)
	gaps, published := 0, 0
	got := make(chan adapters.Message, 1)
	go func() {
		for {
			m, err := sub.Receive(ctx)
			if errors.Is(err, adapters.ErrGap) {
				gaps++
				continue
			}
			if err == nil {
				got <- m
			}
			return
		}
	}()
wait:
	for {
		if err := b.Publish(ctx, topic, adapters.Message{ID: fmt.Sprint("after-", published)}); err != nil {
			t.Logf("Publish: %v", err)
		}
		published++
		select {
		case m := <-got:
			t.Logf("subscription received %q after %d publishes", m.ID, published)
			break wait
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("subscription received nothing after the restart")
		}
	}
	if gaps == 0 {
		t.Error("subscription reported no ErrGap across the restart")
	}

	// Consumer: the queue is gone with the restart.
	_, err = c.Receive(ctxT(t, time.Minute))
	if !errors.Is(err, adapters.ErrNotFound) {
		t.Fatalf("Receive after the restart: %v, want ErrNotFound (fauxqs lost the queue)", err)
	}
	if err := b.DeclareQueue(ctxT(t, time.Minute), q); err != nil {
		t.Fatal(err)
	}
	if err := b.Enqueue(ctxT(t, time.Minute), q.Name, adapters.Message{ID: "after-restart"}); err != nil {
		t.Fatal(err)
	}
	d, err := c.Receive(ctxT(t, time.Minute))
	if err != nil {
		t.Fatalf("Receive after the queue was declared again: %v", err)
	}
	if d.Message().ID != "after-restart" {
		t.Errorf("got %q", d.Message().ID)
	}
	if err := d.Ack(ctxT(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
}

func TestOrderedNackKeepsKeyOrder(t *testing.T) {
	b := open(t)
	q := declare(t, b, adapters.QueueConfig{Ordered: true, Lease: 5 * time.Second})
	for i := range 3 {
		if err := b.Enqueue(ctxT(t, time.Minute), q.Name, adapters.Message{ID: fmt.Sprint("k-", i), Key: "k"}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := b.Consume(ctxT(t, time.Minute), q.Name, adapters.ConsumeOptions{Prefetch: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	recv := func(wantID string, wantAttempt int) adapters.Delivery {
		t.Helper()
		d, err := c.Receive(ctxT(t, 30*time.Second))
		if err != nil {
			t.Fatalf("Receive (want %s): %v", wantID, err)
		}
		if d.Message().ID != wantID || d.Attempt() != wantAttempt {
			t.Fatalf("got %s attempt %d, want %s attempt %d", d.Message().ID, d.Attempt(), wantID, wantAttempt)
		}
		return d
	}
	d := recv("k-0", 1)
	if err := d.Nack(ctxT(t, time.Minute), 0); err != nil {
		t.Fatal(err)
	}
	d = recv("k-0", 2)
	if err := d.Ack(ctxT(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"k-1", "k-2"} {
		if err := recv(id, 1).Ack(ctxT(t, time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
}

// On the last attempt the adapter dead-letters an item whose lease runs
// out; an Extend must move that moment, so an item kept by Extend past its
// first deadline can still be acked and never reaches the dead-letter queue.
func TestLastAttemptExtendedIsNotDeadLettered(t *testing.T) {
	b := open(t)
	q := declare(t, b, adapters.QueueConfig{MaxAttempts: 1, Lease: 3 * time.Second})
	if err := b.Enqueue(ctxT(t, time.Minute), q.Name, adapters.Message{ID: "kept"}); err != nil {
		t.Fatal(err)
	}
	c, err := b.Consume(ctxT(t, time.Minute), q.Name, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d, err := c.Receive(ctxT(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	first := d.LeaseDeadline()
	for time.Now().Before(first.Add(4 * time.Second)) {
		if err := d.Extend(ctxT(t, time.Minute), 3*time.Second); err != nil {
			t.Fatalf("Extend: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err := d.Ack(ctxT(t, time.Minute)); err != nil {
		t.Fatalf("Ack after extending past the first deadline: %v", err)
	}
	dlq, err := b.Consume(ctxT(t, time.Minute), q.Name, adapters.ConsumeOptions{DeadLetters: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dlq.Close()
	if dd, err := dlq.Receive(ctxT(t, 3*time.Second)); err == nil {
		t.Errorf("dead-letter queue has %q (reason %q) although it was extended and acked", dd.Message().ID, dd.Message().Headers[adapters.HeaderDeadLetterReason])
	}
}

// A subscription whose owner does not call Receive drops messages beyond
// its buffer and reports ErrGap before the messages it kept.
func TestSubscriptionBufferOverflowReportsGap(t *testing.T) {
	b := open(t)
	if live {
		t.Skip("publishes 1,100 messages; run against fauxqs only")
	}
	topic := uniqueName("t")
	sub, err := b.Subscribe(ctxT(t, time.Minute), topic)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	const n = 1100 // more than the 1,024 the subscription buffers
	errs := make(chan error, 8)
	for w := range 8 {
		go func() {
			for i := w; i < n; i += 8 {
				if err := b.Publish(ctxT(t, time.Minute), topic, adapters.Message{ID: fmt.Sprint(i)}); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// Wait until the subscription has taken everything from its queue (it
	// deletes what it receives, kept or dropped).
	urls := subscriberQueues(t, b, topic)
	if len(urls) != 1 {
		t.Fatalf("subscriber queues %v", urls)
	}
	for deadline := time.Now().Add(time.Minute); ; {
		out, err := b.SQS().GetQueueAttributes(ctxT(t, time.Minute), &awssqs.GetQueueAttributesInput{QueueUrl: aws.String(urls[0]),
			AttributeNames: []types.QueueAttributeName{types.QueueAttributeNameApproximateNumberOfMessages, types.QueueAttributeNameApproximateNumberOfMessagesNotVisible}})
		if err != nil {
			t.Fatal(err)
		}
		if out.Attributes[string(types.QueueAttributeNameApproximateNumberOfMessages)] == "0" &&
			out.Attributes[string(types.QueueAttributeNameApproximateNumberOfMessagesNotVisible)] == "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("subscriber queue not drained: %v", out.Attributes)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ctx := ctxT(t, time.Minute)
	got, gaps := 0, 0
	for got < 1024 {
		_, err := sub.Receive(ctx)
		switch {
		case errors.Is(err, adapters.ErrGap):
			gaps++
			if got > 0 && gaps == 1 {
				t.Errorf("ErrGap after %d messages, want it before the kept messages", got)
			}
		case err != nil:
			t.Fatalf("after %d messages and %d gaps: %v", got, gaps, err)
		default:
			got++
		}
	}
	if gaps == 0 {
		t.Errorf("received %d messages of %d published without an ErrGap", got, n)
	}
	t.Logf("%d messages, %d gap reports", got, gaps)
}

// A consumer or broker closed while its long poll is waiting must not
// swallow an item that arrives afterwards: the server may still hand it to
// that poll, and the adapter then releases it at once instead of leaving it
// hidden for the lease (30 s here). Close itself must not wait for the
// poll either: a graceful stop of a node is prompt.
func TestClosingDoesNotSwallowLaterItems(t *testing.T) {
	needBroker(t)
	for _, tc := range []struct {
		name  string
		close func(adapters.Broker, adapters.Consumer) error
	}{
		{"Consumer.Close", func(_ adapters.Broker, c adapters.Consumer) error { return c.Close() }},
		{"Broker.Close", func(b adapters.Broker, _ adapters.Consumer) error { return b.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			endpoint := ""
			if server != nil {
				endpoint = server.Endpoint()
			}
			b1, err := sqs.Open(ctxT(t, time.Minute), config(t, endpoint))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b1.Close() })
			b2 := open(t)
			q := declare(t, b2, adapters.QueueConfig{Lease: 30 * time.Second})
			c1, err := b1.Consume(ctxT(t, time.Minute), q.Name, adapters.ConsumeOptions{})
			if err != nil {
				t.Fatal(err)
			}
			rctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			if _, err := c1.Receive(rctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Receive on the empty queue: %v", err)
			}
			// c1's long poll is still waiting at the server.
			start := time.Now()
			if err := tc.close(b1, c1); err != nil {
				t.Fatal(err)
			}
			if el := time.Since(start); el > 10*time.Second {
				t.Errorf("%s took %s: it waited for the long poll", tc.name, el)
			}
			if err := b2.Enqueue(ctxT(t, time.Minute), q.Name, adapters.Message{ID: "later"}); err != nil {
				t.Fatal(err)
			}
			c2, err := b2.Consume(ctxT(t, time.Minute), q.Name, adapters.ConsumeOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			start = time.Now()
			d, err := c2.Receive(ctxT(t, 15*time.Second))
			if err != nil {
				t.Fatalf("item enqueued after %s not received within 15s (lease 30s): %v", tc.name, err)
			}
			t.Logf("received %q attempt %d after %s", d.Message().ID, d.Attempt(), time.Since(start))
			if err := d.Ack(ctxT(t, time.Minute)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Operations on one delivery run one at a time: an Ack that arrives while
// an Extend is being sent waits for it instead of failing, and of two
// concurrent Acks exactly one settles the item.
func TestOperationsOnOneDeliveryWaitForEachOther(t *testing.T) {
	b := open(t)
	q := declare(t, b, adapters.QueueConfig{Lease: 30 * time.Second})
	const n = 8
	for i := range n {
		if err := b.Enqueue(ctxT(t, time.Minute), q.Name, adapters.Message{ID: fmt.Sprintf("item-%d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := b.Consume(ctxT(t, time.Minute), q.Name, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range n {
		d, err := c.Receive(ctxT(t, 30*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		first := make(chan error, 1)
		if i%2 == 0 {
			go func() { first <- d.Extend(ctxT(t, time.Minute), 10*time.Second) }()
		} else {
			go func() { first <- d.Ack(ctxT(t, time.Minute)) }()
		}
		time.Sleep(time.Millisecond) // likely while the first call is in flight
		ack := d.Ack(ctxT(t, time.Minute))
		other := <-first
		if i%2 == 0 {
			// The Ack waited for the Extend, or ran first and the
			// Extend found the item settled.
			if ack != nil {
				t.Errorf("%s: Ack concurrent with an Extend: %v", d.Message().ID, ack)
			}
			if other != nil && !errors.Is(other, adapters.ErrLeaseLost) {
				t.Errorf("%s: Extend concurrent with an Ack: %v", d.Message().ID, other)
			}
			continue
		}
		if (ack == nil) == (other == nil) {
			t.Errorf("%s: two concurrent Acks returned %v and %v, want exactly one nil", d.Message().ID, ack, other)
		}
		for _, err := range []error{ack, other} {
			if err != nil && !errors.Is(err, adapters.ErrLeaseLost) {
				t.Errorf("%s: the losing Ack: %v, want ErrLeaseLost", d.Message().ID, err)
			}
		}
	}
	if d, err := c.Receive(ctxT(t, 2*time.Second)); err == nil {
		t.Errorf("%q delivered again after it was acked", d.Message().ID)
	}
}

// TestCloseWaitsForTheDeletesOfAcks: Ack returns without waiting for SQS,
// and Consumer.Close returns only once SQS answered the deletes: right
// after Close, over a link with a 300 ms round trip, nothing acknowledged is
// still held in SQS.
func TestCloseWaitsForTheDeletesOfAcks(t *testing.T) {
	direct := open(t)
	if server == nil {
		t.Skip("needs the local test server (a delaying proxy in front of it)")
	}
	far := openVia(t, delayProxy(t, server.Endpoint(), 150*time.Millisecond))
	ctx := context.Background()
	q := declare(t, direct, adapters.QueueConfig{Lease: time.Minute})
	const n = 5
	for i := range n {
		if err := direct.Enqueue(ctx, q.Name, adapters.Message{ID: fmt.Sprint(i), Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := far.Consume(ctx, q.Name, adapters.ConsumeOptions{Prefetch: n})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for range n {
		d, err := c.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	acked := time.Since(start)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := direct.QueueStats(ctx, q.Name)
	if err != nil {
		t.Fatal(err)
	}
	if st.Depth != 0 || st.InFlight != 0 {
		t.Fatalf("right after Close: depth %d, in flight %d; want every acknowledged item deleted", st.Depth, st.InFlight)
	}
	t.Logf("%d receives and acks over a 300 ms round trip took %s", n, acked.Round(time.Millisecond))
}
