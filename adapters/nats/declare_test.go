package nats_test

import (
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

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
