package mem

import (
	"fmt"
	"slices"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// queue is a leased queue and its dead-letter queue. Every field is guarded
// by Server.mu. Leases expire lazily: every operation on the queue, and
// every waiting consumer when the earliest deadline passes, sweeps it.
type queue struct {
	cfg     adapters.QueueConfig
	items   []*item // in enqueue order
	dead    []*item // in dead-letter order
	seen    map[string]time.Time
	seenLog []seenID // in time order, to forget IDs past the window
	sig     chan struct{}
	deleted bool
}

type seenID struct {
	id string
	at time.Time
}

type item struct {
	seq         uint64
	msg         adapters.Message
	attempts    int
	availableAt time.Time
	holder      *consumer // nil unless leased
	token       uint64    // changes whenever a lease ends
	deadline    time.Time
	dead        bool
}

func newQueue(cfg adapters.QueueConfig) *queue {
	return &queue{cfg: cfg, seen: map[string]time.Time{}, sig: make(chan struct{})}
}

// signal wakes every consumer waiting on the queue.
func (q *queue) signal() {
	close(q.sig)
	q.sig = make(chan struct{})
}

// duplicate reports whether id was enqueued within the dedupe window, and
// remembers it if not.
func (q *queue) duplicate(id string, now time.Time) bool {
	if !q.cfg.Dedupe {
		return false
	}
	cut := now.Add(-q.cfg.DedupeWindow)
	n := 0
	for n < len(q.seenLog) && !q.seenLog[n].at.After(cut) {
		if at, ok := q.seen[q.seenLog[n].id]; ok && at.Equal(q.seenLog[n].at) {
			delete(q.seen, q.seenLog[n].id)
		}
		n++
	}
	q.seenLog = q.seenLog[n:]
	if at, ok := q.seen[id]; ok && at.After(cut) {
		return true
	}
	q.seen[id] = now
	q.seenLog = append(q.seenLog, seenID{id, now})
	return false
}

// sweep ends the leases that have expired by now.
func (q *queue) sweep(s *Server, now time.Time) {
	for _, list := range [][]*item{q.items, q.dead} {
		var expired []*item
		for _, it := range list {
			if it.holder != nil && !now.Before(it.deadline) {
				expired = append(expired, it)
			}
		}
		for _, it := range expired {
			q.release(s, it, now, now, "lease expired")
		}
	}
}

// release ends the lease on it; the item is available again at availableAt,
// or, if its attempts are used up, moves to the dead-letter queue.
func (q *queue) release(s *Server, it *item, now, availableAt time.Time, why string) {
	it.holder = nil
	s.token++
	it.token = s.token
	it.availableAt = availableAt
	if !it.dead && it.attempts >= q.cfg.MaxAttempts {
		q.deadLetter(s, it, now, fmt.Sprintf("max attempts (%d) used up; last attempt: %s", q.cfg.MaxAttempts, why))
	}
	q.signal()
}

// releaseHolder releases every item that con holds.
func (q *queue) releaseHolder(s *Server, con *consumer, now time.Time, why string) {
	var held []*item
	for _, list := range [][]*item{q.items, q.dead} {
		for _, it := range list {
			if it.holder == con {
				held = append(held, it)
			}
		}
	}
	for _, it := range held {
		q.release(s, it, now, now, why)
	}
}

// deadLetter moves it (not leased) from the queue to the dead-letter queue
// with the reason, or, if it is already there, records the new reason.
func (q *queue) deadLetter(s *Server, it *item, now time.Time, reason string) {
	h := make(map[string]string, len(it.msg.Headers)+1)
	for k, v := range it.msg.Headers {
		h[k] = v
	}
	h[adapters.HeaderDeadLetterReason] = reason
	it.msg.Headers = h
	it.holder = nil
	it.availableAt = now
	if it.dead {
		return
	}
	q.remove(it)
	it.dead = true
	it.attempts = 0
	q.dead = append(q.dead, it)
	q.signal()
}

// remove takes it out of whichever list holds it.
func (q *queue) remove(it *item) {
	list := &q.items
	if it.dead {
		list = &q.dead
	}
	if i := slices.Index(*list, it); i >= 0 {
		*list = slices.Delete(*list, i, i+1)
	}
}

// next leases the first available item of the list (the dead-letter queue
// if dead) to con, honouring per-key order on Ordered queues. If none is
// available it returns the earliest time one may become available (zero if
// none is pending).
func (q *queue) next(s *Server, con *consumer, dead bool, now time.Time) (*item, time.Time) {
	q.sweep(s, now)
	list := q.items
	if dead {
		list = q.dead
	}
	var blocked map[string]bool
	if q.cfg.Ordered && !dead {
		blocked = map[string]bool{}
	}
	for _, it := range list {
		busy := it.holder != nil || it.availableAt.After(now)
		if blocked != nil && it.msg.Key != "" {
			if blocked[it.msg.Key] {
				continue
			}
			if busy {
				blocked[it.msg.Key] = true
			}
		}
		if busy {
			continue
		}
		it.attempts++
		it.holder = con
		s.token++
		it.token = s.token
		it.deadline = now.Add(q.cfg.Lease)
		return it, time.Time{}
	}
	// Nothing now: wake at the earliest delay end or lease deadline of
	// either list, since an expiry in the queue can feed the dead letters.
	var wake time.Time
	for _, l := range [][]*item{q.items, q.dead} {
		for _, it := range l {
			t := it.availableAt
			if it.holder != nil {
				t = it.deadline
			}
			if t.After(now) && (wake.IsZero() || t.Before(wake)) {
				wake = t
			}
		}
	}
	return nil, wake
}
