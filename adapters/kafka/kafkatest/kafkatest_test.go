package kafkatest_test

import (
	"context"
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

// With three brokers, an item enqueued before broker 0 (the first
// bootstrap host) is removed and the partition leaders move is received
// through a client opened after it.
func TestThreeBrokersSurviveLosingOne(t *testing.T) {
	s, err := kafkatest.Start(kafkatest.Options{Brokers: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	adaptertest.RoundTrip(t, s.URL(), func(context.Context) error {
		if err := s.RemoveBroker(0); err != nil {
			return err
		}
		s.ShuffleLeaders()
		return nil
	})
}
