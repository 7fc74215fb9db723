package flows

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters/mem"
)

// TestGapInEventsCatchesUpAgain: a node whose events subscription had a
// gap (its link was down while an execution ended) asks the others again,
// as at start, so its status of that execution does not stay "running".
func TestGapInEventsCatchesUpAgain(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := mem.NewServer()
	b1, b2 := srv.Client(), srv.Client()
	t.Cleanup(func() { b1.Close(); b2.Close() })
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	release := make(chan struct{})
	cfg := Config{Queue: "gap", Lease: 2 * time.Second, Concurrency: 1}
	start := func(id string, b *mem.Broker, works bool) *Engine {
		e, err := New(b, cfg, Options{NodeID: id, Logger: log, Gate: func() bool { return works }})
		if err != nil {
			t.Fatal(err)
		}
		err = e.Register(&Flow{Name: "held", Version: 1, Steps: []Step{{Name: "wait", Run: func(ctx context.Context, sc *StepContext) (Outcome, error) {
			select {
			case <-release:
			case <-ctx.Done():
				return Outcome{}, ctx.Err()
			}
			return Outcome{}, nil
		}}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = e.Stop(context.Background()) })
		return e
	}
	n1 := start("n1", b1, true)
	n2 := start("n2", b2, false) // takes no work: learns only from events
	id, err := n1.Submit(ctx, "held", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitState := func(e *Engine, state string) {
		t.Helper()
		for {
			if st, err := e.Status(ctx, id); err == nil && st.State == state && st.Step != "" {
				return
			}
			if ctx.Err() != nil {
				st, err := e.Status(ctx, id)
				t.Fatalf("%s: status of %s = %+v, %v; want %s", e.opts.NodeID, id, st, err, state)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitState(n2, StateRunning)
	b2.Disconnect()
	close(release)
	waitState(n1, StateCompleted)
	time.Sleep(100 * time.Millisecond)
	if st, _ := n2.Status(ctx, id); st.State != StateRunning {
		t.Fatalf("n2 heard the completion while disconnected: %+v", st)
	}
	b2.Reconnect()
	waitState(n2, StateCompleted)
}
