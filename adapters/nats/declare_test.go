package nats_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/clusterbus/clusterbus/adapters"
)

// TestRedeclaringAnUnchangedQueueUpdatesNothing: every node declares its
// queues when it starts. A queue already as declared is left alone (no
// stream update: in a cluster each is a meta-group proposal and a store
// write); a changed Lease still updates the stream in place. The server's
// stream-updated advisories tell.
func TestRedeclaringAnUnchangedQueueUpdatesNothing(t *testing.T) {
	srv := startServer(t, false)
	b := open(t, srv)
	ctx := testCtx(t)
	nc, err := natsgo.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	updates, err := nc.SubscribeSync("$JS.EVENT.ADVISORY.STREAM.UPDATED.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	q := adapters.QueueConfig{Name: uniqueName(t), Lease: time.Minute}
	if err := b.DeclareQueue(ctx, q); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := open(t, srv).DeclareQueue(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if m, err := updates.NextMsg(300 * time.Millisecond); err == nil {
		t.Fatalf("re-declaring an unchanged queue updated %s", m.Subject)
	}
	q.Lease = 2 * time.Minute
	if err := open(t, srv).DeclareQueue(ctx, q); err != nil {
		t.Fatal(err)
	}
	if _, err := updates.NextMsg(5 * time.Second); err != nil {
		t.Fatalf("a changed Lease updated no stream: %v", err)
	}
}

// TestEnqueueStoredByAnotherStreamIsNotAcknowledged: when the queue's stream
// is gone and an operator's stream captures its subject, an Enqueue is
// stored there, not in the queue; it must fail (ErrNotFound), not return
// nil for an item no consumer of the queue will ever see.
func TestEnqueueStoredByAnotherStreamIsNotAcknowledged(t *testing.T) {
	srv := startServer(t, false)
	b := open(t, srv)
	ctx := testCtx(t)
	q := uniqueName(t)
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: time.Minute}); err != nil {
		t.Fatal(err)
	}
	if err := b.Enqueue(ctx, q, adapters.Message{Body: []byte("before")}); err != nil {
		t.Fatal(err)
	}
	nc, err := natsgo.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var queueStream string
	for name := range js.StreamNames(ctx).Name() {
		if strings.HasSuffix(name, "_Q_"+q) {
			queueStream = name
		}
	}
	if queueStream == "" {
		t.Fatal("the queue's stream is not listed")
	}
	s, err := js.Stream(ctx, queueStream)
	if err != nil {
		t.Fatal(err)
	}
	subjects := s.CachedInfo().Config.Subjects
	if err := js.DeleteStream(ctx, queueStream); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "OPERATOR_" + q, Subjects: subjects}); err != nil {
		t.Fatal(err)
	}
	err = b.Enqueue(ctx, q, adapters.Message{Body: []byte("after")})
	if !errors.Is(err, adapters.ErrNotFound) {
		t.Fatalf("Enqueue stored by stream OPERATOR_%s: %v, want ErrNotFound", q, err)
	}
	t.Logf("Enqueue: %v", err)
	p, err := b.EnqueueAsync(ctx, q, adapters.Message{Body: []byte("async")})
	if err == nil {
		err = p.Wait(ctx)
	}
	if !errors.Is(err, adapters.ErrNotFound) {
		t.Fatalf("EnqueueAsync stored by stream OPERATOR_%s: %v, want ErrNotFound", q, err)
	}
}
