package adapters

import (
	"fmt"
	"strings"
	"time"
)

// Name and header rules shared by every adapter, so that a name valid on one
// broker is valid on all of them.
const (
	// NamePattern is what queue and topic names must match: a letter or
	// digit, then letters, digits, '-' or '_', at most 64 in all.
	NamePattern = `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`
	// HeaderNamePattern is what header names must match.
	HeaderNamePattern = `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`
	// ReservedHeaderPrefix starts the names adapters use themselves.
	ReservedHeaderPrefix = "cb-"
	// HeaderDeadLetterReason carries the reason on dead-lettered items.
	HeaderDeadLetterReason = "cb-dead-letter-reason"
)

// matchName reports whether s matches NamePattern (dot false) or
// HeaderNamePattern (dot true). It runs on every enqueue and publish, so it
// is written out rather than a regexp (a regexp match was 5% of an async
// enqueue's CPU); TestMatchNameAgreesWithPatterns holds it to the patterns.
func matchName(s string, dot bool) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i > 0 && (c == '_' || c == '-' || dot && c == '.'):
		default:
			return false
		}
	}
	return true
}

// ValidateName checks a queue or topic name. kind is "queue" or "topic".
func ValidateName(kind, name string) error {
	if !matchName(name, false) {
		return Errorf(ErrInvalidArgument, kind+" name",
			"%q: want 1-64 characters: letters, digits, '-' or '_', starting with a letter or digit", name)
	}
	return nil
}

// Size is the size of m as counted against Capabilities.MaxMessageSize:
// body, ID, key, and header names and values.
func Size(m Message) int {
	n := len(m.Body) + len(m.ID) + len(m.Key)
	for k, v := range m.Headers {
		n += len(k) + len(v)
	}
	return n
}

// ValidateMessage checks m against the shared rules and caps. op prefixes
// the error. Adapters call it before sending anything.
func ValidateMessage(op string, m Message, caps Capabilities) error {
	if caps.MaxMessageSize > 0 {
		if n := Size(m); n > caps.MaxMessageSize {
			return Errorf(ErrTooLarge, op, "%d bytes, limit %d (%s)", n, caps.MaxMessageSize, caps.Name)
		}
	}
	if caps.MaxHeaders > 0 && len(m.Headers) > caps.MaxHeaders {
		return Errorf(ErrTooLarge, op, "%d headers, limit %d (%s)", len(m.Headers), caps.MaxHeaders, caps.Name)
	}
	for k, v := range m.Headers {
		if !matchName(k, true) {
			return Errorf(ErrInvalidArgument, op, "header name %q: want %s", k, HeaderNamePattern)
		}
		if strings.HasPrefix(strings.ToLower(k), ReservedHeaderPrefix) {
			return Errorf(ErrInvalidArgument, op, "header name %q: the prefix %q is reserved for adapters", k, ReservedHeaderPrefix)
		}
		if strings.ContainsAny(v, "\r\n\x00") {
			return Errorf(ErrInvalidArgument, op, "header %q: value must not contain CR, LF or NUL", k)
		}
	}
	if strings.ContainsAny(m.ID, "\r\n\x00") || len(m.ID) > 128 {
		return Errorf(ErrInvalidArgument, op, "message ID %q: at most 128 bytes, no CR, LF or NUL", m.ID)
	}
	if strings.ContainsAny(m.Key, "\r\n\x00") || len(m.Key) > 128 {
		return Errorf(ErrInvalidArgument, op, "message key %q: at most 128 bytes, no CR, LF or NUL", m.Key)
	}
	return nil
}

// WithDefaults returns cfg with zero fields set to their defaults.
func (cfg QueueConfig) WithDefaults() QueueConfig {
	if cfg.Lease == 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.DedupeWindow == 0 {
		cfg.DedupeWindow = DefaultDedupeWindow
	}
	return cfg
}

