package kafka

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/clusterbus/clusterbus/adapters"
)

func TestStickyAssignmentKeepsBusyPartitionsAndIsFair(t *testing.T) {
	parts := make([]kafkago.Partition, 8)
	for i := range parts {
		parts[i] = kafkago.Partition{Topic: "t", ID: i}
	}
	member := func(id string, owned, busy []int) kafkago.GroupMember {
		d, _ := json.Marshal(stickyData{Owned: owned, Busy: busy})
		return kafkago.GroupMember{ID: id, Topics: []string{"t"}, UserData: d}
	}
	// "a" owned everything with items held in 5 and 6; "b" and "c" join.
	got := assignSticky("t", []kafkago.GroupMember{
		member("a", []int{0, 1, 2, 3, 4, 5, 6, 7}, []int{5, 6}),
		member("b", nil, nil),
		member("c", nil, nil),
	}, parts)
	seen := map[int]string{}
	for id, a := range got {
		ps := a["t"]
		if len(ps) < 2 || len(ps) > 3 {
			t.Errorf("member %s got %d partitions %v, want a fair share of 2 or 3", id, len(ps), ps)
		}
		for _, p := range ps {
			if other, dup := seen[p]; dup {
				t.Errorf("partition %d given to %s and %s", p, other, id)
			}
			seen[p] = id
		}
	}
	if len(seen) != 8 {
		t.Errorf("%d of 8 partitions assigned: %v", len(seen), got)
	}
	if !slices.Contains(got["a"]["t"], 5) || !slices.Contains(got["a"]["t"], 6) {
		t.Errorf("a lost a busy partition: %v", got["a"]["t"])
	}
	// Garbage user data (another client's protocol) still gets a share.
	got = assignSticky("t", []kafkago.GroupMember{{ID: "x", UserData: []byte("\x00\x01")}, {ID: "y"}}, parts)
	if len(got["x"]["t"])+len(got["y"]["t"]) != 8 {
		t.Errorf("with unreadable user data: %v", got)
	}
}

