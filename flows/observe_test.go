package flows_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/flows"
)

// metricValue finds one series in reg's output; ok is false if absent.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue(), true
			case m.Gauge != nil:
				return m.GetGauge().GetValue(), true
			case m.Histogram != nil:
				return float64(m.GetHistogram().GetSampleCount()), true
			}
			return 0, true
		}
	}
	return 0, false
}

// A registered flow's series exist at zero before anything runs; a
// completed and a dead-lettered execution are counted and timed; the index
// keeps each step attempt with its node and error; the dead-lettered
// execution is listed, replayed once its cause is fixed, and completes.
func TestFlowMetricsStepHistoryListAndReplay(t *testing.T) {
	b := mem.New()
	t.Cleanup(func() { b.Close() })
	cfg := testConfig(t)
	reg := prometheus.NewRegistry()
	var broken atomic.Bool
	broken.Store(true)
	e, err := flows.New(b, cfg, flows.Options{NodeID: "n1", Logger: logger(t), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	e.Register(&flows.Flow{Name: "order", Version: 1, Steps: []flows.Step{
		{Name: "reserve", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) { return flows.Outcome{}, nil }},
		{Name: "charge", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
			if sc.Input["card"] == "bad" && broken.Load() {
				return flows.Outcome{}, errors.New("payment service: 503")
			}
			return flows.Outcome{}, nil
		}},
	}})
	for _, c := range []struct {
		name   string
		labels map[string]string
	}{
		{"clusterbus_flow_executions_total", map[string]string{"flow": "order", "outcome": "completed"}},
		{"clusterbus_flow_executions_total", map[string]string{"flow": "order", "outcome": "dead_lettered"}},
		{"clusterbus_flow_executions_total", map[string]string{"flow": "order", "outcome": "failed"}},
		{"clusterbus_flow_step_duration_seconds", map[string]string{"flow": "order", "step": "charge"}},
		{"clusterbus_flow_executions_running", map[string]string{"flow": "order"}},
	} {
		if v, ok := metricValue(t, reg, c.name, c.labels); !ok || v != 0 {
			t.Errorf("%s%v before any execution: %v, present %v; want 0", c.name, c.labels, v, ok)
		}
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Stop(context.Background()) })

	good, _ := e.Submit(context.Background(), "order", nil)
	bad, _ := e.Submit(context.Background(), "order", map[string]any{"card": "bad"})
	waitState(t, e, good, flows.StateCompleted)
	s := waitState(t, e, bad, flows.StateDeadLettered)
	if v, _ := metricValue(t, reg, "clusterbus_flow_executions_total", map[string]string{"flow": "order", "outcome": "completed"}); v != 1 {
		t.Errorf("completed = %v", v)
	}
	if v, _ := metricValue(t, reg, "clusterbus_flow_executions_total", map[string]string{"flow": "order", "outcome": "dead_lettered"}); v != 1 {
		t.Errorf("dead_lettered = %v", v)
	}
	if v, _ := metricValue(t, reg, "clusterbus_flow_step_duration_seconds", map[string]string{"flow": "order", "step": "charge"}); v != 1+3 {
		t.Errorf("charge observations = %v, want 4 (one good, three failed attempts)", v)
	}
	// reserve done, charge tried 3 times.
	if len(s.Steps) != 4 || s.Steps[0].Step != "reserve" || s.Steps[3].Step != "charge" || s.Steps[3].Attempt != 3 ||
		s.Steps[3].Node != "n1" || !strings.Contains(s.Steps[3].Error, "503") || s.Steps[3].Outcome != flows.StepDeadLettered {
		t.Fatalf("steps of the dead-lettered execution: %+v", s.Steps)
	}
	if l := e.List(flows.ListOptions{State: flows.StateDeadLettered, Limit: 10}); len(l) != 1 || l[0].Execution != bad {
		t.Fatalf("List(dead_lettered) = %+v", l)
	}

	broken.Store(false)
	srv := httptest.NewServer(e.Handler())
	t.Cleanup(srv.Close)
	resp, err := http.Post(srv.URL+"/api/executions/"+bad+"/replay", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("replay: %s", resp.Status)
	}
	waitState(t, e, bad, flows.StateCompleted)
	if v, _ := metricValue(t, reg, "clusterbus_flow_executions_total", map[string]string{"flow": "order", "outcome": "completed"}); v != 2 {
		t.Errorf("completed after the replay = %v", v)
	}
	resp, err = http.Post(srv.URL+"/api/executions/"+bad+"/replay", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("second replay: %s, want 404 (nothing dead-lettered)", resp.Status)
	}
}
