package azservicebus_test

import (
	"context"
	"log/slog"
	"os"
	"testing"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/adaptertest"
	"github.com/clusterbus/clusterbus/adapters/azservicebus"
)

// TestConformance runs the contract suite against the Node test server of
// testdata/sbserver (not Service Bus: see the package doc for what it cannot
// show). Restart is a clean restart of that server, which keeps its state in
// a file across it.
func TestConformance(t *testing.T) {
	s := needServer(t)
	cfg := s.config(t)
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	adaptertest.Run(t, adaptertest.Harness{
		Open: func(ctx context.Context) (adapters.Broker, error) {
			return azservicebus.Open(ctx, cfg)
		},
		Restart: s.restart,
	})
}

// TestConformanceLive runs the same suite against a real namespace when
// CLUSTERBUS_TEST_SERVICEBUS_CONNECTION_STRING is set (it needs Manage
// rights: the suite creates and deletes queues and topics).
func TestConformanceLive(t *testing.T) {
	cs := os.Getenv("CLUSTERBUS_TEST_SERVICEBUS_CONNECTION_STRING")
	if cs == "" {
		t.Skip("CLUSTERBUS_TEST_SERVICEBUS_CONNECTION_STRING is not set: no live Azure Service Bus run")
	}
	cfg := azservicebus.Config{ConnectionString: cs,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	adaptertest.Run(t, adaptertest.Harness{
		Open: func(ctx context.Context) (adapters.Broker, error) {
			return azservicebus.Open(ctx, cfg)
		},
	})
}
