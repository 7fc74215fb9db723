package driver

import "context"

// Outcome is the kept result of an adapters.Pending: Wait runs one resolve
// at a time and, once a resolve reports the outcome known, returns that
// outcome to every later Wait without resolving again.
type Outcome struct {
	turn chan struct{}
	done bool
	err  error
}

// NewOutcome returns an Outcome not yet known.
func NewOutcome() *Outcome { return &Outcome{turn: make(chan struct{}, 1)} }

// Wait returns the kept outcome, or runs resolve (waiting for its turn, at
// most until ctx ends). resolve returns whether the outcome is known, and it;
// one not known (ctx ended first) is returned and not kept.
func (o *Outcome) Wait(ctx context.Context, resolve func(context.Context) (known bool, err error)) error {
	select {
	case o.turn <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-o.turn }()
	if o.done {
		return o.err
	}
	known, err := resolve(ctx)
	if known {
		o.done, o.err = true, err
	}
	return err
}
