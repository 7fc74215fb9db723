package driver

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// State is where a Lease is in its life.
type State uint8

const (
	// StateHeld: the consumer holds the item and may settle or extend it.
	StateHeld State = iota
	// StateSettling: an operation (Ack, Nack, Extend, DeadLetter) is running.
	StateSettling
	// StateDone: settled, expired, released or lost; every later operation
	// fails with adapters.ErrLeaseLost.
	StateDone
)

func (s State) String() string {
	switch s {
	case StateHeld:
		return "held"
	case StateSettling:
		return "settling"
	default:
		return "done"
	}
}

// Hooks are an adapter's part in a Lease. Every hook is optional.
type Hooks struct {
	// Expire runs once, on a timer goroutine, when the deadline passes
	// while the lease is held (not while an operation runs: a failed
	// operation re-arms the timer). The lease is done when it runs; the
	// hook does the broker side, such as requeueing the item or moving a
	// last attempt to the dead-letter queue. The timer is set when Expire
	// or Done is, so an expired lease ends (and Done runs) on time.
	Expire func()
	// Done runs once, when the lease becomes done by any path (the
	// consumer forgets the delivery).
	Done func()
	// Valid, if set, returns nil while the broker still holds the item for
	// this consumer (its channel or partition is still there), else why
	// not; Begin then fails with an error that matches ErrLeaseLost and
	// whatever that error matches (ErrClosed, say).
	Valid func() error
}

// Lease is the state of one delivery's lease. The zero value is not
// usable; call Start.
type Lease struct {
	// sem is held from Begin to the end of the operation: operations on
	// one delivery run one at a time.
	sem   chan struct{}
	hooks Hooks

	mu       sync.Mutex
	state    State
	deadline time.Time
	timer    *time.Timer
}

// Start makes the lease held until deadline. Call it before the delivery is
// shared with another goroutine (added to a Held set, handed out): a Lease
// not yet started is not safe to use.
func (l *Lease) Start(deadline time.Time, h Hooks) {
	l.sem = make(chan struct{}, 1)
	l.hooks = h
	l.mu.Lock()
	defer l.mu.Unlock()
	l.state = StateHeld
	l.deadline = deadline
	l.arm()
}

// arm sets the expiry timer for the current deadline; l.mu is held. A
// lease with neither an Expire nor a Done hook needs none: its expiry is
// noticed by the next Begin.
func (l *Lease) arm() {
	if l.hooks.Expire == nil && l.hooks.Done == nil {
		return
	}
	wait := max(time.Until(l.deadline), 0)
	if l.timer == nil {
		l.timer = time.AfterFunc(wait, l.expire)
		return
	}
	l.timer.Reset(wait)
}

func (l *Lease) stopTimer() {
	if l.timer != nil {
		l.timer.Stop()
	}
}

// expire runs when the timer fires.
func (l *Lease) expire() {
	l.mu.Lock()
	if l.state != StateHeld {
		l.mu.Unlock()
		return
	}
	if left := time.Until(l.deadline); left > 0 {
		l.timer.Reset(left) // extended meanwhile
		l.mu.Unlock()
		return
	}
	l.state = StateDone
	l.mu.Unlock()
	l.done()
	if l.hooks.Expire != nil {
		l.hooks.Expire()
	}
}

func (l *Lease) done() {
	if l.hooks.Done != nil {
		l.hooks.Done()
	}
}

// lapse ends a held lease found past its deadline by Begin or Take rather
// than by the timer: the Expire hook runs (on its own goroutine, as it would
// from the timer) so the broker side is done either way. l.mu is held; the
// caller calls the returned function after unlocking.
func (l *Lease) lapse() func() {
	l.state = StateDone
	l.stopTimer()
	return func() {
		l.done()
		if l.hooks.Expire != nil {
			go l.hooks.Expire()
		}
	}
}

// Deadline is the lease's deadline.
func (l *Lease) Deadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deadline
}

// State is the lease's state now.
func (l *Lease) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state
}

