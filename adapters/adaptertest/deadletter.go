package adaptertest

import (
	"context"
	"testing"

	"github.com/clusterbus/clusterbus/adapters"
)

func (s *suite) deadLetterCases() []testCase {
	return []testCase{
		{"DeadLetterKeepsMessageAndReason", s.testDeadLetter},
		{"MaxAttemptsByNackDeadLetters", s.testMaxAttemptsNack},
		{"MaxAttemptsByLeaseExpiryDeadLetters", s.testMaxAttemptsExpiry},
	}
}

// checkDead receives the dead-lettered item from the queue's dead-letter
// queue and checks it is want with a non-empty reason (containing
// wantReason if that is set). It acks it.
func (s *suite) checkDead(t *testing.T, b adapters.Broker, q adapters.QueueConfig, want adapters.Message, wantReason string) {
	t.Helper()
	dlq := s.consume(t, b, q.Name, adapters.ConsumeOptions{DeadLetters: true})
	d := s.receive(t, dlq, "dead-letter queue")
	if diff := diffMessage(d.Message(), want); diff != "" {
		t.Errorf("dead-lettered item changed: %s", diff)
	}
	reason, ok := d.Message().Headers[adapters.HeaderDeadLetterReason]
	switch {
	case !ok || reason == "":
		t.Errorf("dead-lettered item has no %s header; headers %v", adapters.HeaderDeadLetterReason, d.Message().Headers)
	case wantReason != "" && reason != wantReason:
		t.Errorf("dead-letter reason %q, want %q", reason, wantReason)
	default:
		t.Logf("dead-letter reason: %q", reason)
	}
	s.ack(t, d)
	s.expectNone(t, dlq, s.lease, "dead-letter queue after its item was acked")
}

// DeadLetter(reason) moves the item to the dead-letter queue with its ID,
// key, headers and body intact and the reason in HeaderDeadLetterReason; the
// queue itself no longer has it.
func (s *suite) testDeadLetter(t *testing.T) {
	s.skipUnless(t, "DeadLetter", s.caps.DeadLetter)
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{})
	c := s.consume(t, b, q.Name, adapters.ConsumeOptions{})
	want := richMessage()
	s.enqueue(t, b, q.Name, want)
	d := s.receive(t, c, "item to dead-letter")
	const reason = "decode: unexpected end of input at byte 3"
	if err := d.DeadLetter(s.ctx(t), reason); err != nil {
		t.Fatalf("DeadLetter: %v", err)
	}
	s.checkDead(t, s.open(t), q, want, reason)
	s.expectNone(t, c, s.lease+s.lease/2, "queue after its item was dead-lettered")
}

// With MaxAttempts 2, an item nacked on both deliveries goes to the
// dead-letter queue with a reason instead of a third delivery.
func (s *suite) testMaxAttemptsNack(t *testing.T) {
	s.skipUnless(t, "DeadLetter", s.caps.DeadLetter)
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{MaxAttempts: 2})
	c := s.consume(t, b, q.Name, adapters.ConsumeOptions{})
	want := richMessage()
	s.enqueue(t, b, q.Name, want)
	for attempt := 1; attempt <= 2; attempt++ {
		d := s.receive(t, c, "delivery to nack")
		if d.Attempt() != attempt {
			t.Errorf("Attempt %d, want %d", d.Attempt(), attempt)
		}
		if err := d.Nack(context.Background(), 0); err != nil {
			t.Fatalf("Nack(0) on attempt %d: %v", attempt, err)
		}
	}
	s.checkDead(t, b, q, want, "")
	s.expectNone(t, c, s.lease+s.lease/2, "queue after MaxAttempts was used up")
}

// With MaxAttempts 2, an item whose lease expires on both deliveries goes to
// the dead-letter queue with a reason instead of a third delivery.
func (s *suite) testMaxAttemptsExpiry(t *testing.T) {
	s.skipUnless(t, "DeadLetter", s.caps.DeadLetter)
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{MaxAttempts: 2})
	c := s.consume(t, b, q.Name, adapters.ConsumeOptions{})
	want := richMessage()
	s.enqueue(t, b, q.Name, want)
	for attempt := 1; attempt <= 2; attempt++ {
		d := s.receive(t, c, "delivery left to expire")
		if d.Attempt() != attempt {
			t.Errorf("Attempt %d, want %d", d.Attempt(), attempt)
		}
	}
	s.checkDead(t, b, q, want, "")
	s.expectNone(t, c, s.lease+s.lease/2, "queue after MaxAttempts was used up")
}
