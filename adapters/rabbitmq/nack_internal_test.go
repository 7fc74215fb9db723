package rabbitmq

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// TestNackedPublishIsSentAgain: RabbitMQ nacks a publish a queue cannot
// take (here a full queue with x-overflow reject-publish; after a broker
// restart, a quorum queue without a leader yet). publish sends it again
// after a backoff, so a queue that frees up within the retries takes it,
// and one that does not gives the caller an error naming the nacks.
func TestNackedPublishIsSentAgain(t *testing.T) {
	requireBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := Open(ctx, testURL(), Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	conn, err := amqp.Dial(testURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q := fmt.Sprintf("cbt-nack-%d", time.Now().UnixNano())
	if _, err := ch.QueueDeclare(q, false, true, false, false, amqp.Table{"x-max-length": int32(1), "x-overflow": "reject-publish"}); err != nil {
		t.Fatal(err)
	}
	defer ch.QueueDelete(q, false, false, false)
	msg := amqp.Publishing{Body: []byte("x")}
	if err := b.publish(ctx, "", q, true, msg); err != nil {
		t.Fatalf("first publish into an empty queue: %v", err)
	}

	// Full: every try is nacked, and the error says so after the retries.
	start := time.Now()
	err = b.publish(ctx, "", q, true, msg)
	if err == nil || !strings.Contains(err.Error(), "basic.nack, 6 times") {
		t.Fatalf("publish into a full reject-publish queue: %v, want the nack error after 5 retries", err)
	}
	if took := time.Since(start); took < time.Second {
		t.Fatalf("gave up after %s: the retries did not back off", took)
	}

	// Freed while the publish is retrying: it goes in.
	go func() {
		time.Sleep(200 * time.Millisecond)
		if _, err := ch.QueuePurge(q, false); err != nil {
			t.Error(err)
		}
	}()
	if err := b.publish(ctx, "", q, true, msg); err != nil {
		t.Fatalf("publish retried while the queue was freed: %v", err)
	}
	if n, err := ch.QueueDeclarePassive(q, false, true, false, false, amqp.Table{"x-max-length": int32(1), "x-overflow": "reject-publish"}); err != nil || n.Messages != 1 {
		t.Fatalf("queue after the retried publish: %+v %v, want 1 message", n, err)
	}
}
