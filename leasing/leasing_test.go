package leasing_test

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/leasing"
	"github.com/jonboulle/clockwork"
)

const lease = 3 * time.Second

type rig struct {
	clock *clockwork.FakeClock
	srv   *mem.Server
	b     *mem.Broker
	queue string
}

func newRig(t *testing.T) *rig {
	t.Helper()
	fc := clockwork.NewFakeClock()
	srv := mem.NewServer(mem.WithClock(fc))
	t.Cleanup(srv.Close)
	r := &rig{clock: fc, srv: srv, b: srv.Client(), queue: "lease-" + t.Name()}
	ctx := context.Background()
	if err := r.b.DeclareQueue(ctx, adapters.QueueConfig{Name: r.queue, Lease: lease, MaxAttempts: 5}); err != nil {
		t.Fatal(err)
	}
	if err := r.b.Enqueue(ctx, r.queue, adapters.Message{ID: "item-1", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) receive(t *testing.T, b *mem.Broker) adapters.Delivery {
	t.Helper()
	c, err := b.Consume(context.Background(), r.queue, adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := c.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func logger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// waitTimer waits until the lease loop sleeps on its timer.
func waitTimer(t *testing.T, fc *clockwork.FakeClock, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := fc.BlockUntilContext(ctx, n); err != nil {
		t.Fatalf("lease loop never waited on the clock: %v", err)
	}
}

func TestHoldRenewsWellInsideTheLeaseSoNoOneElseGetsTheItem(t *testing.T) {
	r := newRig(t)
	d := r.receive(t, r.b)
	var renewals atomic.Int64
	ctx, l := leasing.Hold(context.Background(), d, leasing.Config{Length: lease},
		leasing.Options{Clock: r.clock, Logger: logger(t), OnRenew: func() { renewals.Add(1) }})
	t.Cleanup(l.Release)
	first := l.Deadline()
	for i := 1; i <= 6; i++ { // 6 s on a 3 s lease
		waitTimer(t, r.clock, 1)
		r.clock.Advance(time.Second)
	}
	waitTimer(t, r.clock, 1)
	if ctx.Err() != nil {
		t.Fatalf("work cancelled although renewals succeed: %v", context.Cause(ctx))
	}
	if got := renewals.Load(); got != 6 {
		t.Fatalf("renewals = %d, want 6 (one per second on a 3s lease)", got)
	}
	if tok := l.Token(); tok.Epoch != 6 || tok.Attempt != 1 || tok.ID != "item-1" {
		t.Fatalf("token = %+v, want attempt 1 epoch 6 id item-1", tok)
	}
	if got, want := l.WorkDeadline(), l.Deadline().Add(-lease/10); !got.Equal(want) {
		t.Fatalf("WorkDeadline %v, want the deadline minus the default margin %v", got, want)
	}
	if !l.Deadline().After(first) || !l.Valid() {
		t.Fatalf("deadline %v not moved past %v or lease not valid", l.Deadline(), first)
	}
	st, err := r.srv.Stats(r.queue)
	if err != nil {
		t.Fatal(err)
	}
	if st.Leased != 1 || st.Ready != 0 {
		t.Fatalf("after 6s on a 3s lease with renewals: %+v, want the item still leased", st)
	}
}

func TestRenewalsFailingCancelsWorkBeforeTheDeadline(t *testing.T) {
	r := newRig(t)
	d := r.receive(t, r.b)
	deadline := d.LeaseDeadline()
	lost := make(chan error, 1)
	ctx, l := leasing.Hold(context.Background(), d, leasing.Config{Length: lease},
		leasing.Options{Clock: r.clock, Logger: logger(t), OnLost: func(err error) { lost <- err }})
	t.Cleanup(l.Release)
	// Make every Extend fail with ErrUnavailable... but keep the lease at
	// the broker: a network blip, not an expiry.
	r.b.Disconnect()
	var cancelledAt time.Time
	for i := 0; i < 100 && ctx.Err() == nil; i++ {
		waitTimer(t, r.clock, 1)
		r.clock.Advance(100 * time.Millisecond)
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond): // give the loop a chance to run; the condition is ctx.Done
		}
		if ctx.Err() != nil {
			cancelledAt = r.clock.Now()
		}
	}
	if ctx.Err() == nil {
		t.Fatal("work never cancelled although every renewal failed")
	}
	if !errors.Is(context.Cause(ctx), leasing.ErrLost) || !errors.Is(context.Cause(ctx), adapters.ErrLeaseLost) {
		t.Fatalf("cause = %v, want leasing.ErrLost and adapters.ErrLeaseLost", context.Cause(ctx))
	}
	if !cancelledAt.Before(deadline) {
		t.Fatalf("cancelled at %v, not before the deadline %v", cancelledAt, deadline)
	}
	t.Logf("cancelled %s before the deadline: %v", deadline.Sub(cancelledAt), context.Cause(ctx))
	if err := <-lost; err == nil || l.Valid() || l.Err() == nil {
		t.Fatalf("OnLost err %v, Valid %v, Err %v", err, l.Valid(), l.Err())
	}
}

func TestRenewalRefusedCancelsWorkAtOnce(t *testing.T) {
	r := newRig(t)
	d := r.receive(t, r.b)
	ctx, l := leasing.Hold(context.Background(), d, leasing.Config{Length: lease, RenewEvery: 2 * time.Second, Margin: 100 * time.Millisecond},
		leasing.Options{Clock: r.clock, Logger: logger(t)})
	t.Cleanup(l.Release)
	// The item is settled behind the lease's back (as if another holder
	// had it): the next Extend is refused with ErrLeaseLost.
	if err := d.Nack(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	waitTimer(t, r.clock, 1)
	r.clock.Advance(2 * time.Second)
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("work not cancelled after a refused renewal")
	}
	if !errors.Is(context.Cause(ctx), leasing.ErrLost) {
		t.Fatalf("cause = %v, want ErrLost", context.Cause(ctx))
	}
}

func TestReleaseStopsRenewingAndCancelsTheWorkContext(t *testing.T) {
	r := newRig(t)
	d := r.receive(t, r.b)
	var renewals atomic.Int64
	ctx, l := leasing.Hold(context.Background(), d, leasing.Config{Length: lease},
		leasing.Options{Clock: r.clock, Logger: logger(t), OnRenew: func() { renewals.Add(1) }})
	waitTimer(t, r.clock, 1)
	l.Release()
	l.Release() // idempotent
	if ctx.Err() == nil {
		t.Fatal("work context still live after Release")
	}
	r.clock.Advance(10 * time.Second)
	if renewals.Load() != 0 {
		t.Fatalf("renewed %d times after Release", renewals.Load())
	}
	if l.Err() != nil {
		t.Fatalf("Release is not a loss: Err = %v", l.Err())
	}
}

func TestConfigValidateExplainsTheTimingRule(t *testing.T) {
	err := leasing.Config{Length: 3 * time.Second, RenewEvery: 2 * time.Second, Margin: time.Second}.WithDefaults().Validate()
	if !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Fatalf("err = %v, want ErrInvalidArgument", err)
	}
	t.Log(err)
	if err := (leasing.Config{Length: time.Second}).WithDefaults().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
}

func TestTokenOrdersAttemptsThenEpochs(t *testing.T) {
	a := leasing.Token{Attempt: 1, Epoch: 9}
	b := leasing.Token{Attempt: 2, Epoch: 0}
	if !a.Less(b) || b.Less(a) {
		t.Fatalf("want %v < %v", a, b)
	}
	if !(leasing.Token{Attempt: 2, Epoch: 1}).Less(leasing.Token{Attempt: 2, Epoch: 2}) {
		t.Fatal("epoch order")
	}
}

func TestItemThatWaitedBeforeHoldIsRenewedAtOnce(t *testing.T) {
	r := newRig(t)
	d := r.receive(t, r.b)
	// The item sat in a buffer for 2.5s of its 3s lease before the work
	// began: the first renewal must come now, not after RenewEvery (which
	// would be past the margin).
	r.clock.Advance(2500 * time.Millisecond)
	renewed := make(chan struct{}, 10)
	ctx, l := leasing.Hold(context.Background(), d, leasing.Config{Length: lease},
		leasing.Options{Clock: r.clock, Logger: logger(t), OnRenew: func() { renewed <- struct{}{} }})
	t.Cleanup(l.Release)
	select {
	case <-renewed:
	case <-ctx.Done():
		t.Fatalf("lease given up instead of renewed: %v", context.Cause(ctx))
	case <-time.After(10 * time.Second):
		t.Fatal("no renewal")
	}
	if ctx.Err() != nil || !l.Valid() {
		t.Fatalf("lease not valid after renewal: %v", context.Cause(ctx))
	}
}

func TestKeeperRenewsTheLeasesItHoldsInTurnAndAnOverlappingOne(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	for _, id := range []string{"item-2", "item-3"} {
		if err := r.b.Enqueue(ctx, r.queue, adapters.Message{ID: id, Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	var renewals atomic.Int64
	k := leasing.NewKeeper(leasing.Config{Length: lease},
		leasing.Options{Clock: r.clock, Logger: logger(t), OnRenew: func() { renewals.Add(1) }})

	_, l1 := k.Hold(ctx, r.receive(t, r.b))
	waitTimer(t, r.clock, 1)
	r.clock.Advance(time.Second)
	waitTimer(t, r.clock, 1)
	l1.Release()
	if got := l1.Token().Epoch; got != 1 {
		t.Fatalf("first lease renewed %d times in 1s of a 3s lease, want 1", got)
	}

	// The next lease re-uses the timer; one taken while it is still held
	// (a Keeper shared by mistake) gets a timer of its own.
	ctx2, l2 := k.Hold(ctx, r.receive(t, r.b))
	t.Cleanup(l2.Release)
	ctx3, l3 := k.Hold(ctx, r.receive(t, r.b))
	t.Cleanup(l3.Release)
	for range 6 {
		waitTimer(t, r.clock, 2)
		r.clock.Advance(time.Second)
	}
	waitTimer(t, r.clock, 2)
	for i, c := range []context.Context{ctx2, ctx3} {
		if c.Err() != nil {
			t.Fatalf("lease %d lost although renewals succeed: %v", i+2, context.Cause(c))
		}
	}
	if e1, e2, e3 := l1.Token().Epoch, l2.Token().Epoch, l3.Token().Epoch; e1 != 1 || e2 != 6 || e3 != 6 {
		t.Fatalf("epochs %d, %d, %d: want 1 (released), 6, 6", e1, e2, e3)
	}
	if got := renewals.Load(); got != 13 {
		t.Fatalf("renewals = %d, want 13", got)
	}
	st, err := r.srv.Stats(r.queue)
	if err != nil {
		t.Fatal(err)
	}
	if st.Leased != 2 || st.Ready != 1 {
		t.Fatalf("stats %+v: want the two held items leased and the released one back", st)
	}
}
