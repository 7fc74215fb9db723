package sqstest_test

import (
	"os"
	"testing"

	"github.com/clusterbus/clusterbus/adapters/adaptertest"
	_ "github.com/clusterbus/clusterbus/adapters/sqs"
	"github.com/clusterbus/clusterbus/adapters/sqs/sqstest"
)

// TestStartServesSQSThroughURLAndEnv checks that the adapter, given only
// URL and Env, can enqueue to and receive from the started fauxqs.
func TestStartServesSQSThroughURLAndEnv(t *testing.T) {
	s, err := sqstest.Start(0)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("fauxqs unavailable (CI=true): %v", err)
		}
		t.Skipf("fauxqs unavailable: %v", err)
	}
	t.Cleanup(s.Stop)
	sqstest.Setenv(t)
	adaptertest.RoundTrip(t, s.URL(), nil)
}
