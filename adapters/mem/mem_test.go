package mem_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
)

const wait = 10 * time.Second // bound on anything that must happen at once

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func client(t *testing.T, srv *mem.Server) *mem.Broker {
	c := srv.Client()
	t.Cleanup(func() { c.Close() })
	return c
}

func declare(t *testing.T, b adapters.Broker, cfg adapters.QueueConfig) {
	t.Helper()
	if err := b.DeclareQueue(testCtx(t), cfg); err != nil {
		t.Fatalf("DeclareQueue: %v", err)
	}
}

func consume(t *testing.T, b adapters.Broker, q string) adapters.Consumer {
	t.Helper()
	c, err := b.Consume(testCtx(t), q, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatalf("Consume: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func subscribe(t *testing.T, b adapters.Broker, topic string) adapters.Subscription {
	t.Helper()
	s, err := b.Subscribe(testCtx(t), topic)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func enqueue(t *testing.T, b adapters.Broker, q, id string) {
	t.Helper()
	if err := b.Enqueue(testCtx(t), q, adapters.Message{ID: id}); err != nil {
		t.Fatalf("Enqueue(%q): %v", id, err)
	}
}

func publish(t *testing.T, b adapters.Broker, topic, id string) {
	t.Helper()
	if err := b.Publish(testCtx(t), topic, adapters.Message{ID: id}); err != nil {
		t.Fatalf("Publish(%q): %v", id, err)
	}
}

func receive(t *testing.T, c adapters.Consumer) adapters.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	d, err := c.Receive(ctx)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	return d
}

// receiveAsync starts a Receive and returns where its result arrives.
func receiveAsync(t *testing.T, c adapters.Consumer) <-chan adapters.Delivery {
	ch := make(chan adapters.Delivery, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		if d, err := c.Receive(ctx); err == nil {
			ch <- d
		} else if ctx.Err() == nil {
			t.Errorf("Receive: %v", err)
		}
	}()
	return ch
}

func recvMsg(t *testing.T, s adapters.Subscription) (adapters.Message, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	return s.Receive(ctx)
}

func stats(t *testing.T, srv *mem.Server, q string) mem.QueueStats {
	t.Helper()
	st, err := srv.Stats(q)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	return st
}

// blockUntilWaiters waits until n goroutines wait on the fake clock.
func blockUntilWaiters(t *testing.T, clock *clockwork.FakeClock, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := clock.BlockUntilContext(ctx, n); err != nil {
		t.Fatalf("waiting for %d clock waiters: %v", n, err)
	}
}

func TestFakeClockDrivesLeaseExpiry(t *testing.T) {
	clock := clockwork.NewFakeClock()
	srv := mem.NewServer(mem.WithClock(clock))
	a, b := client(t, srv), client(t, srv)
	declare(t, a, adapters.QueueConfig{Name: "jobs", Lease: 30 * time.Second})
	enqueue(t, a, "jobs", "job-1")
	d := receive(t, consume(t, a, "jobs"))
	got := receiveAsync(t, consume(t, b, "jobs"))
	blockUntilWaiters(t, clock, 1) // b's consumer waits for the lease deadline
	clock.Advance(29 * time.Second)
	if st := stats(t, srv, "jobs"); st.Leased != 1 {
		t.Fatalf("after 29s of a 30s lease: %+v, want the item still leased", st)
	}
	clock.Advance(time.Second)
	select {
	case d2 := <-got:
		if d2.Attempt() != 2 || d2.Message().ID != "job-1" {
			t.Errorf("redelivery: %q attempt %d, want job-1 attempt 2", d2.Message().ID, d2.Attempt())
		}
	case <-time.After(wait):
		t.Fatal("no redelivery after the fake clock passed the lease")
	}
	if err := d.Ack(testCtx(t)); !errors.Is(err, adapters.ErrLeaseLost) {
		t.Errorf("Ack after expiry: %v, want ErrLeaseLost", err)
	}
}

func TestFakeClockDrivesExtendAndNackDelay(t *testing.T) {
	clock := clockwork.NewFakeClock()
	srv := mem.NewServer(mem.WithClock(clock))
	a := client(t, srv)
	declare(t, a, adapters.QueueConfig{Name: "jobs", Lease: 10 * time.Second})
	enqueue(t, a, "jobs", "job-1")
	c := consume(t, a, "jobs")
	d := receive(t, c)
	clock.Advance(8 * time.Second)
	if err := d.Extend(testCtx(t), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if want := clock.Now().Add(10 * time.Second); !d.LeaseDeadline().Equal(want) {
		t.Errorf("LeaseDeadline %v, want %v", d.LeaseDeadline(), want)
	}
	clock.Advance(8 * time.Second) // 16s after receipt: held only thanks to Extend
	if err := d.Nack(testCtx(t), time.Minute); err != nil {
		t.Fatalf("Nack after Extend: %v", err)
	}
	clock.Advance(59 * time.Second)
	if st := stats(t, srv, "jobs"); st.Delayed != 1 || st.Ready != 0 {
		t.Fatalf("59s into a 1m nack delay: %+v, want 1 delayed", st)
	}
	clock.Advance(time.Second)
	if st := stats(t, srv, "jobs"); st.Ready != 1 {
		t.Fatalf("after the nack delay: %+v, want 1 ready", st)
	}
	if d2 := receive(t, c); d2.Attempt() != 2 {
		t.Errorf("after Nack: attempt %d, want 2", d2.Attempt())
	}
}

func TestFakeClockDrivesDedupeWindow(t *testing.T) {
	clock := clockwork.NewFakeClock()
	srv := mem.NewServer(mem.WithClock(clock))
	a := client(t, srv)
	declare(t, a, adapters.QueueConfig{Name: "jobs", Lease: time.Second, Dedupe: true, DedupeWindow: time.Minute})
	enqueue(t, a, "jobs", "x")
	clock.Advance(59 * time.Second)
	enqueue(t, a, "jobs", "x")
	if st := stats(t, srv, "jobs"); st.Ready != 1 {
		t.Fatalf("repeat inside the window: %+v, want 1 ready", st)
	}
	clock.Advance(2 * time.Second) // 61s after the first, 2s after the repeat
	enqueue(t, a, "jobs", "x")
	if st := stats(t, srv, "jobs"); st.Ready != 2 {
		t.Fatalf("repeat after the window: %+v, want 2 ready", st)
	}
}

func TestOrderedKeyWaitsForNackedItem(t *testing.T) {
	clock := clockwork.NewFakeClock()
	srv := mem.NewServer(mem.WithClock(clock))
	a := client(t, srv)
	declare(t, a, adapters.QueueConfig{Name: "jobs", Lease: time.Minute, Ordered: true})
	for _, m := range []adapters.Message{{ID: "a1", Key: "a"}, {ID: "a2", Key: "a"}, {ID: "b1", Key: "b"}} {
		if err := a.Enqueue(testCtx(t), "jobs", m); err != nil {
			t.Fatal(err)
		}
	}
	c := consume(t, a, "jobs")
	d := receive(t, c)
	if d.Message().ID != "a1" {
		t.Fatalf("first: %q, want a1", d.Message().ID)
	}
	if err := d.Nack(testCtx(t), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// a2 must wait behind the delayed a1; b1 is free.
	if d := receive(t, c); d.Message().ID != "b1" {
		t.Fatalf("while a1 is delayed: %q, want b1", d.Message().ID)
	} else if err := d.Ack(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	got := receiveAsync(t, c)
	blockUntilWaiters(t, clock, 1)
	clock.Advance(10 * time.Second)
	select {
	case d := <-got:
		if d.Message().ID != "a1" {
			t.Fatalf("after the delay: %q, want a1", d.Message().ID)
		}
	case <-time.After(wait):
		t.Fatal("a1 not redelivered after its delay")
	}
}

func TestDisconnectLosesLeasesAndReportsGap(t *testing.T) {
	srv := mem.NewServer()
	a, b := client(t, srv), client(t, srv)
	declare(t, a, adapters.QueueConfig{Name: "jobs", Lease: time.Hour})
	enqueue(t, a, "jobs", "job-1")
	ca := consume(t, a, "jobs")
	d := receive(t, ca)
	sub := subscribe(t, a, "events")

	a.Disconnect()
	err := a.Enqueue(testCtx(t), "jobs", adapters.Message{})
	if !errors.Is(err, adapters.ErrUnavailable) || !adapters.IsRetryable(err) {
		t.Errorf("Enqueue while disconnected: %v, want retryable ErrUnavailable", err)
	}
	if err := a.Publish(testCtx(t), "events", adapters.Message{}); !errors.Is(err, adapters.ErrUnavailable) {
		t.Errorf("Publish while disconnected: %v, want ErrUnavailable", err)
	}
	if _, err := ca.Receive(testCtx(t)); !errors.Is(err, adapters.ErrUnavailable) {
		t.Errorf("Consumer.Receive while disconnected: %v, want ErrUnavailable", err)
	}
	if err := d.Ack(testCtx(t)); !errors.Is(err, adapters.ErrLeaseLost) {
		t.Errorf("Ack of a lease held across the disconnect: %v, want ErrLeaseLost", err)
	}
	// The hour-long lease was lost with the connection: b gets it now.
	d2 := receive(t, consume(t, b, "jobs"))
	if d2.Message().ID != "job-1" || d2.Attempt() != 2 {
		t.Errorf("b got %q attempt %d, want job-1 attempt 2", d2.Message().ID, d2.Attempt())
	}
	publish(t, b, "events", "missed")

	a.Reconnect()
	if _, err := recvMsg(t, sub); !errors.Is(err, adapters.ErrGap) {
		t.Fatalf("first Receive after Reconnect: %v, want ErrGap", err)
	}
	publish(t, b, "events", "after")
	if m, err := recvMsg(t, sub); err != nil || m.ID != "after" {
		t.Fatalf("after the gap: %q, %v; want \"after\"", m.ID, err)
	}
	enqueue(t, a, "jobs", "job-2")
}

func TestPartitionSplitsTopics(t *testing.T) {
	srv := mem.NewServer()
	a, b, c := client(t, srv), client(t, srv), client(t, srv)
	sa, sb, sc := subscribe(t, a, "hb"), subscribe(t, b, "hb"), subscribe(t, c, "hb")
	srv.Partition(c)
	publish(t, a, "hb", "from-a")
	publish(t, c, "hb", "from-c")
	for name, tc := range map[string]struct {
		sub  adapters.Subscription
		want string
	}{"a": {sa, "from-a"}, "b": {sb, "from-a"}, "c": {sc, "from-c"}} {
		if m, err := recvMsg(t, tc.sub); err != nil || m.ID != tc.want {
			t.Errorf("%s during the partition: %q, %v; want %q", name, m.ID, err, tc.want)
		}
	}
	srv.Heal()
	publish(t, a, "hb", "healed")
	for name, sub := range map[string]adapters.Subscription{"a": sa, "b": sb, "c": sc} {
		if m, err := recvMsg(t, sub); err != nil || m.ID != "healed" {
			t.Errorf("%s after Heal: %q, %v; want \"healed\" (nothing from the other side)", name, m.ID, err)
		}
	}
	// Queues stay shared across a partition.
	srv.Partition(a)
	declare(t, b, adapters.QueueConfig{Name: "jobs", Lease: time.Minute})
	enqueue(t, b, "jobs", "shared")
	if d := receive(t, consume(t, a, "jobs")); d.Message().ID != "shared" {
		t.Errorf("queue across a partition: %q, want shared", d.Message().ID)
	}
}

func TestDropNextLosesMessagesSilently(t *testing.T) {
	srv := mem.NewServer()
	a, b := client(t, srv), client(t, srv)
	sa, sb := subscribe(t, a, "ev"), subscribe(t, b, "ev")
	srv.DropNext("ev", 2)
	for i := range 3 {
		publish(t, a, "ev", fmt.Sprint(i))
	}
	for name, sub := range map[string]adapters.Subscription{"a": sa, "b": sb} {
		if m, err := recvMsg(t, sub); err != nil || m.ID != "2" {
			t.Errorf("%s after DropNext(2): %q, %v; want \"2\" with no ErrGap", name, m.ID, err)
		}
	}
	b.DropNext("ev", 1)
	publish(t, a, "ev", "3")
	publish(t, a, "ev", "4")
	if m, _ := recvMsg(t, sa); m.ID != "3" {
		t.Errorf("a (not dropping): %q, want \"3\"", m.ID)
	}
	if m, _ := recvMsg(t, sb); m.ID != "4" {
		t.Errorf("b after its own DropNext(1): %q, want \"4\"", m.ID)
	}
}

func TestDropRateIsSeededAndRoughlyRight(t *testing.T) {
	count := func() int {
		srv := mem.NewServer(mem.WithSeed(42), mem.WithSubscriptionBuffer(2000))
		a := client(t, srv)
		sub := subscribe(t, a, "ev")
		srv.DropRate("ev", 0.3)
		for i := range 1000 {
			publish(t, a, "ev", fmt.Sprint(i))
		}
		srv.DropRate("ev", 0)
		publish(t, a, "ev", "end")
		n := 0
		for {
			m, err := recvMsg(t, sub)
			if err != nil {
				t.Fatal(err)
			}
			if m.ID == "end" {
				return n
			}
			n++
		}
	}
	n1, n2 := count(), count()
	t.Logf("delivered %d of 1000 at drop rate 0.3", n1)
	if n1 != n2 {
		t.Errorf("same seed delivered %d then %d", n1, n2)
	}
	if n1 < 600 || n1 > 800 {
		t.Errorf("delivered %d of 1000 at drop rate 0.3, want about 700", n1)
	}
}

func TestSubscriptionOverflowReportsGap(t *testing.T) {
	srv := mem.NewServer(mem.WithSubscriptionBuffer(2))
	a := client(t, srv)
	sub := subscribe(t, a, "ev")
	for i := range 3 {
		publish(t, a, "ev", fmt.Sprint(i))
	}
	for _, want := range []string{"0", "1"} {
		if m, err := recvMsg(t, sub); err != nil || m.ID != want {
			t.Fatalf("%q, %v; want %q", m.ID, err, want)
		}
	}
	if _, err := recvMsg(t, sub); !errors.Is(err, adapters.ErrGap) {
		t.Fatalf("after overflow: %v, want ErrGap", err)
	}
}

func TestRestartKeepsItemsLosesLeases(t *testing.T) {
	srv := mem.NewServer()
	a := client(t, srv)
	declare(t, a, adapters.QueueConfig{Name: "jobs", Lease: time.Hour, MaxAttempts: 3})
	enqueue(t, a, "jobs", "held")
	enqueue(t, a, "jobs", "waiting")
	c := consume(t, a, "jobs")
	d := receive(t, c)
	sub := subscribe(t, a, "ev")
	srv.Restart()
	if err := d.Ack(testCtx(t)); !errors.Is(err, adapters.ErrLeaseLost) {
		t.Errorf("Ack across a restart: %v, want ErrLeaseLost", err)
	}
	if st := stats(t, srv, "jobs"); st.Ready != 2 || st.Leased != 0 {
		t.Errorf("after Restart: %+v, want 2 ready", st)
	}
	if _, err := recvMsg(t, sub); !errors.Is(err, adapters.ErrGap) {
		t.Errorf("subscription after Restart: %v, want ErrGap", err)
	}
	if d := receive(t, c); d.Message().ID != "held" || d.Attempt() != 2 {
		t.Errorf("after Restart: %q attempt %d, want held attempt 2", d.Message().ID, d.Attempt())
	}
}

func TestDeclareWithDifferentConfigFails(t *testing.T) {
	a := mem.New()
	t.Cleanup(func() { a.Close() })
	declare(t, a, adapters.QueueConfig{Name: "jobs", Lease: time.Minute})
	declare(t, a, adapters.QueueConfig{Name: "jobs", Lease: time.Minute}) // same: fine
	err := a.DeclareQueue(testCtx(t), adapters.QueueConfig{Name: "jobs", Lease: 2 * time.Minute})
	if !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Fatalf("declare with another lease: %v, want ErrInvalidArgument", err)
	}
	t.Logf("error reads: %v", err)
}

func TestDeleteQueueEndsConsumersAndLeases(t *testing.T) {
	srv := mem.NewServer()
	a := client(t, srv)
	declare(t, a, adapters.QueueConfig{Name: "jobs", Lease: time.Minute})
	enqueue(t, a, "jobs", "x")
	c := consume(t, a, "jobs")
	d := receive(t, c)
	if err := a.DeleteQueue(testCtx(t), "jobs"); err != nil {
		t.Fatal(err)
	}
	if err := d.Ack(testCtx(t)); !errors.Is(err, adapters.ErrLeaseLost) {
		t.Errorf("Ack after DeleteQueue: %v, want ErrLeaseLost", err)
	}
	if _, err := c.Receive(testCtx(t)); !errors.Is(err, adapters.ErrNotFound) {
		t.Errorf("Receive after DeleteQueue: %v, want ErrNotFound", err)
	}
	if _, err := srv.Stats("jobs"); !errors.Is(err, adapters.ErrNotFound) {
		t.Errorf("Stats after DeleteQueue: %v, want ErrNotFound", err)
	}
}

func TestURLSharesNamedServer(t *testing.T) {
	ctx := testCtx(t)
	a, err := adapters.Open(ctx, "mem://url-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b, err := adapters.Open(ctx, "mem://url-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	sub := subscribe(t, b, "ev")
	publish(t, a, "ev", "shared")
	if m, err := recvMsg(t, sub); err != nil || m.ID != "shared" {
		t.Fatalf("%q, %v; want \"shared\" across two Opens of one URL", m.ID, err)
	}
	if mem.Named("url-test") != a.(*mem.Broker).Server() {
		t.Error("Named(\"url-test\") is not the server behind mem://url-test")
	}
	if _, err := adapters.Open(ctx, "mem://x/path?y=1"); !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Errorf("mem URL with a path: %v, want ErrInvalidArgument", err)
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	before := runtime.NumGoroutine()
	srv := mem.NewServer()
	a, b := srv.Client(), srv.Client()
	ctx := testCtx(t)
	if err := a.DeclareQueue(ctx, adapters.QueueConfig{Name: "jobs", Lease: time.Minute}); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 4)
	for _, cl := range []*mem.Broker{a, b} {
		c, err := cl.Consume(ctx, "jobs", adapters.ConsumeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s, err := cl.Subscribe(ctx, "ev")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _, err := c.Receive(ctx); errs <- err }()
		go func() { _, err := s.Receive(ctx); errs <- err }()
	}
	srv.Close()
	for range 4 {
		if err := <-errs; !errors.Is(err, adapters.ErrClosed) {
			t.Errorf("blocked Receive after Server.Close: %v, want ErrClosed", err)
		}
	}
	deadline := time.Now().Add(wait)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after Close, %d before", n, before)
	}
}
