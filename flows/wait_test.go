package flows_test

import (
	"context"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/flows"
	"github.com/jonboulle/clockwork"
)

func TestWaitHoldsNoLeaseAndResumesAfterTheDelay(t *testing.T) {
	fc := clockwork.NewFakeClock()
	srv := mem.NewServer(mem.WithClock(fc))
	t.Cleanup(srv.Close)
	b := srv.Client()
	cfg := testConfig(t)
	e, err := flows.New(b, cfg, flows.Options{NodeID: "n1", Clock: fc, Logger: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defs, err := flows.Parse("wait.yaml", []byte(`flow: sleepy
steps:
  - name: before
    set: {a: "1"}
  - name: nap
    wait: 1h
  - name: after
    set: {b: "vars.a + 1"}
`))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Register(defs.Flows[0]); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Stop(context.Background()) })
	id, err := e.Submit(context.Background(), "sleepy", nil)
	if err != nil {
		t.Fatal(err)
	}
	// The continuation after the wait is received once, found early and
	// handed back with the remaining delay: then it sits delayed, unleased.
	deadline := time.Now().Add(15 * time.Second)
	for {
		st, err := srv.Stats(cfg.Queue)
		if err != nil {
			t.Fatal(err)
		}
		if st.Delayed == 1 && st.Leased == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("continuation never parked: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s, _ := e.Status(context.Background(), id); s.State != flows.StateRunning || s.Step != "after" {
		t.Fatalf("status during the wait: %+v", s)
	}
	fc.Advance(59 * time.Minute)
	if st, _ := srv.Stats(cfg.Queue); st.Delayed != 1 {
		t.Fatalf("woke before the hour: %+v", st)
	}
	fc.Advance(time.Minute)
	s := waitState(t, e, id, flows.StateCompleted)
	if s.Output["b"] != int64(2) && s.Output["b"] != float64(2) {
		t.Fatalf("output %v", s.Output)
	}
}
