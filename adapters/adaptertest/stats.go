package adaptertest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

func (s *suite) statsCases() []testCase {
	return []testCase{
		{"QueueStatsCountWaitingHeldAndDead", s.testQueueStats},
	}
}

// QueueStats counts the items waiting, the one held under a lease and the
// dead-lettered one; a count the broker cannot tell is Unknown, never a
// wrong number. Brokers that count asynchronously get until the wait bound
// to agree.
func (s *suite) testQueueStats(t *testing.T) {
	s.skipUnless(t, "QueueStats", s.caps.QueueStats)
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{})
	c := s.consume(t, b, q.Name, adapters.ConsumeOptions{Prefetch: 1})
	for i := range 3 {
		s.enqueue(t, b, q.Name, adapters.Message{ID: fmt.Sprintf("stats-%d", i), Body: []byte("x")})
	}
	d := s.receive(t, c, "item to hold")
	s.waitStats(t, b, q.Name, 2, 1, 0)
	if s.caps.DeadLetter.Available() {
		if err := d.DeadLetter(s.ctx(t), "stats test"); err != nil {
			t.Fatalf("DeadLetter: %v", err)
		}
		// A broker that pushes (RabbitMQ) hands the consumer the next
		// item at once; closing it puts that back.
		if err := c.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		s.waitStats(t, b, q.Name, 2, 0, 1)
	}

	if _, err := adapters.Stats(s.ctx(t), b, unique("never-declared")); !errors.Is(err, adapters.ErrNotFound) {
		t.Errorf("QueueStats of an undeclared queue: %v, want ErrNotFound", err)
	}
}

func (s *suite) waitStats(t *testing.T, b adapters.Broker, queue string, depth, inFlight, dead int64) {
	t.Helper()
	match := func(got, want int64) bool { return got == adapters.Unknown || got == want }
	deadline := time.Now().Add(s.wait)
	var st adapters.QueueStats
	var err error
	for time.Now().Before(deadline) {
		st, err = adapters.Stats(s.ctx(t), b, queue)
		// A broker that cannot tell what is held may count it as waiting.
		depthOK := match(st.Depth, depth) || (st.InFlight == adapters.Unknown && st.Depth == depth+inFlight)
		if err == nil && depthOK && match(st.InFlight, inFlight) && match(st.DeadLetters, dead) {
			if st.OldestAge != adapters.Unknown && st.Depth+max(st.InFlight, 0) > 0 && st.OldestAge <= 0 {
				t.Errorf("OldestAge %s with items in the queue", st.OldestAge)
			}
			t.Logf("stats: %+v", st)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("QueueStats = %+v, %v; want depth %d, in flight %d, dead letters %d (or Unknown)", st, err, depth, inFlight, dead)
}
