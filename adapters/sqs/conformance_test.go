package sqs_test

import (
	"context"
	"testing"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/adaptertest"
	"github.com/clusterbus/clusterbus/adapters/sqs"
)

// TestConformance runs the broker contract suite against fauxqs (or AWS
// with CLUSTERBUS_TEST_SQS_LIVE=1). Restart is nil: fauxqs keeps no data
// across restarts, so the suite's restart case (which wants items enqueued
// before the restart to survive) cannot pass against it, and real AWS
// cannot be restarted; TestFauxqsRestart checks what a restart of the
// emulator can show.
func TestConformance(t *testing.T) {
	needBroker(t)
	endpoint := ""
	if server != nil {
		endpoint = server.Endpoint()
	}
	cfg := config(t, endpoint)
	t.Log("Harness.Restart is nil: fauxqs keeps no data across restarts (and AWS cannot be restarted); TestFauxqsRestart covers recovery")
	adaptertest.Run(t, adaptertest.Harness{
		Open: func(ctx context.Context) (adapters.Broker, error) {
			return sqs.Open(ctx, cfg)
		},
	})
}
