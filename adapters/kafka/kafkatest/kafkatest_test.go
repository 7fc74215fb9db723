package kafkatest_test

import (
	"testing"

	"github.com/clusterbus/clusterbus/adapters/adaptertest"
	_ "github.com/clusterbus/clusterbus/adapters/kafka"
	"github.com/clusterbus/clusterbus/adapters/kafka/kafkatest"
)

// TestStartServesKafkaAndRestartKeepsItems checks that the adapter can use
// the server through its URL and that an item enqueued before a Restart is
// still there after it.
func TestStartServesKafkaAndRestartKeepsItems(t *testing.T) {
	s, err := kafkatest.Start(kafkatest.Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	adaptertest.RoundTrip(t, s.URL(), s.Restart)
}
