package nats

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestRetryTransientTriesAgainOnlyWhileTheClusterIsBetweenLeaders: "no
// responders" and "no suitable peers" (a cluster electing a leader or
// catching a restarted server up) are tried again until the call succeeds;
// any other error, and the end of the caller's context, end the tries.
func TestRetryTransientTriesAgainOnlyWhileTheClusterIsBetweenLeaders(t *testing.T) {
	calls := 0
	err := retryTransient(context.Background(), 0, func(context.Context) error {
		calls++
		switch calls {
		case 1:
			return nats.ErrNoResponders
		case 2:
			return &jetstream.APIError{Code: 500, ErrorCode: jsErrCodeNoSuitablePeers, Description: "no suitable peers for placement"}
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("after two no-responders: err %v after %d calls, want nil after 3", err, calls)
	}

	calls = 0
	other := errors.New("stream config mismatch")
	if err := retryTransient(context.Background(), 0, func(context.Context) error { calls++; return other }); !errors.Is(err, other) || calls != 1 {
		t.Fatalf("other error: %v after %d calls, want it after 1", err, calls)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = retryTransient(ctx, 0, func(context.Context) error { return nats.ErrNoResponders })
	if !errors.Is(err, nats.ErrNoResponders) || time.Since(start) > 2*time.Second {
		t.Fatalf("ended context: %v after %v, want no responders within about 200ms", err, time.Since(start))
	}
}

// TestRetryTransientTriesAgainWhenATryGetsNoAnswer: a JetStream API
// request that nobody answers (sent while its group is between leaders)
// waits only its own per-try bound, not the caller's whole context, and is
// sent again. The caller's own deadline is not retried.
func TestRetryTransientTriesAgainWhenATryGetsNoAnswer(t *testing.T) {
	calls := 0
	start := time.Now()
	err := retryTransient(context.Background(), 100*time.Millisecond, func(ctx context.Context) error {
		calls++
		if calls == 1 {
			<-ctx.Done() // the reply is lost
			return ctx.Err()
		}
		return nil
	})
	if err != nil || calls != 2 || time.Since(start) > 2*time.Second {
		t.Fatalf("after one unanswered try: %v after %d calls and %v, want nil after 2 calls within about 150ms", err, calls, time.Since(start))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	calls = 0
	err = retryTransient(ctx, time.Minute, func(ctx context.Context) error {
		calls++
		<-ctx.Done()
		return ctx.Err()
	})
	if !errors.Is(err, context.DeadlineExceeded) || calls != 1 {
		t.Fatalf("caller's deadline: %v after %d calls, want DeadlineExceeded after 1", err, calls)
	}
}
