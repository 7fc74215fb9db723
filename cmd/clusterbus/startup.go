package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// startGate is the node's HTTP front while it starts: until Open, health
// and readiness answer 503 with the phase the node is in ("waiting for
// broker", "declaring queues"), /livez answers 200 and every other path
// 503, so a balancer never sees 200 before every route is mounted. Open
// hands every request to the node's full mux from then on.
type startGate struct {
	mu    sync.Mutex
	phase string
	ready atomic.Pointer[http.Handler]
}

func newStartGate() *startGate { return &startGate{phase: "starting"} }

// Phase sets what the node is waiting for.
func (g *startGate) Phase(p string) {
	g.mu.Lock()
	g.phase = p
	g.mu.Unlock()
}

func (g *startGate) reason() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return "starting: " + g.phase
}

// Open routes every request to h: the node is up and its routes mounted.
func (g *startGate) Open(h http.Handler) { g.ready.Store(&h) }

func (g *startGate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h := g.ready.Load(); h != nil {
		(*h).ServeHTTP(w, r)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	if r.URL.Path == "/livez" {
		io.WriteString(w, "ok\n")
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Retry-After", "1")
	w.WriteHeader(http.StatusServiceUnavailable)
	if r.Method != http.MethodHead {
		io.WriteString(w, g.reason()+"\n")
	}
}

// backoff is a jittered exponential backoff: 100ms doubling to 5s, each
// wait drawn from [d/2, d) so that nodes started together do not retry in
// step (a broker that has just come up is not hit by all of them at once).
type backoff struct{ d time.Duration }

func (b *backoff) next() time.Duration {
	switch {
	case b.d == 0:
		b.d = 100 * time.Millisecond
	case b.d < 5*time.Second:
		b.d = min(2*b.d, 5*time.Second)
	}
	return b.d/2 + rand.N(b.d/2)
}

// retryUntilReady runs fn until it succeeds or ctx ends (a signal, or
// --start-timeout), waiting a jittered backoff between attempts and
// logging each failure with what the node waits for. An error matching
// adapters.ErrInvalidArgument ends it at once with exit code 2. It returns fn's last
// error wrapped with phase if ctx ends first.
func retryUntilReady(ctx context.Context, log *slog.Logger, gate *startGate, phase string, fn func(context.Context) error) error {
	gate.Phase(phase)
	var b backoff
	start := time.Now()
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil {
			if attempt > 1 {
				log.Info("ready after retries", "phase", phase, "attempts", attempt, "took", time.Since(start).Round(time.Millisecond))
			}
			return nil
		}
		if errors.Is(err, adapters.ErrInvalidArgument) {
			// A bad setting (a malformed broker URL, a lease the broker
			// refuses) does not fix itself: a configuration error.
			return &exitError{code: 2, err: fmt.Errorf("%s: %w", phase, err)}
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: gave up after %d attempts in %s: %w", phase, attempt, time.Since(start).Round(time.Millisecond), err)
		}
		wait := b.next()
		lvl := slog.LevelInfo
		if attempt >= 5 {
			lvl = slog.LevelWarn
		}
		log.Log(ctx, lvl, phase+"; retrying", "attempt", attempt, "retry_in", wait.Round(time.Millisecond), "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%s: gave up after %d attempts in %s: %w", phase, attempt, time.Since(start).Round(time.Millisecond), err)
		case <-t.C:
		}
	}
}
