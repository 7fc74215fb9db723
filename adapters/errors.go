package adapters

import (
	"context"
	"errors"
	"fmt"
)

// Sentinel errors. Adapters wrap them (see Errorf and Wrap) so that
// errors.Is matches the code and errors.As still reaches the SDK error.
var (
	// ErrNotFound: the queue or topic does not exist.
	ErrNotFound = errors.New("not found")
	// ErrClosed: the broker, consumer or subscription was closed.
	ErrClosed = errors.New("closed")
	// ErrLeaseLost: the delivery is no longer held by this consumer (its
	// lease expired, the connection that held it died, or it was settled).
	ErrLeaseLost = errors.New("lease lost")
	// ErrTooLarge: the message exceeds the broker's limits.
	ErrTooLarge = errors.New("message too large")
	// ErrInvalidArgument: a name, URL, option or message is malformed.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrUnavailable: the broker cannot be reached now; retrying may work.
	ErrUnavailable = errors.New("broker unavailable")
	// ErrUnsupported: the broker cannot do what was asked (see
	// Capabilities).
	ErrUnsupported = errors.New("unsupported")
	// ErrGap: a subscription may have missed messages. Not fatal.
	ErrGap = errors.New("messages may have been missed")
)

// Error is an adapter error: a code (one of the sentinels), the operation,
// and the underlying cause.
type Error struct {
	Code error  // one of the sentinels above
	Op   string // "nats: enqueue \"jobs\"", for example
	Err  error  // the cause; may be nil
}

func (e *Error) Error() string {
	switch {
	case e.Err == nil:
		return fmt.Sprintf("%s: %v", e.Op, e.Code)
	case errors.Is(e.Err, e.Code):
		return fmt.Sprintf("%s: %v", e.Op, e.Err)
	default:
		return fmt.Sprintf("%s: %v: %v", e.Op, e.Code, e.Err)
	}
}

// Unwrap exposes both the code and the cause.
func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Code}
	}
	return []error{e.Code, e.Err}
}

// Wrap returns err as an Error with the code, unless err is nil (nil), a
// context error (returned unchanged) or already carries a code (the op is
// added, the code kept).
func Wrap(code error, op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var ae *Error
	if errors.As(err, &ae) {
		return &Error{Code: ae.Code, Op: op, Err: err}
	}
	return &Error{Code: code, Op: op, Err: err}
}

// Errorf returns an Error with the code and a formatted cause.
func Errorf(code error, op, format string, args ...any) error {
	return &Error{Code: code, Op: op, Err: fmt.Errorf(format, args...)}
}

// IsRetryable reports whether err is transient: the same call may succeed
// later. Context errors and permanent codes are not retryable.
func IsRetryable(err error) bool {
	return errors.Is(err, ErrUnavailable) && !errors.Is(err, context.Canceled) &&
		!errors.Is(err, context.DeadlineExceeded)
}
