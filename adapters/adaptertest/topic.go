package adaptertest

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/clusterbus/clusterbus/adapters"
)

func (s *suite) topicCases() []testCase {
	return []testCase{
		{"BroadcastReachesEverySubscriber", s.testBroadcastReachesEverySubscriber},
		{"LateSubscriberGetsNoEarlierMessages", s.testLateSubscriber},
		{"HeadersAndBinaryBodyRoundTrip", s.testTopicRoundTrip},
		{"ClosedSubscriptionReceiveIsClosed", s.testClosedSubscription},
	}
}

// Every subscriber, each on its own client (and the publisher's own
// client), receives every message published after it subscribed, each once.
// Order is not part of the contract, so only the set is checked.
func (s *suite) testBroadcastReachesEverySubscriber(t *testing.T) {
	topic := unique("t")
	const subscribers, messages = 3, 5
	pub := s.open(t)
	subs := make([]adapters.Subscription, subscribers)
	for i := range subs {
		subs[i] = s.subscribe(t, s.open(t), topic)
	}
	// The publisher's own client subscribes too: a node sees its own
	// broadcasts.
	self := s.subscribe(t, pub, topic)
	subs = append(subs, self)
	want := map[string]bool{}
	for i := range messages {
		m := adapters.Message{ID: fmt.Sprintf("m%d", i), Body: []byte(fmt.Sprintf("broadcast %d", i))}
		want[m.ID] = true
		s.publish(t, pub, topic, m)
	}
	for i, sub := range subs {
		got := map[string]bool{}
		for range messages {
			m := s.recvMsg(t, sub, fmt.Sprintf("subscriber %d", i))
			if got[m.ID] {
				t.Errorf("subscriber %d: message %q twice", i, m.ID)
			}
			if !want[m.ID] {
				t.Errorf("subscriber %d: unexpected message %q", i, m.ID)
			}
			if string(m.Body) != "broadcast "+m.ID[1:] {
				t.Errorf("subscriber %d: message %q body %q", i, m.ID, m.Body)
			}
			got[m.ID] = true
		}
	}
}

// A subscription made after a message was published never receives it: the
// first message it gets is the first one published after it subscribed.
func (s *suite) testLateSubscriber(t *testing.T) {
	topic := unique("t")
	pub := s.open(t)
	early := s.subscribe(t, s.open(t), topic)
	s.publish(t, pub, topic, adapters.Message{ID: "before", Body: []byte("before")})
	// The early subscriber has it, so the broker has dispatched it.
	if m := s.recvMsg(t, early, "early subscriber"); m.ID != "before" {
		t.Fatalf("early subscriber got %q, want \"before\"", m.ID)
	}
	late := s.subscribe(t, s.open(t), topic)
	s.publish(t, pub, topic, adapters.Message{ID: "after", Body: []byte("after")})
	if m := s.recvMsg(t, late, "late subscriber"); m.ID != "after" {
		t.Fatalf("late subscriber's first message is %q, want \"after\" (messages published before Subscribe must not be delivered)", m.ID)
	}
	if m := s.recvMsg(t, early, "early subscriber"); m.ID != "after" {
		t.Fatalf("early subscriber's second message is %q, want \"after\"", m.ID)
	}
}

// ID, key, headers (UTF-8 values, mixed-case names) and a body holding all
// 256 byte values arrive unchanged on a topic.
func (s *suite) testTopicRoundTrip(t *testing.T) {
	topic := unique("t")
	b := s.open(t)
	sub := s.subscribe(t, s.open(t), topic)
	want := richMessage()
	s.publish(t, b, topic, want)
	got := s.recvMsg(t, sub, "round trip")
	if d := diffMessage(got, want); d != "" {
		t.Errorf("topic message changed in transit: %s", d)
	}
}

// Receive on a closed subscription returns ErrClosed; Close twice is
// harmless; a Receive blocked when the subscription is closed returns
// ErrClosed promptly.
func (s *suite) testClosedSubscription(t *testing.T) {
	topic := unique("t")
	b := s.open(t)
	sub := s.subscribe(t, b, topic)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.wait)
		defer cancel()
		_, err := sub.Receive(ctx)
		done <- err
	}()
	if err := sub.Close(); err != nil {
		t.Fatalf("Subscription.Close: %v", err)
	}
	if err := <-done; !errors.Is(err, adapters.ErrClosed) {
		t.Errorf("Receive blocked across Close returned %v, want ErrClosed", err)
	}
	if _, err := sub.Receive(s.ctx(t)); !errors.Is(err, adapters.ErrClosed) {
		t.Errorf("Receive after Close: %v, want ErrClosed", err)
	}
	if err := sub.Close(); err != nil && !errors.Is(err, adapters.ErrClosed) {
		t.Errorf("second Close: %v, want nil or ErrClosed", err)
	}
}
