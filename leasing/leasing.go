package leasing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/jonboulle/clockwork"
)

// ErrLost is the cause of a work context cancelled because the lease could
// not be kept. It also matches adapters.ErrLeaseLost.
var ErrLost = fmt.Errorf("leasing: %w", adapters.ErrLeaseLost)

// errReleased is the cause of a work context cancelled by Release.
var errReleased = errors.New("leasing: released")

// Config sets the lease timing. The zero value of every field but Length
// means its default.
type Config struct {
	// Length is the queue's lease: how long each Extend keeps the item.
	Length time.Duration
	// RenewEvery is the time between renewals. Default Length/3.
	RenewEvery time.Duration
	// Margin is how long before the known deadline the work is cancelled
	// if renewals have failed. Default Length/10.
	Margin time.Duration
}

// WithDefaults returns c with zero fields set from Length.
func (c Config) WithDefaults() Config {
	if c.RenewEvery == 0 {
		c.RenewEvery = c.Length / 3
	}
	if c.Margin == 0 {
		c.Margin = c.Length / 10
	}
	return c
}

// Validate checks c after WithDefaults: renewals must happen well inside
// the lease, leaving room for at least one retry before the margin.
func (c Config) Validate() error {
	if c.Length <= 0 {
		return adapters.Errorf(adapters.ErrInvalidArgument, "leasing: config", "Length %s: want > 0", c.Length)
	}
	if c.RenewEvery <= 0 || c.Margin <= 0 {
		return adapters.Errorf(adapters.ErrInvalidArgument, "leasing: config",
			"RenewEvery %s and Margin %s: want > 0", c.RenewEvery, c.Margin)
	}
	if c.RenewEvery+c.Margin > c.Length*3/4 {
		return adapters.Errorf(adapters.ErrInvalidArgument, "leasing: config",
			"RenewEvery (%s) + Margin (%s) must be at most 3/4 of Length (%s) so that a failed renewal can be retried in time",
			c.RenewEvery, c.Margin, c.Length)
	}
	return nil
}

// Token is the fencing token of one holding of one item.
type Token struct {
	Queue   string `json:"queue"`
	ID      string `json:"id"`
	Attempt int    `json:"attempt"`
	// Epoch counts successful renewals within this attempt.
	Epoch int64 `json:"epoch"`
}

// String renders the token as "queue/id#attempt.epoch".
func (t Token) String() string { return fmt.Sprintf("%s/%s#%d.%d", t.Queue, t.ID, t.Attempt, t.Epoch) }

// Less orders tokens of the same item: a later attempt wins, then a later
// epoch.
func (t Token) Less(u Token) bool {
	if t.Attempt != u.Attempt {
		return t.Attempt < u.Attempt
	}
	return t.Epoch < u.Epoch
}

// Options are optional knobs of Hold.
type Options struct {
	// Clock defaults to the real clock.
	Clock clockwork.Clock
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// OnRenew is called after each successful renewal.
	OnRenew func()
	// OnLost is called once if the lease is lost, with the cause.
	OnLost func(error)
}

// Lease is a held delivery. Its methods are safe for concurrent use.
//
// Renewals are driven by one timer per lease (clock.AfterFunc), not by a
// goroutine per lease: between renewals a held item costs a timer.
type Lease struct {
	d      adapters.Delivery
	cfg    Config
	opts   Options
	ctx    context.Context // the work context
	cancel context.CancelCauseFunc

	stop     chan struct{} // closed by Release; cancels a running Extend
	lost     chan struct{}
	stopOnce sync.Once

	// run is held while a renewal step runs and by Release, so no step
	// runs after Release returns.
	run      sync.Mutex
	released bool
	timer    clockwork.Timer
	retryAt  time.Time // set after a failed renewal
	lastErr  error

	mu       sync.Mutex
	deadline time.Time
	epoch    int64
	err      error
}

// Hold starts keeping the lease on d and returns the context for the work
// on it, derived from parent. Call Release when the work is over and before
// settling d. cfg must be valid (see Config.Validate after WithDefaults).
func Hold(parent context.Context, d adapters.Delivery, cfg Config, opts Options) (context.Context, *Lease) {
	cfg = cfg.WithDefaults()
	if opts.Clock == nil {
		opts.Clock = clockwork.NewRealClock()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancelCause(parent)
	l := &Lease{
		d: d, cfg: cfg, opts: opts, ctx: ctx, cancel: cancel,
		stop: make(chan struct{}), lost: make(chan struct{}),
		deadline: d.LeaseDeadline(),
	}
	l.run.Lock()
	l.schedule()
	l.run.Unlock()
	return ctx, l
}

// Token returns the current fencing token.
func (l *Lease) Token() Token {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Token{Queue: l.d.Queue(), ID: l.d.Message().ID, Attempt: l.d.Attempt(), Epoch: l.epoch}
}

// Deadline is the lease deadline as this process conservatively knows it.
func (l *Lease) Deadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deadline
}

