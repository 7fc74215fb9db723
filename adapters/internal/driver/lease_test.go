package driver

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

type counts struct{ expired, done atomic.Int32 }

func (c *counts) hooks() Hooks {
	return Hooks{Expire: func() { c.expired.Add(1) }, Done: func() { c.done.Add(1) }}
}

func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if f() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestSettleEndsTheLeaseOnce(t *testing.T) {
	var c counts
	var l Lease
	l.Start(time.Now().Add(time.Hour), c.hooks())
	ctx := context.Background()
	if err := l.Begin(ctx, "ack"); err != nil {
		t.Fatal(err)
	}
	if got := l.State(); got != StateSettling {
		t.Fatalf("state during the operation = %s", got)
	}
	l.Settled()
	if err := l.Begin(ctx, "ack"); !errors.Is(err, adapters.ErrLeaseLost) {
		t.Fatalf("second Begin = %v, want ErrLeaseLost", err)
	}
	if l.Take() {
		t.Fatal("Take of a settled lease reported it held")
	}
	if c.done.Load() != 1 || c.expired.Load() != 0 {
		t.Fatalf("done %d expired %d, want 1 and 0", c.done.Load(), c.expired.Load())
	}
}

func TestFailedKeepsTheLeaseUnlessLost(t *testing.T) {
	var c counts
	var l Lease
	l.Start(time.Now().Add(time.Hour), c.hooks())
	ctx := context.Background()
	for _, tc := range []struct {
		err  error
		want State
	}{
		{adapters.Errorf(adapters.ErrUnavailable, "ack", "link down"), StateHeld},
		{context.DeadlineExceeded, StateHeld},
		{adapters.Errorf(adapters.ErrLeaseLost, "ack", "lock lost"), StateDone},
	} {
		if err := l.Begin(ctx, "ack"); err != nil {
			t.Fatal(err)
		}
		l.Failed(tc.err)
		if got := l.State(); got != tc.want {
			t.Fatalf("after Failed(%v): %s, want %s", tc.err, got, tc.want)
		}
	}
	if c.done.Load() != 1 {
		t.Fatalf("done ran %d times", c.done.Load())
	}
}

func TestOperationsRunOneAtATime(t *testing.T) {
	var l Lease
	l.Start(time.Now().Add(time.Hour), Hooks{})
	ctx := context.Background()
	if err := l.Begin(ctx, "extend"); err != nil {
		t.Fatal(err)
	}
	second := make(chan error, 1)
	go func() { second <- l.Begin(ctx, "ack") }()
	select {
	case err := <-second:
		t.Fatalf("second Begin returned %v while the first operation ran", err)
	case <-time.After(50 * time.Millisecond):
	}
	newDeadline := time.Now().Add(2 * time.Hour)
	l.Extended(newDeadline)
	if err := <-second; err != nil {
		t.Fatalf("Begin after the extend = %v", err)
	}
	if !l.Deadline().Equal(newDeadline) {
		t.Fatalf("deadline %v, want %v", l.Deadline(), newDeadline)
	}
	l.Settled()

	// A waiting Begin gives up with its context.
	var m Lease
	m.Start(time.Now().Add(time.Hour), Hooks{})
	if err := m.Begin(ctx, "ack"); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := m.Begin(cctx, "nack"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Begin while busy with a short ctx = %v", err)
	}
}

func TestExpireRunsOnceAtTheDeadline(t *testing.T) {
	var c counts
	var l Lease
	l.Start(time.Now().Add(30*time.Millisecond), c.hooks())
	eventually(t, "expiry", func() bool { return c.expired.Load() == 1 })
	if err := l.Begin(context.Background(), "ack"); !errors.Is(err, adapters.ErrLeaseLost) {
		t.Fatalf("Begin after expiry = %v", err)
	}
	time.Sleep(20 * time.Millisecond)
	if c.expired.Load() != 1 || c.done.Load() != 1 {
		t.Fatalf("expired %d done %d, want 1 and 1", c.expired.Load(), c.done.Load())
	}
}

func TestExtendMovesTheExpiry(t *testing.T) {
	var c counts
	var l Lease
	l.Start(time.Now().Add(40*time.Millisecond), c.hooks())
	if err := l.Begin(context.Background(), "extend"); err != nil {
		t.Fatal(err)
	}
	l.Extended(time.Now().Add(time.Hour))
	time.Sleep(80 * time.Millisecond)
	if c.expired.Load() != 0 || l.State() != StateHeld {
		t.Fatalf("expired %d state %s after an extend", c.expired.Load(), l.State())
	}
}

