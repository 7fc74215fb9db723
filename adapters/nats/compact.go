package nats

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Compaction. A queue's stream has limits retention: an acknowledgement
// only moves the durable consumer's state, which the server writes about ten
// times a second, and the item stays stored until a consumer of the queue
// purges the stream below the consumer's ack floor (every item below it is
// acknowledged). A work-queue stream instead removes each acknowledged item
// at once, writing a delete record for it, fsynced with sync_interval
// always: that was half of the server's CPU in a drain and held a drain to
// a few thousand items a second whatever the consumers did.
//
// Every Consumer of a queue compacts, each at most once per compactEvery and
// only after it acknowledged compactBatch items, or something and
// compactIdle passed since its last compaction: the requests a compaction
// makes (a consumer info, a purge, which on a replicated stream is a
// proposal written by every replica) come at most once per compactBatch
// acknowledgements, plus once per compactIdle on a queue with a trickle of
// work, whatever the number of nodes and queues. Purges are idempotent, so
// several consumers (on several nodes) purging to the same floor do no harm. What
// compaction costs is what the stream keeps: acknowledged items at or above
// the floor. An item held for long, or delayed by Nack, stops the floor; past
// compactGarbageMax acknowledged items above it, each acknowledgement also
// deletes its item (as a work-queue stream would), until the floor moves.
const (
	compactEvery      = time.Second
	compactBatch      = 256
	compactIdle       = 10 * time.Second
	compactGarbageMax = 100_000
	compactTimeout    = 5 * time.Second
	// closeCompactTimeout bounds the last compaction in Consumer.Close, so
	// that closing many consumers against a server that does not answer
	// (JetStream without a leader) does not take compactTimeout each.
	closeCompactTimeout = time.Second
)

// compactor purges one consumer's queue stream below the ack floor.
type compactor struct {
	c       *consumer
	stream  string
	delSubj string // the stream's message-delete API subject

	// acked counts the items this consumer settled (acknowledged or moved
	// to the dead-letter queue) since the last compaction.
	acked atomic.Int64
	// deleting is set while more than garbageMax acknowledged items are
	// kept above the floor: each acknowledgement then deletes its item.
	deleting   atomic.Bool
	garbageMax int64

	// batch and idle: a compaction is due after batch settled items, or
	// after one and idle since the last compaction (compactBatch,
	// compactIdle; tests change them before the first settle).
	batch int64
	idle  time.Duration

	// Touched only by the loop.
	st     jetstream.Stream // looked up at the first purge
	purged uint64           // the floor the last purge went up to
	last   time.Time        // when the last compaction ran

	quit     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

func newCompactor(c *consumer, stream string) *compactor {
	k := &compactor{
		c: c, stream: stream,
		delSubj:    "$JS.API.STREAM.MSG.DELETE." + stream,
		garbageMax: compactGarbageMax,
		batch:      compactBatch,
		idle:       compactIdle,
		quit:       make(chan struct{}),
		done:       make(chan struct{}),
	}
	go k.loop(compactEvery)
	return k
}

// settled records that the consumer settled the item at stream sequence
// seq: it counts towards the next compaction and, while the floor is stuck
// (see deleting), the item is deleted now. The delete is sent without
// waiting: it only frees space early, and an item already acknowledged is
// skipped by the consumer if it is gone.
func (k *compactor) settled(seq uint64) {
	k.acked.Add(1)
	if k.deleting.Load() {
		body := strconv.AppendUint([]byte(`{"seq":`), seq, 10)
		body = append(body, `,"no_erase":true}`...)
		_ = k.c.b.nc.Publish(k.delSubj, body)
	}
}

func (k *compactor) loop(every time.Duration) {
	defer close(k.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-k.quit:
			// A last compaction for what this consumer acknowledged,
			// unless the connection is down (the next consumer does it).
			if k.acked.Load() > 0 && k.c.b.nc.IsConnected() {
				k.compact(closeCompactTimeout)
			}
			return
		case <-t.C:
			if k.due(time.Now()) {
				k.compact(compactTimeout)
			}
		}
	}
}

// due reports whether a compaction is due at now: batch items settled, or
// some and idle passed since the last one. While deleting, any settled item
// makes it due, so that the floor moving again is seen within a tick.
func (k *compactor) due(now time.Time) bool {
	n := k.acked.Load()
	return n >= k.batch || n > 0 && (k.deleting.Load() || now.Sub(k.last) >= k.idle)
}

// stop ends the loop after a last compaction and waits for it.
func (k *compactor) stop() {
	k.stopOnce.Do(func() { close(k.quit) })
	<-k.done
}

// compact reads the consumer's ack floor and purges the stream below it.
// A failure is retried when the next compaction is due.
func (k *compactor) compact(timeout time.Duration) {
	n := k.acked.Swap(0)
	k.last = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := k.purge(ctx); err != nil {
		k.acked.Add(n)
		k.c.b.log.Debug("nats: compacting the queue failed; retrying", "queue", k.c.queue, "err", err)
	}
}

func (k *compactor) purge(ctx context.Context) error {
	info, err := k.c.cons.Info(ctx)
	if err != nil {
		return err
	}
	floor := info.AckFloor.Stream
	// Delivered above the floor and not pending is acknowledged: kept
	// only because an older item stops the floor.
	var garbage int64
	if info.Delivered.Stream > floor {
		garbage = int64(info.Delivered.Stream-floor) - int64(info.NumAckPending)
	}
	if stuck := garbage > k.garbageMax; stuck != k.deleting.Load() {
		k.deleting.Store(stuck)
		if stuck {
			k.c.b.log.Info("nats: an item held or delayed for long stops the queue's ack floor; acknowledged items are deleted one by one until it moves",
				"queue", k.c.queue, "floor", floor, "kept", garbage)
		} else {
			k.c.b.log.Info("nats: the queue's ack floor moves again; acknowledged items are purged below it", "queue", k.c.queue, "floor", floor)
		}
	}
	if floor <= k.purged {
		return nil
	}
	if k.st == nil {
		if k.st, err = k.c.b.js.Stream(ctx, k.stream); err != nil {
			return err
		}
	}
	if err := k.st.Purge(ctx, jetstream.WithPurgeSequence(floor+1)); err != nil {
		return err
	}
	k.purged = floor
	return nil
}
