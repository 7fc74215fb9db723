package sbtest_test

import (
	"os"
	"testing"

	"github.com/clusterbus/clusterbus/adapters/adaptertest"
	_ "github.com/clusterbus/clusterbus/adapters/azservicebus"
	"github.com/clusterbus/clusterbus/adapters/azservicebus/sbtest"
)

// TestStartServesServiceBusAndRestartKeepsItems checks that the adapter can
// use the server through its URL and that a clean Restart keeps an item.
func TestStartServesServiceBusAndRestartKeepsItems(t *testing.T) {
	s, err := sbtest.Start(sbtest.Options{})
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("Service Bus test server unavailable (CI=true): %v", err)
		}
		t.Skipf("Service Bus test server unavailable: %v", err)
	}
	t.Cleanup(s.Stop)
	adaptertest.RoundTrip(t, s.URL(), s.Restart)
}
