package adapters

import "context"

// Retainer is implemented by brokers that keep the last value per key of a
// named log durably, so that state survives the restart of every client
// (the catalog package keeps its entries there). It is optional: check for
// it with a type assertion. log is a name (see ValidateName); keys are
// opaque strings of 1 to 1024 bytes, which the adapter encodes as its broker
// needs.
type Retainer interface {
	// Retain stores value as key's last value in log, durably once it
	// returns nil; the log is created if needed.
	Retain(ctx context.Context, log, key string, value []byte) error
	// Retained returns every key's last value in log; an empty map if the
	// log does not exist.
	Retained(ctx context.Context, log string) (map[string][]byte, error)
	// Forget removes key from log (nil if it is not there), so that a
	// log whose keys expire does not grow for ever.
	Forget(ctx context.Context, log, key string) error
}

// MaxRetainedKey bounds the keys of Retainer.Retain.
const MaxRetainedKey = 1024

// ValidateRetained checks the log name and key of Retainer.Retain.
func ValidateRetained(op, log, key string) error {
	if err := ValidateName("log", log); err != nil {
		return Wrap(ErrInvalidArgument, op, err)
	}
	if key == "" || len(key) > MaxRetainedKey {
		return Errorf(ErrInvalidArgument, op, "key of %d bytes: want 1 to %d", len(key), MaxRetainedKey)
	}
	return nil
}

// RetainerOf returns b as a Retainer if it is one and, for a decorator (a
// Broker with an Unwrap() Broker method, such as adapters/signed), only if
// the broker it wraps is one too: decorators implement Retainer in any
// case and return ErrUnsupported when what they wrap keeps nothing.
func RetainerOf(b Broker) (Retainer, bool) {
	r, ok := b.(Retainer)
	if !ok {
		return nil, false
	}
	if u, ok := b.(interface{ Unwrap() Broker }); ok {
		if _, ok := RetainerOf(u.Unwrap()); !ok {
			return nil, false
		}
	}
	return r, true
}
