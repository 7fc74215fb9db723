package traced_test

import (
	"context"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/adaptertest"
	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/adapters/traced"
)

// TestConformance: the decorator keeps the Broker contract (on mem); the
// suite's calls carry no span, so its messages go unchanged.
func TestConformance(t *testing.T) {
	srv := mem.NewServer()
	t.Cleanup(srv.Close)
	adaptertest.Run(t, adaptertest.Harness{
		Open: func(context.Context) (adapters.Broker, error) {
			return traced.New(srv.Client(), traced.Options{}), nil
		},
		Restart: func(context.Context) error {
			srv.Restart()
			return nil
		},
		Lease: 500 * time.Millisecond,
	})
}

// An enqueue inside a span carries its traceparent; the consumer's receive
// span and Context continue the same trace; without a span nothing is
// added.
func TestTraceContextTravelsWithTheItem(t *testing.T) {
	ctx := context.Background()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	b := traced.New(mem.New(), traced.Options{TracerProvider: tp})
	t.Cleanup(func() { b.Close() })
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: "q"}); err != nil {
		t.Fatal(err)
	}
	if err := b.Enqueue(ctx, "q", adapters.Message{ID: "plain", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	sctx, span := tp.Tracer("test").Start(ctx, "submit")
	if err := b.Enqueue(sctx, "q", adapters.Message{ID: "traced", Body: []byte("x"), Headers: map[string]string{"a": "b"}}); err != nil {
		t.Fatal(err)
	}
	span.End()
	c, err := b.Consume(ctx, "q", adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"plain", "traced"} {
		d, err := c.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m := d.Message()
		tp := m.Headers["traceparent"]
		got := trace.SpanContextFromContext(traced.Context(ctx, m))
		switch want {
		case "plain":
			if tp != "" || got.IsValid() {
				t.Errorf("an item sent without a span got traceparent %q", tp)
			}
		case "traced":
			if !strings.HasPrefix(tp, "00-"+span.SpanContext().TraceID().String()) || m.Headers["a"] != "b" {
				t.Errorf("headers %v: want the submit span's trace and the caller's header", m.Headers)
			}
			if got.TraceID() != span.SpanContext().TraceID() {
				t.Errorf("Context: trace %s, want %s", got.TraceID(), span.SpanContext().TraceID())
			}
		}
		_ = d.Ack(ctx)
	}
	names := map[string]trace.SpanKind{}
	for _, s := range exp.GetSpans() {
		names[s.Name] = s.SpanKind
		if s.SpanContext.TraceID() != span.SpanContext().TraceID() {
			t.Errorf("span %s in trace %s, want %s", s.Name, s.SpanContext.TraceID(), span.SpanContext().TraceID())
		}
	}
	if names["send q"] != trace.SpanKindProducer || names["receive q"] != trace.SpanKindConsumer || len(names) != 3 {
		t.Errorf("spans %v", names)
	}
}
