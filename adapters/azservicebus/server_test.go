package azservicebus_test

import (
	"context"
	"flag"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/azservicebus"
	"github.com/clusterbus/clusterbus/adapters/azservicebus/sbtest"
)

// testServer is the Node Service Bus test server of testdata/sbserver,
// started once per test binary by TestMain through sbtest.
type testServer struct{ *sbtest.Server }

var (
	srv    *testServer
	srvErr error // why srv is nil
)

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		// A fuzzing worker runs only FuzzCodec, which needs no server.
		os.Exit(m.Run())
	}
	s, err := sbtest.Start(sbtest.Options{})
	if err != nil {
		srvErr = err
	} else {
		srv = &testServer{s}
	}
	code := m.Run()
	if srv != nil {
		srv.Stop()
	}
	os.Exit(code)
}

func (s *testServer) connectionString() string { return s.ConnectionString() }

// restart stops the server cleanly (it writes its state file) and starts it
// again on the same ports with the same state.
func (s *testServer) restart(ctx context.Context) error { return s.Restart(ctx) }

// crash kills the server (SIGKILL) and starts it again on the same ports with
// an empty state, as if the broker had lost everything.
func (s *testServer) crash(ctx context.Context) error { return s.Crash(ctx) }

func (s *testServer) config(t testing.TB) azservicebus.Config {
	return azservicebus.Config{
		ConnectionString: s.ConnectionString(),
		AdminEndpoint:    s.AdminEndpoint(),
		Logger:           testLogger(t),
	}
}

// needServer returns the test server, or skips the test saying why (fails
// it under CI=true).
func needServer(t testing.TB) *testServer {
	t.Helper()
	if srv == nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("Service Bus test server unavailable (CI=true): %v", srvErr)
		}
		t.Skipf("Service Bus test server unavailable: %v", srvErr)
	}
	return srv
}

func openTest(t testing.TB) *azservicebus.Broker {
	t.Helper()
	s := needServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := azservicebus.Open(ctx, s.config(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

var _ adapters.Broker = (*azservicebus.Broker)(nil)
