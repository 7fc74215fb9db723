package workqueue

import (
	"math"
	"math/rand/v2"
	"time"
)

// RetryPolicy chooses the delay before the next delivery after attempt
// (1-based) failed.
type RetryPolicy interface {
	Backoff(attempt int) time.Duration
}

// Backoff is exponential backoff with jitter: Initial × Multiplier^(attempt-1),
// capped at Max, then reduced by a random fraction of at most Jitter.
type Backoff struct {
	Initial    time.Duration // default 1s
	Max        time.Duration // default 5m
	Multiplier float64       // default 2
	Jitter     float64       // in [0, 1]; 0 means none
	// Rand returns a number in [0, 1); default math/rand/v2.Float64.
	Rand func() float64
}

// DefaultBackoff is the policy used when Config.Retry is nil.
func DefaultBackoff() Backoff {
	return Backoff{Initial: time.Second, Max: 5 * time.Minute, Multiplier: 2, Jitter: 0.2}
}

// Backoff implements RetryPolicy.
func (b Backoff) Backoff(attempt int) time.Duration {
	if b.Initial <= 0 {
		b.Initial = time.Second
	}
	if b.Max <= 0 {
		b.Max = 5 * time.Minute
	}
	if b.Multiplier < 1 {
		b.Multiplier = 2
	}
	if attempt < 1 {
		attempt = 1
	}
	d := float64(b.Initial) * math.Pow(b.Multiplier, float64(attempt-1))
	if d > float64(b.Max) || math.IsInf(d, 0) {
		d = float64(b.Max)
	}
	if b.Jitter > 0 {
		r := rand.Float64
		if b.Rand != nil {
			r = b.Rand
		}
		d -= d * math.Min(b.Jitter, 1) * r()
	}
	return time.Duration(d)
}