// A consumer that dies without Close (simulated: it leaves the group
// without re-queueing what it holds) makes the next owner read again only
// what was not committed: an item acked below the first unsettled one stays
// acked; the unsettled item and the acked item above it come back, with
// their attempt counts unchanged (Kafka counts nothing).
func TestCrashRedeliversOnlyUncommittedItems(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	open, q := onePartitionQueue(ctx, t, "crash", "one", "two", "three")
	b1, b2 := open(), open()
	c1, err := b1.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var ds []adapters.Delivery
	for range 3 {
		d, err := c1.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	if err := ds[0].Ack(ctx); err != nil {
		t.Fatalf("Ack one: %v", err)
	}
	if err := ds[2].Ack(ctx); err != nil {
		t.Fatalf("Ack three: %v", err)
	}
	// Crash: end the lease of "two" without re-queueing it (Take runs no
	// release; only Close does) and leave the groups without the
	// re-queueing that Close does.
	if !ds[1].(*delivery).lease.Take() {
		t.Fatal("the lease of two was not held")
	}
	cc := c1.(*consumer)
	cc.main.close()
	cc.retry.close()

	c2, err := b2.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	var got []string
	for range 2 {
		d, err := c2.Receive(ctx)
		if err != nil {
			t.Fatalf("Receive after the crash: %v", err)
		}
		if d.Attempt() != 1 {
			t.Errorf("%q came back with attempt %d, want 1 (unchanged)", d.Message().ID, d.Attempt())
		}
		got = append(got, d.Message().ID)
		if err := d.Ack(ctx); err != nil {
			t.Errorf("Ack %q: %v", d.Message().ID, err)
		}
	}
	if !slices.Equal(got, []string{"two", "three"}) {
		t.Errorf("redelivered %v, want [two three]", got)
	}
	rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
	defer rcancel()
	if d, err := c2.Receive(rctx); err == nil {
		t.Errorf("%q delivered again after everything was acked", d.Message().ID)
	}
}

// Ack does not wait for its commit: with a commit of the group held up (its
// commit lock taken, as by a slow coordinator), acks still return at once.
// Close commits what was acked, so a new consumer receives none of it.
func TestAckDoesNotWaitForItsCommitAndCloseCommitsIt(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const n = 5
	open, q := onePartitionQueue(ctx, t, "async-ack", "0", "1", "2", "3", "4")
	b1 := open()
	c1, err := b1.Consume(ctx, q, adapters.ConsumeOptions{Prefetch: n})
	if err != nil {
		t.Fatal(err)
	}
	var ds []adapters.Delivery
	for range n {
		d, err := c1.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ds = append(ds, d)
	}
	r := c1.(*consumer).main
	r.commitMu.Lock()
	acked := make(chan error, 1)
	go func() {
		for _, d := range ds {
			if err := d.Ack(ctx); err != nil {
				acked <- fmt.Errorf("Ack %q: %w", d.Message().ID, err)
				return
			}
		}
		acked <- nil
	}()
	select {
	case err := <-acked:
		if err != nil {
			r.commitMu.Unlock()
			t.Fatalf("while a commit is held up: %v, want nil", err)
		}
	case <-time.After(3 * time.Second):
		r.commitMu.Unlock()
		t.Fatalf("%d Acks did not return within 3s while a commit was held up: they wait for it", n)
	}
	time.AfterFunc(200*time.Millisecond, r.commitMu.Unlock)
	if err := c1.Close(); err != nil {
		t.Fatal(err)
	}

	c2, err := open().Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
	defer rcancel()
	if d, err := c2.Receive(rctx); err == nil {
		t.Errorf("%q delivered again after it was acked and its consumer closed", d.Message().ID)
	}
}

// onePartitionQueue starts an in-process Kafka and declares on it a queue
// of one partition (lease one minute) holding the items ids, in order. open
// opens another client on it, closed when the test ends.
func onePartitionQueue(ctx context.Context, t *testing.T, name string, ids ...string) (open func() adapters.Broker, q string) {
	t.Helper()
	cfg, err := ParseURL("kafka://" + startKfake(t) + "?session_timeout=6s&heartbeat_interval=300ms&partitions=1")
	if err != nil {
		t.Fatal(err)
	}
	open = func() adapters.Broker {
		t.Helper()
		b, err := Open(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}
	b := open()
	q = fmt.Sprintf("%s-%d", name, time.Now().UnixNano())
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: time.Minute}); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if err := b.Enqueue(ctx, q, adapters.Message{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	return open, q
}

// startKfake runs an in-process Kafka for the internal tests.
func startKfake(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.GroupMinSessionTimeout(time.Second))
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()[0]
}

// When a second consumer joins, the group rebalances to fair shares. The
// first consumer keeps as many of its busy partitions as its share allows
// and its leases there hold (Ack works after the rebalance); its deliveries
// from partitions that moved fail with ErrLeaseLost, and the new owner
// receives those items again with the same attempt number, but not before
// one lease has passed: the first consumer is alive and may still be
// working on them until their leases run out.
func TestRebalanceKeepsLeasesWithinFairShareAndVoidsTheRest(t *testing.T) {
	addr := startKfake(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg, err := ParseURL("kafka://" + addr + "?session_timeout=6s&heartbeat_interval=300ms&partitions=4")
	if err != nil {
		t.Fatal(err)
	}
	b1, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b1.Close()
	b2, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	q := fmt.Sprintf("rebalance-%d", time.Now().UnixNano())
	const lease = 4 * time.Second
	if err := b1.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: lease}); err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		if err := b1.Enqueue(ctx, q, adapters.Message{ID: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	c1, err := b1.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	// Hold one item from each of the four partitions.
	held := map[int]*delivery{}
	var extra []adapters.Delivery
	for len(held) < 4 {
		d, err := c1.Receive(ctx)
		if err != nil {
			t.Fatalf("Receive: %v (holding %d partitions)", err, len(held))
		}
		dd := d.(*delivery)
		if held[dd.ps.p] == nil {
			held[dd.ps.p] = dd
		} else {
			extra = append(extra, d)
		}
	}
	for _, d := range extra {
		if err := d.Nack(ctx, 0); err != nil {
			t.Fatalf("Nack: %v", err)
		}
	}
	// The first consumer keeps its leases alive, as a worker does; an
	// Extend of a delivery whose partition moved fails.
	extendCtx, stopExtend := context.WithCancel(ctx)
	extended := make(chan struct{})
	go func() {
		defer close(extended)
		for {
			for _, d := range held {
				_ = d.Extend(extendCtx, lease)
			}
			select {
			case <-extendCtx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}()
	c2, err := b2.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	joined := time.Now()
	d2, err := c2.Receive(ctx) // joins the group: a rebalance
	if err != nil {
		t.Fatalf("second consumer: %v", err)
	}
	waited := time.Since(joined)
	stopExtend()
	<-extended
	t.Logf("the second consumer got its first item %s after joining (lease %s)", waited.Round(time.Millisecond), lease)
	if waited < lease {
		t.Errorf("the second consumer got an item %s after joining, before the first consumer's leases (%s) on the partition could run out", waited, lease)
	}
	moved := d2.(*delivery).ps.p
	if held[moved] == nil {
		t.Fatalf("second consumer received from partition %d, not one the first held", moved)
	}
	kept, lost := 0, 0
	for p, d := range held {
		err := d.Ack(ctx)
		switch {
		case err == nil:
			kept++
		case errors.Is(err, adapters.ErrLeaseLost):
			lost++
			if p == moved && d.Message().ID != d2.Message().ID {
				// The new owner starts at the committed offset, which may
				// be below the held item; either way it is read again.
				t.Logf("partition %d: held %q, new owner got %q first", p, d.Message().ID, d2.Message().ID)
			}
		default:
			t.Errorf("Ack of the item held in partition %d: %v", p, err)
		}
	}
	t.Logf("after the rebalance the first consumer kept %d busy partitions and lost %d", kept, lost)
	if kept != 2 || lost != 2 {
		t.Errorf("kept %d, lost %d partitions; want the fair share 2 and 2", kept, lost)
	}
	if d2.Attempt() != 1 {
		t.Errorf("item read again by the new owner has attempt %d, want 1", d2.Attempt())
	}
}
