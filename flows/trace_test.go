package flows_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/adapters/traced"
	"github.com/clusterbus/clusterbus/flows"
	"github.com/clusterbus/clusterbus/workqueue"
)

// printTree renders spans as a tree: name [node] kind, children indented.
func printTree(spans tracetest.SpanStubs) string {
	children := map[trace.SpanID][]tracetest.SpanStub{}
	ids := map[trace.SpanID]bool{}
	for _, s := range spans {
		ids[s.SpanContext.SpanID()] = true
	}
	var roots []tracetest.SpanStub
	for _, s := range spans {
		if p := s.Parent.SpanID(); s.Parent.IsValid() && ids[p] {
			children[p] = append(children[p], s)
		} else {
			roots = append(roots, s)
		}
	}
	var b strings.Builder
	var walk func(s tracetest.SpanStub, depth int)
	walk = func(s tracetest.SpanStub, depth int) {
		node := ""
		for _, a := range s.Attributes {
			if a.Key == "clusterbus.node" {
				node = " [" + a.Value.AsString() + "]"
			}
		}
		fmt.Fprintf(&b, "%s%s%s (%s)\n", strings.Repeat("  ", depth), s.Name, node, s.SpanKind)
		cs := children[s.SpanContext.SpanID()]
		sort.Slice(cs, func(i, j int) bool { return cs[i].StartTime.Before(cs[j].StartTime) })
		for _, c := range cs {
			walk(c, depth+1)
		}
	}
	for _, r := range roots {
		walk(r, 0)
	}
	return b.String()
}

// One trace runs from the caller's request through POST /api/flows, the
// submission and every step, on two nodes, into the service an http step
// calls (which gets the traceparent).
func TestOneTraceFromSubmitThroughStepsOnTwoNodes(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	srv := mem.NewServer()
	t.Cleanup(srv.Close)
	cfg := testConfig(t)
	cfg.ResultsQueue = ""

	var gotTraceparent atomic.Value
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotTraceparent.Store(r.Header.Get("traceparent"))
		w.Write([]byte(`{"ok": true}`))
	}))
	t.Cleanup(svc.Close)
	def, err := flows.Parse("trace.yaml", []byte("flow: order\nversion: 1\nsteps:\n  - name: reserve\n    wait: 1ms\n  - name: charge\n    http:\n      method: POST\n      url: "+svc.URL+"/charge\n"))
	if err != nil {
		t.Fatal(err)
	}
	// n1 takes work until its first step is done, then only n2 does.
	var n1Open atomic.Bool
	n1Open.Store(true)
	engines := map[string]*flows.Engine{}
	for _, node := range []string{"n1", "n2"} {
		gate := func() bool { return !n1Open.Load() }
		if node == "n1" {
			gate = n1Open.Load
		}
		e, err := flows.New(traced.New(srv.Client(), traced.Options{TracerProvider: tp}), cfg,
			flows.Options{NodeID: node, Logger: logger(t), Gate: gate, TracerProvider: tp})
		if err != nil {
			t.Fatal(err)
		}
		e.Register(&flows.Flow{Name: "hop", Version: 1, Steps: []flows.Step{
			{Name: "first", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
				n1Open.Store(false)
				return flows.Outcome{}, nil
			}},
			{Name: "second", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
				if sc.Node == "n1" {
					return flows.Outcome{}, workqueue.RetryAfter(500*time.Millisecond, errors.New("n1 stops taking work"))
				}
				return flows.Outcome{}, nil
			}},
			{Name: "third", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
				if sc.Node == "n1" {
					return flows.Outcome{}, workqueue.RetryAfter(500*time.Millisecond, errors.New("n1 stops taking work"))
				}
				return flows.Outcome{}, nil
			}},
		}})
		if err := e.Register(def.Flows[0]); err != nil {
			t.Fatal(err)
		}
		if err := e.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Stop(context.Background()) })
		engines[node] = e
	}

	// The caller's own trace, continued by POST /api/flows.
	caller, span := tp.Tracer("test").Start(context.Background(), "caller")
	api := httptest.NewServer(engines["n1"].Handler())
	t.Cleanup(api.Close)
	req, _ := http.NewRequestWithContext(caller, http.MethodPost, api.URL+"/api/flows", strings.NewReader(`{"flow": "hop"}`))
	traced.Propagator.Inject(caller, propagation.HeaderCarrier(req.Header))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var sub flows.SubmitResponse
	if err := json.NewDecoder(resp.Body).Decode(&sub); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST /api/flows: %s %v", resp.Status, err)
	}
	resp.Body.Close()
	span.End()
	s := waitState(t, engines["n2"], sub.ID, flows.StateCompleted)
	nodes := map[string]bool{}
	for _, r := range s.Steps {
		nodes[r.Node] = true
	}
	if !nodes["n1"] || !nodes["n2"] {
		t.Fatalf("steps ran on %v, want both nodes: %+v", nodes, s.Steps)
	}

	// The record says completed as soon as the last step's node wrote it,
	// a moment before that step's span ends.
	var spans tracetest.SpanStubs
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		spans = exp.GetSpans()
		n := 0
		for _, sp := range spans {
			for _, a := range sp.Attributes {
				if sp.Name == "flow step hop/third" && a.Key == "clusterbus.node" && a.Value.AsString() == "n2" {
					n++
				}
			}
		}
		if n > 0 || time.Now().After(deadline) {
			break
		}
	}
	traceID := span.SpanContext().TraceID()
	steps := map[string]bool{}
	for _, sp := range spans {
		if sp.SpanContext.TraceID() != traceID {
			t.Errorf("span %q is in trace %s, not the caller's %s", sp.Name, sp.SpanContext.TraceID(), traceID)
		}
		if strings.HasPrefix(sp.Name, "flow step ") {
			for _, a := range sp.Attributes {
				if a.Key == "clusterbus.node" {
					steps[sp.Name+"@"+a.Value.AsString()] = true
				}
			}
		}
	}
	for _, want := range []string{"flow step hop/first@n1", "flow step hop/second@n2", "flow step hop/third@n2"} {
		if !steps[want] {
			t.Errorf("no span %s; have %v", want, steps)
		}
	}
	t.Logf("trace %s:\n%s", traceID, printTree(spans))

	// An http step sends the step's traceparent to the service it calls.
	exp.Reset()
	ctx2, span2 := tp.Tracer("test").Start(context.Background(), "caller of order")
	id, err := engines["n2"].Submit(ctx2, "order", nil)
	span2.End()
	if err != nil {
		t.Fatal(err)
	}
	waitState(t, engines["n2"], id, flows.StateCompleted)
	got, _ := gotTraceparent.Load().(string)
	if !strings.HasPrefix(got, "00-"+span2.SpanContext().TraceID().String()+"-") {
		t.Errorf("the service got traceparent %q, want one of trace %s", got, span2.SpanContext().TraceID())
	}
	t.Logf("the http step sent traceparent %s", got)
}
