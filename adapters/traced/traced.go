package traced

import (
	"context"
	"maps"
	"strings"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/clusterbus/clusterbus/adapters"
)

// Propagator is the W3C trace-context propagator every clusterbus package
// uses for message headers and HTTP.
var Propagator propagation.TextMapPropagator = propagation.TraceContext{}

// Options tune New.
type Options struct {
	// TracerProvider defaults to otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
}

// Broker is a Broker whose messages carry trace context.
type Broker struct {
	inner  adapters.Broker
	tracer trace.Tracer
	system string
}

// New wraps b.
func New(b adapters.Broker, o Options) *Broker {
	tp := o.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	return &Broker{inner: b, tracer: tp.Tracer("github.com/clusterbus/clusterbus/adapters/traced"), system: b.Capabilities().Name}
}

// Unwrap returns the wrapped broker.
func (b *Broker) Unwrap() adapters.Broker { return b.inner }

// Carrier adapts message headers to the propagator.
type Carrier map[string]string

func (c Carrier) Get(k string) string {
	if v, ok := c[k]; ok {
		return v
	}
	for hk, v := range c { // headers may have been case-folded by a broker
		if strings.EqualFold(hk, k) {
			return v
		}
	}
	return ""
}
func (c Carrier) Set(k, v string) { c[k] = v }
func (c Carrier) Keys() []string {
	out := make([]string, 0, len(c))
	for k := range c {
		out = append(out, k)
	}
	return out
}

// Context returns ctx carrying the trace context of m's sender, if any.
func Context(ctx context.Context, m adapters.Message) context.Context {
	if len(m.Headers) == 0 {
		return ctx
	}
	return Propagator.Extract(ctx, Carrier(m.Headers))
}

func (b *Broker) attrs(op, dest string, m adapters.Message) []attribute.KeyValue {
	a := []attribute.KeyValue{
		attribute.String("messaging.system", b.system),
		attribute.String("messaging.destination.name", dest),
		attribute.String("messaging.operation.type", op),
	}
	if m.ID != "" {
		a = append(a, attribute.String("messaging.message.id", m.ID))
	}
	return a
}

// send runs fn in a producer span and gives it m with the span's trace
// context in its headers. Without a span in ctx, m goes as it is.
func (b *Broker) send(ctx context.Context, dest string, m adapters.Message, fn func(context.Context, adapters.Message) error) error {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return fn(ctx, m)
	}
	ctx, span := b.tracer.Start(ctx, "send "+dest, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(b.attrs("send", dest, m)...))
	defer span.End()
	h := make(map[string]string, len(m.Headers)+2)
	maps.Copy(h, m.Headers)
	Propagator.Inject(ctx, Carrier(h))
	m.Headers = h
	err := fn(ctx, m)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	return err
}

// Capabilities are the inner broker's.
func (b *Broker) Capabilities() adapters.Capabilities { return b.inner.Capabilities() }

// Publish implements adapters.Broker.
func (b *Broker) Publish(ctx context.Context, topic string, m adapters.Message) error {
	return b.send(ctx, topic, m, func(ctx context.Context, m adapters.Message) error { return b.inner.Publish(ctx, topic, m) })
}

// Enqueue implements adapters.Broker.
func (b *Broker) Enqueue(ctx context.Context, queue string, m adapters.Message) error {
	return b.send(ctx, queue, m, func(ctx context.Context, m adapters.Message) error { return b.inner.Enqueue(ctx, queue, m) })
}

// EnqueueAsync implements adapters.AsyncEnqueuer: the producer span covers
// the sending (not the wait for the broker's acknowledgement), then the
// inner broker's EnqueueAsync (or its Enqueue on a goroutine) carries the
// message with the span's context.
func (b *Broker) EnqueueAsync(ctx context.Context, queue string, m adapters.Message) (adapters.Pending, error) {
	var p adapters.Pending
	err := b.send(ctx, queue, m, func(ctx context.Context, m adapters.Message) (err error) {
		p, err = adapters.EnqueueAsync(ctx, b.inner, queue, m)
		return err
	})
	return p, err
}

// Subscribe implements adapters.Broker.
func (b *Broker) Subscribe(ctx context.Context, topic string) (adapters.Subscription, error) {
	return b.inner.Subscribe(ctx, topic)
}

// DeclareQueue implements adapters.Broker.
func (b *Broker) DeclareQueue(ctx context.Context, cfg adapters.QueueConfig) error {
	return b.inner.DeclareQueue(ctx, cfg)
}

// DeleteQueue implements adapters.Broker.
func (b *Broker) DeleteQueue(ctx context.Context, queue string) error {
	return b.inner.DeleteQueue(ctx, queue)
}

// Consume implements adapters.Broker: each delivery is received in a
// consumer span, child of the sender's.
func (b *Broker) Consume(ctx context.Context, queue string, opts adapters.ConsumeOptions) (adapters.Consumer, error) {
	c, err := b.inner.Consume(ctx, queue, opts)
	if err != nil {
		return nil, err
	}
	return &consumer{Consumer: c, b: b, queue: queue}, nil
}

// Close implements adapters.Broker.
func (b *Broker) Close() error { return b.inner.Close() }

// QueueStats forwards to the inner broker (see adapters.Stats).
func (b *Broker) QueueStats(ctx context.Context, queue string) (adapters.QueueStats, error) {
	return adapters.Stats(ctx, b.inner, queue)
}

type consumer struct {
	adapters.Consumer
	b     *Broker
	queue string
}

// Pause implements adapters.Pauser when the inner consumer does.
func (c *consumer) Pause() {
	if p, ok := c.Consumer.(adapters.Pauser); ok {
		p.Pause()
	}
}

func (c *consumer) Receive(ctx context.Context) (adapters.Delivery, error) {
	d, err := c.Consumer.Receive(ctx)
	if err != nil {
		return d, err
	}
	m := d.Message()
	if pctx := Context(context.Background(), m); trace.SpanContextFromContext(pctx).IsValid() {
		_, span := c.b.tracer.Start(pctx, "receive "+c.queue, trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithAttributes(append(c.b.attrs("receive", c.queue, m), attribute.Int("clusterbus.attempt", d.Attempt()))...))
		span.End()
	}
	return d, nil
}

// EnqueueBatch implements adapters.BatchEnqueuer: one producer span for the
// batch, its trace context in every message, then the inner broker's batch
// (or its Enqueue per message).
func (b *Broker) EnqueueBatch(ctx context.Context, queue string, ms []adapters.Message) error {
	if !trace.SpanContextFromContext(ctx).IsValid() || len(ms) == 0 {
		return adapters.EnqueueBatch(ctx, b.inner, queue, ms)
	}
	ctx, span := b.tracer.Start(ctx, "send "+queue, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(append(b.attrs("send", queue, adapters.Message{}), attribute.Int("messaging.batch.message_count", len(ms)))...))
	defer span.End()
	out := make([]adapters.Message, len(ms))
	for i, m := range ms {
		h := make(map[string]string, len(m.Headers)+2)
		maps.Copy(h, m.Headers)
		Propagator.Inject(ctx, Carrier(h))
		m.Headers = h
		out[i] = m
	}
	err := adapters.EnqueueBatch(ctx, b.inner, queue, out)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	return err
}
