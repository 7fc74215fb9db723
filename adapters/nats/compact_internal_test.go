package nats

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
)

// compactSetup starts a server and opens a Broker and a raw JetStream handle
// on it.
func compactSetup(t *testing.T) (context.Context, *Broker, jetstream.JetStream) {
	t.Helper()
	srv, err := natsserver.Start(natsserver.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	b, err := Open(ctx, Options{Servers: []string{"nats://" + srv.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	nc, err := natsgo.Connect("nats://" + srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return ctx, b, js
}

// filledQueue declares queue q (lease one minute), enqueues n items and
// returns a consumer of it with a fixed prefetch, closed at the end.
func filledQueue(ctx context.Context, t *testing.T, b *Broker, q string, n, prefetch int) *consumer {
	t.Helper()
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: time.Minute}); err != nil {
		t.Fatal(err)
	}
	enqueueN(ctx, t, b, q, 0, n)
	c, err := b.Consume(ctx, q, adapters.ConsumeOptions{Prefetch: prefetch, MaxPrefetch: prefetch})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c.(*consumer)
}

func enqueueN(ctx context.Context, t *testing.T, b *Broker, q string, from, n int) {
	t.Helper()
	ms := make([]adapters.Message, 0, n)
	for i := from; i < from+n; i++ {
		ms = append(ms, adapters.Message{ID: fmt.Sprintf("i%05d", i), Body: []byte("x")})
	}
	if err := adapters.EnqueueBatch(ctx, b, q, ms); err != nil {
		t.Fatal(err)
	}
}

// storedMsgs is how many messages the queue's stream keeps.
func storedMsgs(ctx context.Context, t *testing.T, js jetstream.JetStream, b *Broker, q string) uint64 {
	t.Helper()
	s, err := js.Stream(ctx, b.queueStream(q))
	if err != nil {
		t.Fatal(err)
	}
	return s.CachedInfo().State.Msgs
}

func waitStored(ctx context.Context, t *testing.T, js jetstream.JetStream, b *Broker, q string, want uint64) {
	t.Helper()
	waitStoredWithin(ctx, t, js, b, q, want, 10*time.Second)
}

func waitStoredWithin(ctx context.Context, t *testing.T, js jetstream.JetStream, b *Broker, q string, want uint64, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		n := storedMsgs(ctx, t, js, b, q)
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream keeps %d messages, want %d", n, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func receiveAll(ctx context.Context, t *testing.T, c adapters.Consumer, n int) []adapters.Delivery {
	t.Helper()
	ds := make([]adapters.Delivery, 0, n)
	for range n {
		d, err := c.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	return ds
}

// TestAcknowledgedItemsArePurgedBelowTheAckFloor: a queue's stream keeps
// acknowledged items until the consumer's compactor purges below the ack
// floor. An unacknowledged first item holds everything after it; the stats
// still count only what is unacknowledged and date the oldest by the held
// item. Once it is acknowledged the stream empties.
func TestAcknowledgedItemsArePurgedBelowTheAckFloor(t *testing.T) {
	const q = "compact"
	ctx, b, js := compactSetup(t)
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if s, err := js.Stream(ctx, b.queueStream(q)); err != nil || s.CachedInfo().Config.Retention != jetstream.LimitsPolicy {
		t.Fatalf("a new queue's stream should have limits retention: %v", err)
	}
	enqueueN(ctx, t, b, q, 0, 50)
	// Prefetch 1: nothing is fetched ahead, so what waits is not in flight.
	c, err := b.Consume(ctx, q, adapters.ConsumeOptions{Prefetch: 1, MaxPrefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Every tick with something acknowledged compacts (the batch and idle
	// gating has a test of its own).
	c.(*consumer).comp.idle = 0
	ds := receiveAll(ctx, t, c, 50)
	for _, d := range ds[1:] {
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2 * compactEvery)
	if n := storedMsgs(ctx, t, js, b, q); n != 50 {
		t.Fatalf("with the first item unacknowledged the stream keeps %d messages, want all 50", n)
	}
	st, err := b.QueueStats(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	if st.Depth != 0 || st.InFlight != 1 || st.OldestAge < 2*compactEvery || st.OldestAge > time.Minute {
		t.Fatalf("stats %+v: want depth 0, one in flight, the oldest the held item (>= %s)", st, 2*compactEvery)
	}
	if st.Note != "" {
		t.Fatalf("49 kept items (under keptNote) should not be noted: %q", st.Note)
	}
	defer func(n int64) { keptNote = n }(keptNote)
	keptNote = 49
	if st, err = b.QueueStats(ctx, q); err != nil || !strings.Contains(st.Note, "keeps 49 acknowledged items") {
		t.Fatalf("stats %+v, %v: the note should say the stream keeps 49 acknowledged items", st, err)
	}
	keptNote = 50
	enqueueN(ctx, t, b, q, 50, 5)
	if st, err = b.QueueStats(ctx, q); err != nil || st.Depth != 5 || st.InFlight != 1 {
		t.Fatalf("stats %+v, %v: want depth 5, one in flight", st, err)
	}
	if err := ds[0].Ack(ctx); err != nil {
		t.Fatal(err)
	}
	waitStored(ctx, t, js, b, q, 5)
	for _, d := range receiveAll(ctx, t, c, 5) {
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitStored(ctx, t, js, b, q, 0)
	if st, err = b.QueueStats(ctx, q); err != nil || st.Depth != 0 || st.InFlight != 0 || st.OldestAge != 0 {
		t.Fatalf("stats of an empty queue %+v, %v", st, err)
	}
}

// TestCompactionWaitsForABatchOrAnIdlePeriod: after its first compaction a
// consumer compacts again once it acknowledged a batch of items, or some
// and the idle period passed; not at every tick with an acknowledgement, so
// a trickle of work on many nodes does not make two requests per item.
func TestCompactionWaitsForABatchOrAnIdlePeriod(t *testing.T) {
	const q = "gated"
	ctx, b, js := compactSetup(t)
	cons := filledQueue(ctx, t, b, q, 40, 1)
	k := cons.comp
	k.batch, k.idle = 20, 4*compactEvery
	ack := func(n int) {
		t.Helper()
		for _, d := range receiveAll(ctx, t, cons, n) {
			if err := d.Ack(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The first compaction comes at the next tick.
	ack(5)
	waitStored(ctx, t, js, b, q, 35)
	// Five more: neither a batch nor the idle period.
	ack(5)
	time.Sleep(2 * compactEvery)
	if n := storedMsgs(ctx, t, js, b, q); n != 35 {
		t.Fatalf("the stream keeps %d messages two ticks after 5 more acks, want 35: compacted before a batch or the idle period", n)
	}
	// The idle period passes: they are purged.
	waitStored(ctx, t, js, b, q, 30)
	// A batch is purged at the next tick, well before the idle period.
	ack(20)
	waitStoredWithin(ctx, t, js, b, q, 10, 3*compactEvery)
}

// TestAStuckAckFloorDeletesEachAcknowledgedItem: while more acknowledged
// items than the bound are kept above a floor an old item holds, each
// acknowledgement deletes its item, so the stream stops growing; once the
// old item is acknowledged the floor moves and the rest is purged.
func TestAStuckAckFloorDeletesEachAcknowledgedItem(t *testing.T) {
	const q = "stuck"
	ctx, b, js := compactSetup(t)
	cons := filledQueue(ctx, t, b, q, 60, 10)
	k := cons.comp
	k.garbageMax = 10
	ds := receiveAll(ctx, t, cons, 60)
	for _, d := range ds[1:31] {
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for !k.deleting.Load() {
		if time.Now().After(deadline) {
			t.Fatal("30 acknowledged items above a stuck floor (bound 10) did not turn on deleting")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, d := range ds[31:] {
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// The held item and the 30 acknowledged before deleting began.
	waitStored(ctx, t, js, b, q, 31)
	if err := ds[0].Ack(ctx); err != nil {
		t.Fatal(err)
	}
	waitStored(ctx, t, js, b, q, 0)
	deadline = time.Now().Add(10 * time.Second)
	for k.deleting.Load() {
		if time.Now().After(deadline) {
			t.Fatal("deleting stayed on after the floor moved")
		}
		enqueueN(ctx, t, b, q, 100, 1)
		if err := receiveAll(ctx, t, cons, 1)[0].Ack(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(compactEvery / 2)
	}
}

// TestAWorkQueueStreamOfAnEarlierVersionStaysOne: a queue whose stream an
// earlier version made with work-queue retention (which the server cannot
// change) is declared again without error, keeps that retention, gets no
// compactor, and its acknowledged items leave the stream at once.
func TestAWorkQueueStreamOfAnEarlierVersionStaysOne(t *testing.T) {
	const q = "legacy"
	ctx, b, js := compactSetup(t)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: b.queueStream(q), Subjects: []string{b.queueSubject(q)},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage,
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: time.Minute}); err != nil {
		t.Fatalf("declaring a queue over a work-queue stream: %v", err)
	}
	s, err := js.Stream(ctx, b.queueStream(q))
	if err != nil {
		t.Fatal(err)
	}
	if cfg := s.CachedInfo().Config; cfg.Retention != jetstream.WorkQueuePolicy || cfg.Metadata[mdLease] != "1m0s" {
		t.Fatalf("the stream should be updated in place and stay a work queue: retention %v, metadata %v", cfg.Retention, cfg.Metadata)
	}
	// A broker that did not declare it learns the retention from the stream.
	b2, err := Open(ctx, Options{Servers: b.nc.Servers()})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	enqueueN(ctx, t, b, q, 0, 20)
	cons, err := b2.Consume(ctx, q, adapters.ConsumeOptions{Prefetch: 5, MaxPrefetch: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	if cons.(*consumer).comp != nil {
		t.Fatal("a work-queue stream got a compactor")
	}
	ds := receiveAll(ctx, t, cons, 20)
	for _, d := range ds[1:] {
		if err := d.Ack(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitStored(ctx, t, js, b, q, 1)
	st, err := b.QueueStats(ctx, q)
	if err != nil || st.Depth != 0 || st.InFlight != 1 {
		t.Fatalf("stats %+v, %v: want depth 0, one in flight", st, err)
	}
}
