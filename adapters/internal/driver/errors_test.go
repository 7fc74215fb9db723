package driver_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/internal/driver"
)

func TestMapCtx(t *testing.T) {
	other := errors.New("refused")
	mapErr := func(op string, err error) error { return adapters.Wrap(adapters.ErrInvalidArgument, op, err) }
	live := context.Background()
	ended, cancel := context.WithCancel(context.Background())
	cancel()

	// The client's own timeout, the caller's ctx still live: unavailable.
	err := driver.MapCtx(live, "x: op", fmt.Errorf("request: %w", context.DeadlineExceeded), "no reply in time", mapErr)
	if !errors.Is(err, adapters.ErrUnavailable) || !adapters.IsRetryable(err) {
		t.Errorf("client timeout with a live ctx: %v, want a retryable ErrUnavailable", err)
	}
	// The caller's ctx ended: its error, unchanged by Wrap.
	if err := driver.MapCtx(ended, "x: op", context.Canceled, "", mapErr); !errors.Is(err, context.Canceled) || errors.Is(err, adapters.ErrUnavailable) {
		t.Errorf("caller's cancellation: %v", err)
	}
	// Anything else goes to mapErr.
	if err := driver.MapCtx(live, "x: op", other, "", mapErr); !errors.Is(err, adapters.ErrInvalidArgument) || !errors.Is(err, other) {
		t.Errorf("other error: %v", err)
	}
	if err := driver.MapCtx(live, "x: op", nil, "", mapErr); err != nil {
		t.Errorf("nil: %v", err)
	}
}
