package adaptertest

import (
	"context"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// Harness connects the suite to the broker under test.
type Harness struct {
	// Open returns a new, independent client of the broker under test. The
	// suite calls it several times per case to stand for several nodes and
	// closes every client it opens.
	Open func(ctx context.Context) (adapters.Broker, error)
	// Restart, if set, stops the broker and starts it again on the same
	// address, keeping durable data. Nil skips the restart case.
	Restart func(ctx context.Context) error
	// Lease is the queue lease the suite declares its queues with. Zero
	// means one second, raised to Capabilities.MinLease.
	Lease time.Duration
}
