package kafka_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/kafka"
)

// testQuery tunes the adapter for tests: short group timeouts so that
// rebalances (a consumer joining or leaving) settle in about a second, and
// four partitions per queue to keep the in-process server's load low.
const testQuery = "session_timeout=6s&heartbeat_interval=300ms&partitions=4"

// server is the Kafka the tests run against: an in-process kfake cluster
// on a random port (with a data directory, so that Restart keeps topics,
// records and committed offsets), or, with CLUSTERBUS_TEST_KAFKA_BROKERS
// set, a real Kafka (which the tests cannot restart).
type server struct {
	t       testing.TB
	brokers string // host:port[,host:port]
	port    int
	dir     string

	mu      sync.Mutex
	cluster *kfake.Cluster
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
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("pick a port: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &server{t: t, port: port, dir: t.TempDir(), brokers: fmt.Sprintf("127.0.0.1:%d", port)}
	if err := s.start(); err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.cluster != nil {
			s.cluster.Close()
		}
	})
	return s
}

func (s *server) start() error {
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.Ports(s.port),
		kfake.DataDir(s.dir),
		kfake.GroupMinSessionTimeout(time.Second),
	)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.cluster = c
	s.mu.Unlock()
	return nil
}

// URL is the broker URL of the server, with the test tuning.
func (s *server) URL() string { return "kafka://" + s.brokers + "?" + testQuery }

// Restart closes the kfake cluster (cutting every connection) and starts a
// new one on the same port from the same data directory.
func (s *server) Restart(ctx context.Context) error {
	s.mu.Lock()
	old := s.cluster
	s.cluster = nil
	s.mu.Unlock()
	if old == nil {
		return fmt.Errorf("no server to restart")
	}
	old.Close()
	var err error
	for ctx.Err() == nil {
		if err = s.start(); err == nil {
			return nil
		}
		if !strings.Contains(err.Error(), "address already in use") {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("restart on port %d: %w (last: %v)", s.port, ctx.Err(), err)
}

func (s *server) canRestart() bool { return s.dir != "" }

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
