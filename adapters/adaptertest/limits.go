package adaptertest

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/clusterbus/clusterbus/adapters"
)

func (s *suite) limitCases() []testCase {
	return []testCase{
		{"QueueTooLargeRejectedBeforeSending", s.testQueueTooLarge},
		{"QueueTooManyHeadersRejectedBeforeSending", s.testQueueTooManyHeaders},
		{"QueueMessageAtSizeLimitAccepted", s.testQueueAtLimit},
		{"TopicTooLargeRejectedBeforeSending", s.testTopicTooLarge},
		{"TopicTooManyHeadersRejectedBeforeSending", s.testTopicTooManyHeaders},
	}
}

func (s *suite) tooLarge(t *testing.T) adapters.Message {
	if s.caps.MaxMessageSize <= 0 {
		t.Skipf("%s: Capabilities.MaxMessageSize is 0 (no limit)", s.caps.Name)
	}
	return adapters.Message{ID: "too-large", Body: make([]byte, s.caps.MaxMessageSize+1)}
}

func (s *suite) tooManyHeaders(t *testing.T) adapters.Message {
	if s.caps.MaxHeaders <= 0 {
		t.Skipf("%s: Capabilities.MaxHeaders is 0 (no limit beyond the size)", s.caps.Name)
	}
	h := map[string]string{}
	for i := range s.caps.MaxHeaders + 1 {
		h[fmt.Sprintf("h%d", i)] = "v"
	}
	return adapters.Message{ID: "too-many-headers", Headers: h, Body: []byte("x")}
}

// rejectedOnQueue enqueues bad, wants ErrTooLarge, then checks that the
// first item a consumer gets is the marker enqueued afterwards: nothing of
// bad reached the queue.
func (s *suite) rejectedOnQueue(t *testing.T, bad adapters.Message) {
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{})
	err := b.Enqueue(s.ctx(t), q.Name, bad)
	if !errors.Is(err, adapters.ErrTooLarge) {
		t.Fatalf("Enqueue of %d bytes with %d headers: %v, want ErrTooLarge", adapters.Size(bad), len(bad.Headers), err)
	}
	t.Logf("rejected: %v", err)
	s.enqueue(t, b, q.Name, adapters.Message{ID: "marker"})
	c := s.consume(t, b, q.Name, adapters.ConsumeOptions{})
	d := s.receive(t, c, "marker")
	if d.Message().ID != "marker" {
		t.Fatalf("first item is %q (%d bytes), want the marker: the rejected message reached the queue", d.Message().ID, len(d.Message().Body))
	}
	s.ack(t, d)
	s.expectNone(t, c, s.lease/2, "queue after the marker")
}

func (s *suite) rejectedOnTopic(t *testing.T, bad adapters.Message) {
	topic := unique("t")
	b := s.open(t)
	sub := s.subscribe(t, s.open(t), topic)
	err := b.Publish(s.ctx(t), topic, bad)
	if !errors.Is(err, adapters.ErrTooLarge) {
		t.Fatalf("Publish of %d bytes with %d headers: %v, want ErrTooLarge", adapters.Size(bad), len(bad.Headers), err)
	}
	t.Logf("rejected: %v", err)
	s.publish(t, b, topic, adapters.Message{ID: "marker"})
	if m := s.recvMsg(t, sub, "marker"); m.ID != "marker" {
		t.Fatalf("first message is %q (%d bytes), want the marker: the rejected message was sent", m.ID, len(m.Body))
	}
}

// A message over Capabilities.MaxMessageSize fails Enqueue with ErrTooLarge
// and the queue stays empty.
func (s *suite) testQueueTooLarge(t *testing.T) { s.rejectedOnQueue(t, s.tooLarge(t)) }

// A message with more than Capabilities.MaxHeaders headers fails Enqueue
// with ErrTooLarge and the queue stays empty.
func (s *suite) testQueueTooManyHeaders(t *testing.T) { s.rejectedOnQueue(t, s.tooManyHeaders(t)) }

// Publish of a message over MaxMessageSize fails with ErrTooLarge and no
// subscriber receives anything.
func (s *suite) testTopicTooLarge(t *testing.T) { s.rejectedOnTopic(t, s.tooLarge(t)) }

// Publish with more than MaxHeaders headers fails with ErrTooLarge and no
// subscriber receives anything.
func (s *suite) testTopicTooManyHeaders(t *testing.T) { s.rejectedOnTopic(t, s.tooManyHeaders(t)) }

// A message of exactly MaxMessageSize (as counted by adapters.Size, with
// MaxHeaders headers) is accepted and round-trips: the advertised limit is
// real, not a guess above what the broker takes.
func (s *suite) testQueueAtLimit(t *testing.T) {
	if s.caps.MaxMessageSize <= 0 {
		t.Skipf("%s: Capabilities.MaxMessageSize is 0 (no limit)", s.caps.Name)
	}
	m := adapters.Message{ID: unique("id"), Key: "k", Headers: map[string]string{}}
	n := s.caps.MaxHeaders
	if n <= 0 || n > 8 {
		n = 8
	}
	for i := range n {
		m.Headers[fmt.Sprintf("h%02d", i)] = fmt.Sprintf("value-%02d", i)
	}
	body := s.caps.MaxMessageSize - adapters.Size(m)
	m.Body = bytes.Repeat([]byte{0xfe, 'a', 0x00}, body/3+1)[:body]
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{})
	s.enqueue(t, b, q.Name, m)
	c := s.consume(t, b, q.Name, adapters.ConsumeOptions{})
	d := s.receive(t, c, "message at the size limit")
	if diff := diffMessage(d.Message(), m); diff != "" {
		t.Errorf("message at the size limit changed: %s", diff)
	}
	s.ack(t, d)
}