func TestOperationOutlivingTheDeadlineDoesNotExpire(t *testing.T) {
	// The timer is stopped while an operation runs: a slow Ack is not
	// raced by a requeue; a failed one finds the deadline passed.
	var c counts
	var l Lease
	l.Start(time.Now().Add(20*time.Millisecond), c.hooks())
	if err := l.Begin(context.Background(), "ack"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(40 * time.Millisecond)
	if c.expired.Load() != 0 {
		t.Fatal("expired during the operation")
	}
	l.Failed(errors.New("timeout"))
	eventually(t, "expiry after the failed operation", func() bool { return c.expired.Load() == 1 })
}

func TestBeginAndTakeRunTheExpiryOfALapsedLease(t *testing.T) {
	for _, name := range []string{"begin", "take"} {
		t.Run(name, func(t *testing.T) {
			var c counts
			var l Lease
			// A deadline found passed before the timer ran (a loaded
			// machine): the timer is set an hour out, the deadline moved.
			l.Start(time.Now().Add(time.Hour), c.hooks())
			l.mu.Lock()
			l.deadline = time.Now().Add(-time.Millisecond)
			l.mu.Unlock()
			switch name {
			case "begin":
				if err := l.Begin(context.Background(), "ack"); !errors.Is(err, adapters.ErrLeaseLost) {
					t.Fatalf("Begin = %v", err)
				}
			case "take":
				if l.Take() {
					t.Fatal("Take reported a lapsed lease held")
				}
			}
			eventually(t, "the expire hook", func() bool { return c.expired.Load() == 1 })
			if c.done.Load() != 1 {
				t.Fatalf("done %d", c.done.Load())
			}
		})
	}
}

func TestValidHookLosesTheLease(t *testing.T) {
	var c counts
	var l Lease
	h := c.hooks()
	h.Valid = func() error { return adapters.Errorf(adapters.ErrClosed, "consume", "its channel closed") }
	l.Start(time.Now().Add(time.Hour), h)
	err := l.Begin(context.Background(), "ack")
	if !errors.Is(err, adapters.ErrLeaseLost) || !errors.Is(err, adapters.ErrClosed) || !strings.Contains(err.Error(), "its channel closed") {
		t.Fatalf("Begin = %v", err)
	}
	if c.done.Load() != 1 || c.expired.Load() != 0 {
		t.Fatalf("done %d expired %d", c.done.Load(), c.expired.Load())
	}
}

func TestTakeDuringAnOperation(t *testing.T) {
	var c counts
	var l Lease
	l.Start(time.Now().Add(time.Hour), c.hooks())
	if err := l.Begin(context.Background(), "ack"); err != nil {
		t.Fatal(err)
	}
	if l.Take() {
		t.Fatal("Take during an operation reported the lease held")
	}
	l.Failed(errors.New("link down")) // the operation ends; the lease stays done
	if l.State() != StateDone || c.done.Load() != 1 {
		t.Fatalf("state %s done %d", l.State(), c.done.Load())
	}
}

func TestHeldCloseReturnsEverythingOnce(t *testing.T) {
	var h Held[int]
	for i := range 3 {
		if !h.Add(i) {
			t.Fatal("Add refused before Close")
		}
	}
	h.Remove(1)
	got := h.Close()
	if len(got) != 2 {
		t.Fatalf("Close returned %v, want the 2 still held", got)
	}
	if h.Add(9) {
		t.Fatal("Add accepted after Close")
	}
	if again := h.Close(); len(again) != 0 {
		t.Fatalf("second Close returned %v", again)
	}
}

func TestEndSettlesOrFails(t *testing.T) {
	var c counts
	var l Lease
	l.Start(time.Now().Add(time.Hour), c.hooks())
	ctx := context.Background()
	boom := errors.New("link down")
	if err := l.Begin(ctx, "ack"); err != nil {
		t.Fatal(err)
	}
	if err := l.End(boom); err != boom || l.State() != StateHeld {
		t.Fatalf("End(error) = %v, state %s; want the error back and the lease held", err, l.State())
	}
	if err := l.Begin(ctx, "ack"); err != nil {
		t.Fatal(err)
	}
	if err := l.End(nil); err != nil || l.State() != StateDone || c.done.Load() != 1 {
		t.Fatalf("End(nil) = %v, state %s, done %d", err, l.State(), c.done.Load())
	}
}

func TestWaitWaitsForTheRunningOperation(t *testing.T) {
	var l Lease
	l.Start(time.Now().Add(time.Hour), Hooks{})
	ctx := context.Background()
	if err := l.Wait(ctx); err != nil {
		t.Fatalf("Wait with nothing running: %v", err)
	}
	if err := l.Begin(ctx, "ack"); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := l.Wait(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait during an operation with a short ctx = %v", err)
	}
	waited := make(chan error, 1)
	go func() { waited <- l.Wait(ctx) }()
	select {
	case err := <-waited:
		t.Fatalf("Wait returned %v while the operation still ran", err)
	case <-time.After(20 * time.Millisecond):
	}
	l.Settled()
	if err := <-waited; err != nil {
		t.Fatalf("Wait after the operation ended: %v", err)
	}
}

func TestDoneAloneEndsAnExpiredLeaseOnTime(t *testing.T) {
	var done atomic.Int32
	var l Lease
	l.Start(time.Now().Add(20*time.Millisecond), Hooks{Done: func() { done.Add(1) }})
	eventually(t, "Done at the deadline", func() bool { return done.Load() == 1 })
	if l.State() != StateDone {
		t.Fatalf("state %s after the deadline", l.State())
	}
}

func TestBeginOnAnEndedLeaseSaysWhyWhenInvalid(t *testing.T) {
	closed := false
	var l Lease
	l.Start(time.Now().Add(time.Hour), Hooks{Valid: func() error {
		if closed {
			return adapters.Errorf(adapters.ErrClosed, "consume", "the consumer was closed")
		}
		return nil
	}})
	l.Take() // the consumer's Close releases it
	closed = true
	err := l.Begin(context.Background(), "ack")
	if !errors.Is(err, adapters.ErrLeaseLost) || !errors.Is(err, adapters.ErrClosed) {
		t.Fatalf("Begin after a Close = %v, want ErrLeaseLost and ErrClosed", err)
	}
}
