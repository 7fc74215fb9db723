package rabbitmq

import (
	"errors"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/clusterbus/clusterbus/adapters"
)

// An item that went through a delay queue and was then dead-lettered by
// the delivery limit carries two deaths; the reason is the newest one
// (x-death[0]), not x-first-death-reason ("expired", from the delay queue).
func TestDeadLetterReasonIsNewestDeath(t *testing.T) {
	h := amqp.Table{
		"x-death": []interface{}{
			amqp.Table{"count": int64(1), "queue": "cb.q.a", "reason": "delivery_limit"},
			amqp.Table{"count": int64(1), "queue": "cb.q.a.delay.150ms", "reason": "expired"},
		},
		"x-first-death-queue":  "cb.q.a.delay.150ms",
		"x-first-death-reason": "expired",
	}
	if got := deadLetterReason(h, 3); !strings.Contains(got, "max attempts (3)") {
		t.Errorf("reason %q, want the delivery limit's max attempts (3)", got)
	}
	if got := deadLetterReason(amqp.Table{"x-first-death-reason": "expired"}, 3); got != "dead-lettered by RabbitMQ: expired" {
		t.Errorf("reason without x-death: %q, want it from x-first-death-reason", got)
	}
	if got := deadLetterReason(amqp.Table{}, 3); got != "" {
		t.Errorf("reason of an item RabbitMQ did not dead-letter: %q, want none", got)
	}
}

// withoutAtLeastOnce is args as an earlier version of the adapter declared
// them: dead-lettering at-most-once.
func withoutAtLeastOnce(args amqp.Table) amqp.Table {
	old := amqp.Table{}
	for k, v := range args {
		if k != "x-dead-letter-strategy" && k != "x-overflow" {
			old[k] = v
		}
	}
	return old
}

// The queue and the delay queues the adapter declares dead-letter
// at-least-once: RabbitMQ holds x-dead-letter-strategy=at-least-once on
// both (redeclaring them without it is refused), and an item still makes
// the round trip through a delay queue.
func TestQueueAndDelayQueueDeadLetterAtLeastOnce(t *testing.T) {
	requireBroker(t)
	b := openTest(t, testURL())
	q := declareTest(t, b, adapters.QueueConfig{Lease: time.Minute, MaxAttempts: 4})
	if err := b.Enqueue(testCtx(t), q.Name, adapters.Message{ID: "d"}); err != nil {
		t.Fatal(err)
	}
	c, err := b.Consume(testCtx(t), q.Name, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	d := receive(t, c, 30*time.Second)
	if err := d.Nack(testCtx(t), 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	d = receive(t, c, 30*time.Second)
	if d.Message().ID != "d" || d.Attempt() != 2 {
		t.Fatalf("after the delay: %q attempt %d, want d attempt 2", d.Message().ID, d.Attempt())
	}
	d.Ack(testCtx(t))

	conn, err := amqp.Dial(testURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cfg := q.WithDefaults()
	for name, args := range map[string]amqp.Table{
		queueName(q.Name): queueArgs(cfg),
	} {
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
			t.Fatalf("redeclare %s with the adapter's arguments: %v", name, err)
		}
		_, err = ch.QueueDeclare(name, true, false, false, false, withoutAtLeastOnce(args))
		if !isCode(err, amqp.PreconditionFailed) || !strings.Contains(err.Error(), "at-least-once") {
			t.Errorf("redeclare %s without at-least-once dead-lettering: %v, want 406 naming at-least-once", name, err)
		}
		ch.Close()
	}
}

// A queue declared by an earlier version of the adapter (dead-lettering
// at-most-once) cannot be redeclared in place; DeclareQueue says which
// argument differs, why, and what to do.
func TestDeclareOverEarlierVersionQueueSaysDeleteOrRename(t *testing.T) {
	requireBroker(t)
	b := openTest(t, testURL())
	cfg := adapters.QueueConfig{Name: uniqueName("q"), Lease: time.Minute}.WithDefaults()
	conn, err := amqp.Dial(testURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queueName(cfg.Name), true, false, false, false, withoutAtLeastOnce(queueArgs(cfg))); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if ch, err := conn.Channel(); err == nil {
			for _, n := range []string{queueName(cfg.Name), dlqName(cfg.Name), configName(cfg.Name)} {
				ch.QueueDelete(n, false, false, false)
			}
		}
	})
	err = b.DeclareQueue(testCtx(t), cfg)
	if !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Fatalf("DeclareQueue over an at-most-once queue: %v, want ErrInvalidArgument", err)
	}
	t.Log(err)
	for _, want := range []string{"at-least-once", "earlier versions", "delete the queue", "new queue name", "PRECONDITION_FAILED"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q", want)
		}
	}
}
