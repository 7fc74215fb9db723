package workqueue_test

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/workqueue"
)

// instantBroker hands out an item on every Receive at once and settles it
// at no cost, so a benchmark over it measures what the worker itself costs
// per item: the receive loop, the hand-off, the lease, the settling and the
// metrics. Only the methods a Worker calls are implemented.
type instantBroker struct {
	adapters.Broker
	acked atomic.Int64
}

func (b *instantBroker) Capabilities() adapters.Capabilities {
	return adapters.Capabilities{Name: "instant", LeaseExtension: adapters.Native}
}
func (b *instantBroker) DeclareQueue(context.Context, adapters.QueueConfig) error { return nil }
func (b *instantBroker) Consume(context.Context, string, adapters.ConsumeOptions) (adapters.Consumer, error) {
	return instantConsumer{b}, nil
}

type instantConsumer struct{ b *instantBroker }

func (c instantConsumer) Receive(ctx context.Context) (adapters.Delivery, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return &instantDelivery{b: c.b, deadline: time.Now().Add(time.Minute)}, nil
}
func (instantConsumer) Close() error { return nil }

type instantDelivery struct {
	b        *instantBroker
	deadline time.Time
}

func (d *instantDelivery) Message() adapters.Message                   { return adapters.Message{ID: "x"} }
func (d *instantDelivery) Attempt() int                                { return 1 }
func (d *instantDelivery) Queue() string                               { return "bench" }
func (d *instantDelivery) LeaseDeadline() time.Time                    { return d.deadline }
func (d *instantDelivery) Ack(context.Context) error                   { d.b.acked.Add(1); return nil }
func (d *instantDelivery) Nack(context.Context, time.Duration) error   { return nil }
func (d *instantDelivery) Extend(context.Context, time.Duration) error { return nil }
func (d *instantDelivery) DeadLetter(context.Context, string) error    { return nil }

// The worker's own cost per item with a handler that returns at once:
// b.N items through 8 handlers.
//
//	go test -run '^$' -bench Worker -benchmem ./workqueue
func BenchmarkWorkerPerItem(b *testing.B) {
	br := &instantBroker{}
	done := make(chan struct{})
	var handled atomic.Int64
	n := int64(b.N)
	w, err := workqueue.New(br, workqueue.Config{
		Queue:       adapters.QueueConfig{Name: "bench", Lease: time.Minute},
		Concurrency: 8,
	}, func(context.Context, *workqueue.Job) error {
		if handled.Add(1) == n {
			close(done)
		}
		return nil
	}, workqueue.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	if err := w.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	<-done
	b.StopTimer()
	if err := w.Stop(context.Background()); err != nil {
		b.Fatal(err)
	}
}
