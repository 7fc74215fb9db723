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
// Renewals are driven by a timer (clock.AfterFunc), not by a goroutine per
// lease; the leases a Keeper holds one after another share one timer.
type Lease struct {
	d      adapters.Delivery
	k      *Keeper
	ctx    context.Context // the work context
	cancel context.CancelCauseFunc

	// run is held while a renewal step runs and by Release, so no step
	// runs after Release returns.
	run      sync.Mutex
	released bool
	retryAt  time.Time // set after a failed renewal
	lastErr  error

	mu       sync.Mutex
	deadline time.Time
	epoch    int64
	err      error
	lost     chan struct{} // made by the first Lost call or by a loss
	// renewing cancels the Extend in progress; releasing is set by
	// Release, which uses renewing to cut that Extend short.
	renewing  context.CancelFunc
	releasing bool
}

// Keeper holds leases one after another for one goroutine, on one timer, so
// a goroutine that runs item after item pays for no timer per item. A Hold
// while the Keeper's last lease is not yet released still works: that lease
// gets a timer of its own.
type Keeper struct {
	cfg  Config
	opts Options

	mu    sync.Mutex
	cur   *Lease // the lease the timer is for; nil when none is held
	timer clockwork.Timer
}

// NewKeeper returns a Keeper that holds leases with cfg and opts. cfg must
// be valid (see Config.Validate after WithDefaults).
func NewKeeper(cfg Config, opts Options) *Keeper {
	cfg = cfg.WithDefaults()
	if opts.Clock == nil {
		opts.Clock = clockwork.NewRealClock()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Keeper{cfg: cfg, opts: opts}
}

// Hold starts keeping the lease on d and returns the context for the work
// on it, derived from parent. Call Release when the work is over and before
// settling d. cfg must be valid (see Config.Validate after WithDefaults).
func Hold(parent context.Context, d adapters.Delivery, cfg Config, opts Options) (context.Context, *Lease) {
	return NewKeeper(cfg, opts).Hold(parent, d)
}

// Hold is the package's Hold with the Keeper's Config and Options.
func (k *Keeper) Hold(parent context.Context, d adapters.Delivery) (context.Context, *Lease) {
	ctx, cancel := context.WithCancelCause(parent)
	l := &Lease{d: d, k: k, ctx: ctx, cancel: cancel, deadline: d.LeaseDeadline()}
	k.mu.Lock()
	if k.cur != nil {
		k.mu.Unlock()
		l.k = &Keeper{cfg: k.cfg, opts: k.opts, cur: l}
	} else {
		k.cur = l
		k.mu.Unlock()
	}
	l.run.Lock()
	l.schedule()
	l.run.Unlock()
	return ctx, l
}

// arm sets the timer to run the current lease's step after wait.
func (k *Keeper) arm(wait time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.timer == nil {
		k.timer = k.opts.Clock.AfterFunc(wait, k.fire)
		return
	}
	k.timer.Reset(wait)
}

// fire runs the step of the lease held now. A timer armed for an earlier
// lease that fires late runs the step of the next one early, which only
// arms the timer again.
func (k *Keeper) fire() {
	k.mu.Lock()
	l := k.cur
	k.mu.Unlock()
	if l != nil {
		l.step()
	}
}

// disarm stops the timer if it is l's.
func (k *Keeper) disarm(l *Lease) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cur != l {
		return
	}
	k.cur = nil
	if k.timer != nil {
		k.timer.Stop()
	}
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
	return l.deadline.Add(-l.k.cfg.Margin)
}

// Valid reports whether the lease is neither lost nor within Margin of its
// deadline: whether it is still safe to record the result of the work.
func (l *Lease) Valid() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err == nil && l.k.opts.Clock.Now().Before(l.deadline.Add(-l.k.cfg.Margin))
}

// Lost is closed when the lease is lost.
func (l *Lease) Lost() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost == nil {
		l.lost = make(chan struct{})
		if l.err != nil {
			close(l.lost)
		}
	}
	return l.lost
}

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
	l.mu.Lock()
	l.releasing = true
	if l.renewing != nil {
		l.renewing()
	}
	l.mu.Unlock()
	l.run.Lock()
	l.released = true
	l.k.disarm(l)
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
	if l.lost != nil {
		close(l.lost)
	}
	l.mu.Unlock()
	l.cancel(cause)
	l.k.opts.Logger.Warn("leasing: lease lost; cancelling work", "queue", l.d.Queue(), "id", l.d.Message().ID,
		"attempt", l.d.Attempt(), "err", cause)
	if l.k.opts.OnLost != nil {
		l.k.opts.OnLost(cause)
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
	cutoff = deadline.Add(-l.k.cfg.Margin)
	next = deadline.Add(l.k.cfg.RenewEvery - l.k.cfg.Length)
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
	l.k.arm(l.k.opts.Clock.Until(wake))
}

// step runs when the timer fires: it gives the lease up at the cutoff,
// renews it when due, and arms the timer again.
func (l *Lease) step() {
	l.run.Lock()
	defer l.run.Unlock()
	if l.released || l.ctx.Err() != nil {
		return
	}
	clock := l.k.opts.Clock
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
	defer ecancel()
	l.mu.Lock()
	if l.releasing {
		l.mu.Unlock()
		return
	}
	l.renewing = ecancel
	l.mu.Unlock()
	err := l.d.Extend(ectx, l.k.cfg.Length)
	l.mu.Lock()
	l.renewing = nil
	releasing := l.releasing
	l.mu.Unlock()
	if releasing {
		return
	}
	switch {
	case err == nil:
		l.mu.Lock()
		l.deadline = now.Add(l.k.cfg.Length)
		l.epoch++
		l.mu.Unlock()
		l.lastErr, l.retryAt = nil, time.Time{}
		if l.k.opts.OnRenew != nil {
			l.k.opts.OnRenew()
		}
	case errors.Is(err, adapters.ErrLeaseLost) || errors.Is(err, adapters.ErrClosed):
		l.lose(fmt.Errorf("%w: renewal refused: %v", ErrLost, err))
		return
	case l.ctx.Err() != nil:
		return
	default:
		// Transient: try again soon, while the cutoff allows.
		l.lastErr = err
		l.k.opts.Logger.Debug("leasing: renewal failed; retrying", "queue", l.d.Queue(), "id", l.d.Message().ID, "err", err)
		l.retryAt = clock.Now().Add(l.k.cfg.RenewEvery / 4)
	}
	l.schedule()
}
