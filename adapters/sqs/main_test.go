package sqs_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/sqs"
	"github.com/clusterbus/clusterbus/adapters/sqs/sqstest"
	"github.com/clusterbus/clusterbus/internal/tcpproxy"
)

// The tests run against fauxqs (an SQS/SNS emulator on Node, pinned in
// testdata/fauxqs) started here on a random loopback port, or against real
// AWS when CLUSTERBUS_TEST_SQS_LIVE=1 (with the standard AWS environment:
// AWS_REGION and credentials).

var (
	server     *sqstest.Server // nil when live or when fauxqs could not start
	skipReason string          // why tests that need a broker skip
	live       = os.Getenv("CLUSTERBUS_TEST_SQS_LIVE") == "1"
)

// testPrefix is the queue and topic name prefix of live runs on AWS.
var testPrefix = func() string {
	if live {
		return "cbtest-"
	}
	return ""
}()

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		// A fuzzing worker runs only FuzzCodec, which needs no broker.
		os.Exit(m.Run())
	}
	if live {
		if os.Getenv("AWS_REGION") == "" && os.Getenv("AWS_DEFAULT_REGION") == "" {
			skipReason = "CLUSTERBUS_TEST_SQS_LIVE=1 but AWS_REGION is not set"
		}
	} else {
		// fauxqs accepts any credentials; the adapter still needs some
		// from the standard chain.
		for _, kv := range sqstest.Env() {
			k, v, _ := strings.Cut(kv, "=")
			os.Setenv(k, v)
		}
		var err error
		server, err = sqstest.Start(0)
		if err != nil {
			skipReason = "fauxqs (SQS/SNS emulator) not available: " + err.Error()
			server = nil
		}
	}
	if skipReason != "" && os.Getenv("CI") == "true" {
		fmt.Fprintln(os.Stderr, "adapters/sqs:", skipReason, "(CI=true: failing instead of skipping)")
		os.Exit(1)
	}
	code := m.Run()
	if server != nil {
		server.Stop()
	}
	os.Exit(code)
}

// needBroker skips the test when no broker is available (fails under CI,
// which TestMain already made exit).
func needBroker(t testing.TB) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}

// testLogger returns a logger that writes to t.Log until the test ends.
func testLogger(t testing.TB) *slog.Logger {
	w := &tWriter{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

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

// config is the adapter config for the broker under test.
func config(t testing.TB, endpoint string) sqs.Config {
	cfg := sqs.Config{Region: "us-east-1", Endpoint: endpoint, Logger: testLogger(t)}
	if live {
		cfg.Region = os.Getenv("AWS_REGION")
		if cfg.Region == "" {
			cfg.Region = os.Getenv("AWS_DEFAULT_REGION")
		}
		cfg.Endpoint = ""
		cfg.Prefix = testPrefix
	}
	return cfg
}

// open opens a broker client on the test server (or AWS) and closes it at
// the end of the test.
func open(t testing.TB) *sqs.Broker {
	t.Helper()
	needBroker(t)
	endpoint := ""
	if server != nil {
		endpoint = server.Endpoint()
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := sqs.Open(ctx, config(t, endpoint))
	if err != nil {
		t.Fatalf("sqs.Open: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

var nameSeq atomic.Int64

// uniqueName returns a queue or topic name no other test uses.
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, time.Now().UnixNano()%1e9, nameSeq.Add(1))
}

// declare declares a queue with a unique name and deletes it at the end.
func declare(t testing.TB, b *sqs.Broker, cfg adapters.QueueConfig) adapters.QueueConfig {
	t.Helper()
	if cfg.Name == "" {
		cfg.Name = uniqueName("q")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := b.DeclareQueue(ctx, cfg); err != nil {
		t.Fatalf("DeclareQueue(%+v): %v", cfg, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := b.DeleteQueue(ctx, cfg.Name); err != nil && !errors.Is(err, adapters.ErrNotFound) && !errors.Is(err, adapters.ErrClosed) {
			t.Logf("cleanup: DeleteQueue(%q): %v", cfg.Name, err)
		}
	})
	return cfg
}

// openVia opens a broker on endpoint (an http:// URL), closed at the end.
func openVia(b testing.TB, endpoint string) *sqs.Broker {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	br, err := sqs.Open(ctx, config(b, endpoint))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { br.Close() })
	return br
}

// delayProxy puts a proxy holding every chunk for delay (each way) in
// front of endpoint's host and returns its http:// URL.
func delayProxy(b testing.TB, endpoint string, delay time.Duration) string {
	u, err := url.Parse(endpoint)
	if err != nil {
		b.Fatal(err)
	}
	p, err := tcpproxy.Start(u.Host, delay)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return "http://" + p.Addr()
}
