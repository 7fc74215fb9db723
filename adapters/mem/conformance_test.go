package mem_test

import (
	"context"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/adaptertest"
	"github.com/clusterbus/clusterbus/adapters/mem"
)

// TestConformance runs the shared suite on one in-memory server with the
// real clock; every Open is a new client of that server.
func TestConformance(t *testing.T) {
	srv := mem.NewServer()
	t.Cleanup(srv.Close)
	adaptertest.Run(t, adaptertest.Harness{
		Open: func(context.Context) (adapters.Broker, error) { return srv.Client(), nil },
		Restart: func(context.Context) error {
			srv.Restart()
			return nil
		},
		Lease: 500 * time.Millisecond,
	})
}

// TestConformanceWeakBroker runs the suite on a server configured to lack
// every optional feature, with a header limit of 4 and a 64 KiB size limit:
// the cases for those features must skip, and the server must refuse them
// with ErrUnsupported.
func TestConformanceWeakBroker(t *testing.T) {
	srv := mem.NewServer(mem.WithCapabilities(func(c *adapters.Capabilities) {
		c.Name = "mem-weak"
		c.LeaseExtension = adapters.Unsupported
		c.DelayedNack = adapters.Unsupported
		c.DeadLetter = adapters.Unsupported
		c.Dedupe = adapters.Unsupported
		c.Ordering = adapters.Unsupported
		c.Restart = adapters.Unsupported
		c.MaxHeaders = 4
		c.MaxMessageSize = 64 << 10
	}))
	t.Cleanup(srv.Close)
	adaptertest.Run(t, adaptertest.Harness{
		Open:  func(context.Context) (adapters.Broker, error) { return srv.Client(), nil },
		Lease: 500 * time.Millisecond,
	})
}
