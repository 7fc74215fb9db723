package mem

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// queue is a leased queue and its dead-letter queue. Every field is guarded
// by Server.mu. Leases expire lazily: every operation on the queue, and
// every waiting consumer when the earliest deadline passes, sweeps it.
//
// Settled items are only marked gone and compacted away in bulk, and the
// leased and delayed items are kept in sets, so that a long backlog costs
// little per operation.
type queue struct {
	cfg        adapters.QueueConfig
	items      []*item // in enqueue order; may hold gone items
	dead       []*item // in dead-letter order; may hold gone items
	goneItems  int
	goneDead   int
	leased     map[*item]struct{}
	delayed    map[*item]struct{} // released with availableAt in the future
	nextExpiry time.Time          // no lease expires before this
	seen       map[string]time.Time
	seenLog    []seenID // in time order, to forget IDs past the window
	sig        chan struct{}
	deleted    bool
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
	gone        bool
}

func newQueue(cfg adapters.QueueConfig) *queue {
	return &queue{
		cfg:     cfg,
		leased:  map[*item]struct{}{},
		delayed: map[*item]struct{}{},
		seen:    map[string]time.Time{},
		sig:     make(chan struct{}),
	}
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

// lease hands it to con until now + the queue lease.
func (q *queue) lease(s *Server, it *item, con *consumer, now time.Time) {
	it.attempts++
	it.holder = con
	s.token++
	it.token = s.token
	it.deadline = now.Add(q.cfg.Lease)
	q.leased[it] = struct{}{}
	delete(q.delayed, it)
	if q.nextExpiry.IsZero() || it.deadline.Before(q.nextExpiry) {
		q.nextExpiry = it.deadline
	}
}

// unlease ends the lease on it, if any, so its deliveries lose it.
func (q *queue) unlease(s *Server, it *item) {
	it.holder = nil
	s.token++
	it.token = s.token
	delete(q.leased, it)
}

// sweep ends the leases that have expired by now.
func (q *queue) sweep(s *Server, now time.Time) {
	if q.nextExpiry.IsZero() || now.Before(q.nextExpiry) {
		return
	}
	var expired []*item
	q.nextExpiry = time.Time{}
	for it := range q.leased {
		if !now.Before(it.deadline) {
			expired = append(expired, it)
		} else if q.nextExpiry.IsZero() || it.deadline.Before(q.nextExpiry) {
			q.nextExpiry = it.deadline
		}
	}
	// Release in enqueue order, so that redeliveries keep it.
	slices.SortFunc(expired, func(a, b *item) int { return cmp.Compare(a.seq, b.seq) })
	for _, it := range expired {
		q.release(s, it, now, now, "lease expired")
	}
}

// release ends the lease on it; the item is available again at availableAt,
// or, if its attempts are used up, moves to the dead-letter queue.
func (q *queue) release(s *Server, it *item, now, availableAt time.Time, why string) {
	q.unlease(s, it)
	it.availableAt = availableAt
	if availableAt.After(now) {
		q.delayed[it] = struct{}{}
	}
	if !it.dead && it.attempts >= q.cfg.MaxAttempts && s.caps.DeadLetter.Available() {
		q.deadLetter(s, it, now, fmt.Sprintf("max attempts (%d) used up; last attempt: %s", q.cfg.MaxAttempts, why))
	}
	q.signal()
}

// releaseHolder releases every item that con holds.
func (q *queue) releaseHolder(s *Server, con *consumer, now time.Time, why string) {
	var held []*item
	for it := range q.leased {
		if it.holder == con {
			held = append(held, it)
		}
	}
	slices.SortFunc(held, func(a, b *item) int { return cmp.Compare(a.seq, b.seq) })
	for _, it := range held {
		q.release(s, it, now, now, why)
	}
}

// deadLetter moves it from the queue to the dead-letter queue with the
// reason, or, if it is already there, records the new reason. It ends any
// lease on it.
func (q *queue) deadLetter(s *Server, it *item, now time.Time, reason string) {
	if it.holder != nil {
		q.unlease(s, it)
	}
	h := make(map[string]string, len(it.msg.Headers)+1)
	for k, v := range it.msg.Headers {
		h[k] = v
	}
	h[adapters.HeaderDeadLetterReason] = reason
	msg := it.msg
	msg.Headers = h
	if it.dead {
		it.msg = msg
		it.availableAt = now
		delete(q.delayed, it)
	} else {
		// A new item in the dead-letter list; the old one is gone, and
		// with it any delivery of it.
		q.remove(s, it)
		q.dead = append(q.dead, &item{seq: it.seq, msg: msg, availableAt: now, dead: true})
	}
	q.signal()
}

// remove settles it for good: it leaves whichever list holds it.
func (q *queue) remove(s *Server, it *item) {
	if it.holder != nil {
		q.unlease(s, it)
	}
	delete(q.delayed, it)
	it.gone = true
	if it.dead {
		q.goneDead++
		q.dead, q.goneDead = compact(q.dead, q.goneDead)
	} else {
		q.goneItems++
		q.items, q.goneItems = compact(q.items, q.goneItems)
	}
}

// compact drops the gone items of list once they are at least half of it.
func compact(list []*item, gone int) ([]*item, int) {
	if gone < 32 || gone*2 < len(list) {
		return list, gone
	}
	out := list[:0]
	for _, it := range list {
		if !it.gone {
			out = append(out, it)
		}
	}
	clear(list[len(out):])
	return out, 0
}

// trimFront drops the gone items at the front of list.
func trimFront(list []*item, gone int) ([]*item, int) {
	for len(list) > 0 && list[0].gone {
		list[0] = nil
		list = list[1:]
		gone--
	}
	return list, gone
}

// next leases the first available item of the list (the dead-letter queue
// if dead) to con, honouring per-key order on Ordered queues. If none is
// available it returns the earliest time one may become available (zero if
// none is pending).
func (q *queue) next(s *Server, con *consumer, dead bool, now time.Time) (*item, time.Time) {
	q.sweep(s, now)
	q.items, q.goneItems = trimFront(q.items, q.goneItems)
	q.dead, q.goneDead = trimFront(q.dead, q.goneDead)
	list := q.items
	if dead {
		list = q.dead
	}
	var blocked map[string]bool
	if q.cfg.Ordered && !dead {
		blocked = map[string]bool{}
	}
	for _, it := range list {
		if it.gone {
			continue
		}
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
		q.lease(s, it, con, now)
		return it, time.Time{}
	}
	// Nothing now: wake at the earliest delay end or lease deadline of
	// either list, since an expiry in the queue can feed the dead letters.
	wake := q.nextExpiry
	for it := range q.delayed {
		if !it.availableAt.After(now) {
			delete(q.delayed, it)
			continue
		}
		if wake.IsZero() || it.availableAt.Before(wake) {
			wake = it.availableAt
		}
	}
	return nil, wake
}