// WorkDeadline is Deadline minus Margin: unless the lease is renewed
// before then, the work context is cancelled at that time and Valid turns
// false, so the holder does nothing with the item after it.
func (l *Lease) WorkDeadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deadline.Add(-l.cfg.Margin)
}

// Valid reports whether the lease is neither lost nor within Margin of its
// deadline: whether it is still safe to record the result of the work.
func (l *Lease) Valid() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err == nil && l.opts.Clock.Now().Before(l.deadline.Add(-l.cfg.Margin))
}

// Lost is closed when the lease is lost.
func (l *Lease) Lost() <-chan struct{} { return l.lost }

// Err returns nil while the lease holds, else the cause (matching ErrLost).
func (l *Lease) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Release stops renewing, waits for a renewal in progress to end and
// cancels the work context. It does not settle the delivery. It is
// idempotent.
func (l *Lease) Release() {
	l.stopOnce.Do(func() { close(l.stop) })
	l.run.Lock()
	l.released = true
	if l.timer != nil {
		l.timer.Stop()
	}
	l.run.Unlock()
	l.cancel(errReleased)
}

func (l *Lease) lose(cause error) {
	l.mu.Lock()
	if l.err != nil {
		l.mu.Unlock()
		return
	}
	l.err = cause
	l.mu.Unlock()
	close(l.lost)
	l.cancel(cause)
	l.opts.Logger.Warn("leasing: lease lost; cancelling work", "queue", l.d.Queue(), "id", l.d.Message().ID,
		"attempt", l.d.Attempt(), "err", cause)
	if l.opts.OnLost != nil {
		l.opts.OnLost(cause)
	}
}

// times returns the cutoff (deadline - Margin) and when the next renewal is
// due: once the time left is down to Length - RenewEvery (every RenewEvery
// for a fresh lease, at once for an item that waited in a prefetch buffer),
// or at the retry time after a failed renewal.
func (l *Lease) times() (deadline, cutoff, next time.Time) {
	l.mu.Lock()
	deadline = l.deadline
	l.mu.Unlock()
	cutoff = deadline.Add(-l.cfg.Margin)
	next = deadline.Add(l.cfg.RenewEvery - l.cfg.Length)
	if !l.retryAt.IsZero() {
		next = l.retryAt
	}
	return deadline, cutoff, next
}

// schedule arms the timer for the next renewal or the cutoff, whichever
// comes first. l.run must be held.
func (l *Lease) schedule() {
	_, cutoff, next := l.times()
	wake := next
	if cutoff.Before(wake) {
		wake = cutoff
	}
	l.timer = l.opts.Clock.AfterFunc(l.opts.Clock.Until(wake), l.step)
}

// step runs when the timer fires: it gives the lease up at the cutoff,
// renews it when due, and arms the timer again.
func (l *Lease) step() {
	l.run.Lock()
	defer l.run.Unlock()
	if l.released || l.ctx.Err() != nil {
		return
	}
	clock := l.opts.Clock
	deadline, cutoff, next := l.times()
	now := clock.Now()
	if !now.Before(cutoff) {
		cause := fmt.Errorf("%w: deadline %s reached without a renewal", ErrLost, deadline.Format(time.RFC3339Nano))
		if l.lastErr != nil {
			cause = fmt.Errorf("%w: deadline reached; last renewal failed: %v", ErrLost, l.lastErr)
		}
		l.lose(cause)
		return
	}
	if now.Before(next) {
		l.schedule()
		return
	}
	// Renew, bounded by the cutoff so that a hung call cannot outlive it,
	// and cut short by Release. (A real-time timeout: a fake clock's timer
	// would count as one more waiter in tests.)
	ectx, ecancel := context.WithTimeout(l.ctx, clock.Until(cutoff))
	go func() {
		select {
		case <-l.stop:
			ecancel()
		case <-ectx.Done():
		}
	}()
	err := l.d.Extend(ectx, l.cfg.Length)
	ecancel()
	select {
	case <-l.stop:
		return
	default:
	}
	switch {
	case err == nil:
		l.mu.Lock()
		l.deadline = now.Add(l.cfg.Length)
		l.epoch++
		l.mu.Unlock()
		l.lastErr, l.retryAt = nil, time.Time{}
		if l.opts.OnRenew != nil {
			l.opts.OnRenew()
		}
	case errors.Is(err, adapters.ErrLeaseLost) || errors.Is(err, adapters.ErrClosed):
		l.lose(fmt.Errorf("%w: renewal refused: %v", ErrLost, err))
		return
	case l.ctx.Err() != nil:
		return
	default:
		// Transient: try again soon, while the cutoff allows.
		l.lastErr = err
		l.opts.Logger.Debug("leasing: renewal failed; retrying", "queue", l.d.Queue(), "id", l.d.Message().ID, "err", err)
		l.retryAt = clock.Now().Add(l.cfg.RenewEvery / 4)
	}
	l.schedule()
}
