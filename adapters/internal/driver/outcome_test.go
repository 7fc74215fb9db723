package driver_test

import (
	"context"
	"errors"
	"testing"

	"github.com/clusterbus/clusterbus/adapters/internal/driver"
)

// An outcome not known is not kept (resolve runs again); a known one is
// kept, and resolve never runs after it.
func TestOutcomeKeepsOnlyAKnownResult(t *testing.T) {
	o := driver.NewOutcome()
	calls := 0
	boom := errors.New("boom")
	unknown := func(context.Context) (bool, error) { calls++; return false, context.Canceled }
	known := func(context.Context) (bool, error) { calls++; return true, boom }
	if err := o.Wait(context.Background(), unknown); !errors.Is(err, context.Canceled) {
		t.Fatalf("first Wait: %v", err)
	}
	if err := o.Wait(context.Background(), known); !errors.Is(err, boom) {
		t.Fatalf("second Wait: %v, want the resolved outcome", err)
	}
	if err := o.Wait(context.Background(), unknown); !errors.Is(err, boom) || calls != 2 {
		t.Fatalf("third Wait: %v after %d resolves, want the kept outcome after 2", err, calls)
	}
	// While one Wait resolves, another with an ended ctx returns at once.
	hold, release := make(chan struct{}), make(chan struct{})
	o2 := driver.NewOutcome()
	go o2.Wait(context.Background(), func(context.Context) (bool, error) { close(hold); <-release; return true, nil })
	<-hold
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := o2.Wait(ctx, known); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait during another's resolve with an ended ctx: %v", err)
	}
	close(release)
}
