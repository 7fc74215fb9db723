package kafka_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/kafka"
	"github.com/clusterbus/clusterbus/adapters/kafka/kafkatest"
)

// testQuery tunes the adapter for tests: short group timeouts so that
// rebalances (a consumer joining or leaving) settle in about a second, and
// four partitions per queue to keep the in-process server's load low.
const testQuery = kafkatest.TestQuery

// server is the Kafka the tests run against: an in-process kfake cluster
// (package kafkatest) on a random port with a data directory, so that
// Restart keeps topics, records and committed offsets, or, with
// CLUSTERBUS_TEST_KAFKA_BROKERS set, a real Kafka (which the tests cannot
// restart).
type server struct {
	t       testing.TB
	brokers string // host:port[,host:port]
	fake    *kafkatest.Server
}

func startServer(t testing.TB) *server {
	t.Helper()
	if env := os.Getenv("CLUSTERBUS_TEST_KAFKA_BROKERS"); env != "" {
		s := &server{t: t, brokers: env}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		b, err := kafka.Open(ctx, mustConfig(t, s.URL()))
		if err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("CLUSTERBUS_TEST_KAFKA_BROKERS=%s: %v", env, err)
			}
			t.Skipf("CLUSTERBUS_TEST_KAFKA_BROKERS=%s does not answer: %v", env, err)
		}
		b.Close()
		return s
	}
	fake, err := kafkatest.Start(kafkatest.Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(fake.Stop)
	return &server{t: t, brokers: fake.Addr(), fake: fake}
}

// URL is the broker URL of the server, with the test tuning.
func (s *server) URL() string { return "kafka://" + s.brokers + "?" + testQuery }

// Restart closes the kfake cluster (cutting every connection) and starts a
// new one on the same port from the same data directory.
func (s *server) Restart(ctx context.Context) error {
	if s.fake == nil {
		return fmt.Errorf("a real Kafka cannot be restarted by the tests")
	}
	return s.fake.Restart(ctx)
}

func (s *server) canRestart() bool { return s.fake != nil }

func mustConfig(t testing.TB, url string) kafka.Config {
	t.Helper()
	cfg, err := kafka.ParseURL(url)
	if err != nil {
		t.Fatalf("ParseURL(%q): %v", url, err)
	}
	return cfg
}

// open returns a new adapter client with logs going to t.
func (s *server) open(ctx context.Context, t testing.TB) (adapters.Broker, error) {
	cfg := mustConfig(t, s.URL())
	cfg.Logger = testLogger(t)
	return kafka.Open(ctx, cfg)
}
