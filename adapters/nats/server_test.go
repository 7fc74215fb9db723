package nats_test

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
)

// testServer is an embedded NATS server in a temporary directory that a
// test can restart on the same port with the same store.
type testServer struct {
	dir  string
	sync bool

	mu     sync.Mutex
	listen string
	srv    *natsserver.Server
}

// startServer starts an embedded server on a random loopback port and stops
// it when the test ends.
func startServer(t testing.TB, syncWrites bool) *testServer {
	t.Helper()
	s := &testServer{dir: t.TempDir(), sync: syncWrites, listen: "127.0.0.1:0"}
	if err := s.start(); err != nil {
		t.Fatalf("start embedded NATS: %v", err)
	}
	t.Cleanup(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.srv != nil {
			s.srv.Shutdown()
		}
	})
	return s
}

func (s *testServer) start() error {
	srv, err := natsserver.Start(natsserver.Config{Listen: s.listen, DataDir: s.dir, Sync: s.sync})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.srv = srv
	s.listen = srv.Addr() // keep the port across restarts
	s.mu.Unlock()
	return nil
}

// URL is the client URL.
func (s *testServer) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return "nats://" + s.listen
}

// Restart shuts the server down and starts it again on the same port and
// store directory.
func (s *testServer) Restart(ctx context.Context) error {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Shutdown()
	}
	var err error
	for {
		if err = s.start(); err == nil || ctx.Err() != nil {
			return err
		}
	}
}

// testLogger writes adapter logs to t.Log until the test ends.
func testLogger(t testing.TB) *slog.Logger {
	w := &tlogWriter{t: t}
	t.Cleanup(func() { w.done.Store(true) })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tlogWriter struct {
	t    testing.TB
	done atomic.Bool
}

func (w *tlogWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(string(p))
	}
	return len(p), nil
}