// Validate checks cfg (after WithDefaults) against caps. It names the field
// and what is accepted.
func (cfg QueueConfig) Validate(caps Capabilities) error {
	const op = "declare queue"
	if err := ValidateName("queue", cfg.Name); err != nil {
		return err
	}
	if cfg.Lease <= 0 || (caps.MinLease > 0 && cfg.Lease < caps.MinLease) || (caps.MaxLease > 0 && cfg.Lease > caps.MaxLease) {
		return Errorf(ErrInvalidArgument, op, "QueueConfig.Lease %s: %s accepts %s", cfg.Lease, caps.Name, leaseRange(caps))
	}
	if cfg.MaxAttempts < 1 {
		return Errorf(ErrInvalidArgument, op, "QueueConfig.MaxAttempts %d: want at least 1", cfg.MaxAttempts)
	}
	if cfg.Ordered && !caps.Ordering.Available() {
		return Errorf(ErrUnsupported, op, "QueueConfig.Ordered: %s does not order by key", caps.Name)
	}
	if cfg.Dedupe && !caps.Dedupe.Available() {
		return Errorf(ErrUnsupported, op, "QueueConfig.Dedupe: %s does not drop duplicate IDs", caps.Name)
	}
	if cfg.DedupeWindow < 0 {
		return Errorf(ErrInvalidArgument, op, "QueueConfig.DedupeWindow %s: want >= 0", cfg.DedupeWindow)
	}
	return nil
}

func leaseRange(caps Capabilities) string {
	lo, hi := caps.MinLease, caps.MaxLease
	switch {
	case lo > 0 && hi > 0:
		return fmt.Sprintf("%s to %s", lo, hi)
	case hi > 0:
		return fmt.Sprintf("up to %s", hi)
	case lo > 0:
		return fmt.Sprintf("at least %s", lo)
	}
	return "any duration above zero"
}

// ValidateExtend checks the d of Delivery.Extend against the queue's lease.
func ValidateExtend(op string, d, lease time.Duration) error {
	if d <= 0 || d > lease {
		return Errorf(ErrInvalidArgument, op, "extend by %s: want more than 0 and at most the queue lease %s", d, lease)
	}
	return nil
}

// ValidateDelay checks the delay of Delivery.Nack against caps.
func ValidateDelay(op string, d time.Duration, caps Capabilities) error {
	if d < 0 {
		return Errorf(ErrInvalidArgument, op, "nack delay %s: want >= 0", d)
	}
	if d > 0 && !caps.DelayedNack.Available() {
		return Errorf(ErrUnsupported, op, "nack delay %s: %s has no delayed redelivery", d, caps.Name)
	}
	if caps.MaxDelay > 0 && d > caps.MaxDelay {
		return Errorf(ErrInvalidArgument, op, "nack delay %s: %s accepts at most %s", d, caps.Name, caps.MaxDelay)
	}
	return nil
}

// Validate checks o for an adapter that fetches at most ceiling items ahead
// (0: no limit of its own): Prefetch from 0 to ceiling, and MaxPrefetch 0
// (Prefetch) or from Prefetch to ceiling. Adapters that cannot resize what
// they fetch ahead ignore MaxPrefetch but refuse a value no adapter would
// accept, so a configuration that is wrong is wrong on every broker.
func (o ConsumeOptions) Validate(op string, ceiling int) error {
	if o.Prefetch < 0 || ceiling > 0 && o.Prefetch > ceiling {
		want := ">= 0"
		if ceiling > 0 {
			want = fmt.Sprintf("0 to %d", ceiling)
		}
		return Errorf(ErrInvalidArgument, op, "ConsumeOptions.Prefetch %d: want %s (0 means 1)", o.Prefetch, want)
	}
	if o.MaxPrefetch != 0 && (o.MaxPrefetch < o.Prefetch || ceiling > 0 && o.MaxPrefetch > ceiling) {
		want := fmt.Sprintf("at least Prefetch (%d)", o.Prefetch)
		if ceiling > 0 {
			want = fmt.Sprintf("from Prefetch (%d) to %d", o.Prefetch, ceiling)
		}
		return Errorf(ErrInvalidArgument, op, "ConsumeOptions.MaxPrefetch %d: want 0 (Prefetch) or %s", o.MaxPrefetch, want)
	}
	return nil
}
