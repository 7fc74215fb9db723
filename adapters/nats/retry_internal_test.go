package nats

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestRetryNoRespondersTriesAgainOnlyOnNoResponders: "no responders" (a
// cluster electing a leader) is tried again until the call succeeds; any
// other error, and the end of the caller's context, end the tries.
func TestRetryNoRespondersTriesAgainOnlyOnNoResponders(t *testing.T) {
	calls := 0
	err := retryNoResponders(context.Background(), func() error {
		calls++
		if calls < 3 {
			return nats.ErrNoResponders
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("after two no-responders: err %v after %d calls, want nil after 3", err, calls)
	}

	calls = 0
	other := errors.New("stream config mismatch")
	if err := retryNoResponders(context.Background(), func() error { calls++; return other }); !errors.Is(err, other) || calls != 1 {
		t.Fatalf("other error: %v after %d calls, want it after 1", err, calls)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = retryNoResponders(ctx, func() error { return nats.ErrNoResponders })
	if !errors.Is(err, nats.ErrNoResponders) || time.Since(start) > 2*time.Second {
		t.Fatalf("ended context: %v after %v, want no responders within about 200ms", err, time.Since(start))
	}
}
