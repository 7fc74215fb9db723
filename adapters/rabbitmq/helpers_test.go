package rabbitmq

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// testURL is the broker the tests use: CLUSTERBUS_TEST_AMQP_URL or the
// local default.
func testURL() string {
	if u := os.Getenv("CLUSTERBUS_TEST_AMQP_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

// requireBroker skips the test when no RabbitMQ answers, unless CI=true,
// where it fails.
func requireBroker(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := Open(ctx, testURL(), Options{Logger: testLogger(t)})
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("RabbitMQ at %s is required under CI=true (start it with .ci/rabbitmq.sh): %v", testURL(), err)
		}
		t.Skipf("no RabbitMQ at %s (set CLUSTERBUS_TEST_AMQP_URL or run .ci/rabbitmq.sh): %v", testURL(), err)
	}
	b.Close()
}

// tWriter sends log lines to t.Log until the test ends.
type tWriter struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}
