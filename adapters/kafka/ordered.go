package kafka

import (
	"context"
	"time"

	kafkago "github.com/segmentio/kafka-go"
)

// Ordered queues (QueueConfig.Ordered). Items are placed by Message.Key, so
// same-key items share a partition. On an ordered queue each partition has
// at most one item in flight: the next record is handed out only once the
// one before it is settled (Ack, DeadLetter, or dead-lettered by
// MaxAttempts). Nack and lease expiry do not re-append the item; the
// partition hands the same record out again (attempt + 1, after the Nack
// delay) before anything behind it. A rebalance or a crash makes the next
// owner read again from the committed offset, which is below the item in
// flight, so order holds there too.

// slot is the record in flight on one partition of an ordered queue. It
// lives in the partState, so that a partition kept across a rebalance
// resumes it instead of reading past it.
type slot struct {
	km      kafkago.Message
	attempt int
	due     time.Time    // not handed out again before this
	cur     *delivery    // handed out and not yet settled
	outcome chan outcome // from the delivery to the partition goroutine
}

type outcome struct {
	settled bool          // done with this record
	delay   time.Duration // else: hand it out again after delay
}

// handleOrdered takes a record into the partition's slot and runs it until
// it is settled or the generation ends (the slot then waits in the
// partState for the next generation, or is dropped with the partition).
func (c *consumer) handleOrdered(gctx context.Context, ps *partState, epoch int, km kafkago.Message) bool {
	_, attempt, _ := decode(km)
	sl := &slot{km: km, attempt: attempt, outcome: make(chan outcome, 1)}
	ps.r.mu.Lock()
	ps.slot = sl
	ps.r.mu.Unlock()
	c.runSlot(gctx, ps, epoch, sl)
	return true // the record is the slot's now; the reader moves past it
}

// runSlot hands the slot's record out until it is settled; false if the
// generation or the consumer ended first.
func (c *consumer) runSlot(gctx context.Context, ps *partState, epoch int, sl *slot) bool {
	for {
		if sl.cur == nil {
			if wait := time.Until(sl.due); wait > 0 && !sleepCtx(gctx, wait) {
				return false
			}
			m, _, _ := decode(sl.km)
			d := &delivery{c: c, ps: ps, epoch: epoch, km: sl.km, msg: m, attempt: sl.attempt, slot: sl}
			select {
			case c.out <- d:
				sl.cur = d
			case <-gctx.Done():
				return false
			case <-c.ctx.Done():
				return false
			}
		}
		select {
		case o := <-sl.outcome:
			if o.settled {
				ps.r.mu.Lock()
				if ps.slot == sl {
					ps.slot = nil
				}
				ps.r.mu.Unlock()
				return true
			}
			sl.cur = nil
			sl.attempt++
			sl.due = time.Now().Add(o.delay)
		case <-gctx.Done():
			return false
		case <-c.ctx.Done():
			return false
		}
	}
}

// resumeSlot finishes the record in flight of a partition kept across a
// rebalance before the reader goes on; false if it could not. A delivery
// handed out in the last generation is still valid (same epoch) and its
// outcome still arrives on the slot.
func (c *consumer) resumeSlot(gctx context.Context, ps *partState, epoch int) bool {
	ps.r.mu.Lock()
	sl := ps.slot
	ps.r.mu.Unlock()
	if sl == nil {
		return true
	}
	return c.runSlot(gctx, ps, epoch, sl)
}

func (d *delivery) signal(o outcome) {
	if d.slot == nil {
		return
	}
	select {
	case d.slot.outcome <- o:
	default:
	}
}