// Begin starts an operation: it waits (at most until ctx ends) for an
// operation already running on this delivery, then moves a held, unexpired,
// valid lease to settling. It fails with ErrLeaseLost otherwise, and moves
// an expired or invalid lease to done. op names the operation in errors.
// Every nil return must be followed by exactly one of Settled, Failed or
// Extended.
func (l *Lease) Begin(ctx context.Context, op string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case l.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	l.mu.Lock()
	var err error
	var after func()
	switch {
	case l.state != StateHeld:
		// Released by a Close, say: the Valid hook tells that apart.
		if l.hooks.Valid != nil {
			if why := l.hooks.Valid(); why != nil {
				err = &adapters.Error{Code: adapters.ErrLeaseLost, Op: op, Err: why}
				break
			}
		}
		err = adapters.Errorf(adapters.ErrLeaseLost, op, "already settled, released or expired")
	case !time.Now().Before(l.deadline):
		err = adapters.Errorf(adapters.ErrLeaseLost, op, "lease expired at %s", l.deadline.Format(time.RFC3339Nano))
		after = l.lapse()
	default:
		if l.hooks.Valid != nil {
			if why := l.hooks.Valid(); why != nil {
				err = &adapters.Error{Code: adapters.ErrLeaseLost, Op: op, Err: why}
				l.state = StateDone
				l.stopTimer()
				after = l.done
			}
		}
	}
	if err != nil {
		l.mu.Unlock()
		<-l.sem
		if after != nil {
			after()
		}
		return err
	}
	l.state = StateSettling
	l.stopTimer()
	l.mu.Unlock()
	return nil
}

// Settled ends an operation that settled the item: the lease is done.
func (l *Lease) Settled() {
	l.mu.Lock()
	wasDone := l.state == StateDone
	l.state = StateDone
	l.mu.Unlock()
	<-l.sem
	if !wasDone {
		l.done()
	}
}

// End ends an operation that settles the item when it succeeds: Settled if
// err is nil, else Failed(err). It returns err.
func (l *Lease) End(err error) error {
	if err != nil {
		l.Failed(err)
		return err
	}
	l.Settled()
	return nil
}

// Failed ends an operation that failed with err. An ErrLeaseLost or
// ErrClosed error, or a deadline that passed meanwhile, ends the lease;
// any other error leaves the item held, so the caller may try again.
func (l *Lease) Failed(err error) {
	if errors.Is(err, adapters.ErrLeaseLost) || errors.Is(err, adapters.ErrClosed) {
		l.Settled()
		return
	}
	l.mu.Lock()
	if l.state == StateSettling {
		l.state = StateHeld
		l.arm()
	}
	l.mu.Unlock()
	<-l.sem
}

// Extended ends an operation that renewed the lease until deadline.
func (l *Lease) Extended(deadline time.Time) {
	l.mu.Lock()
	if l.state == StateSettling {
		l.state = StateHeld
		l.deadline = deadline
		l.arm()
	}
	l.mu.Unlock()
	<-l.sem
}

// Wait returns once no operation runs on the lease (at most until ctx
// ends), such as before Close syncs what running Acks sent.
func (l *Lease) Wait(ctx context.Context) error {
	select {
	case l.sem <- struct{}{}:
		<-l.sem
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Take ends a held lease outside an operation (Consumer.Close releasing
// what it holds). It reports whether the lease was held and unexpired: only
// then should the caller hand the item back. An operation running now keeps
// its outcome; its lease is done when it ends. A lease found past its
// deadline runs the Expire hook instead.
func (l *Lease) Take() bool {
	l.mu.Lock()
	switch l.state {
	case StateDone:
		l.mu.Unlock()
		return false
	case StateSettling:
		// The running operation settles or fails; either way the lease
		// ends with it (Settled is idempotent once done).
		l.state = StateDone
		l.stopTimer()
		l.mu.Unlock()
		l.done()
		return false
	}
	if !time.Now().Before(l.deadline) {
		after := l.lapse()
		l.mu.Unlock()
		after()
		return false
	}
	l.state = StateDone
	l.stopTimer()
	l.mu.Unlock()
	l.done()
	return true
}
