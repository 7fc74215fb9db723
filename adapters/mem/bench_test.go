package mem_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
)

// BenchmarkQueueRoundTrip: enqueue, receive and ack one 256-byte item at a
// time on one client.
func BenchmarkQueueRoundTrip(b *testing.B) {
	ctx := context.Background()
	br := mem.New()
	defer br.Close()
	if err := br.DeclareQueue(ctx, adapters.QueueConfig{Name: "bench", Lease: time.Minute}); err != nil {
		b.Fatal(err)
	}
	c, err := br.Consume(ctx, "bench", adapters.ConsumeOptions{})
	if err != nil {
		b.Fatal(err)
	}
	body := make([]byte, 256)
	b.ResetTimer()
	for range b.N {
		if err := br.Enqueue(ctx, "bench", adapters.Message{ID: "x", Body: body}); err != nil {
			b.Fatal(err)
		}
		d, err := c.Receive(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := d.Ack(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
}

// BenchmarkBacklogDrain: drain a backlog of n items with 4 consumers, to
// show that per-item cost does not grow with the backlog.
func BenchmarkBacklogDrain(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			ctx := context.Background()
			for range b.N {
				b.StopTimer()
				srv := mem.NewServer()
				br := srv.Client()
				if err := br.DeclareQueue(ctx, adapters.QueueConfig{Name: "bench", Lease: time.Minute}); err != nil {
					b.Fatal(err)
				}
				for i := range n {
					if err := br.Enqueue(ctx, "bench", adapters.Message{ID: fmt.Sprint(i), Body: make([]byte, 256)}); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				done := make(chan error, 4)
				for w := range 4 {
					go func() {
						c, err := srv.Client().Consume(ctx, "bench", adapters.ConsumeOptions{})
						if err != nil {
							done <- err
							return
						}
						for i := w; i < n; i += 4 {
							d, err := c.Receive(ctx)
							if err == nil {
								err = d.Ack(ctx)
							}
							if err != nil {
								done <- err
								return
							}
						}
						done <- nil
					}()
				}
				for range 4 {
					if err := <-done; err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				srv.Close()
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "items/s")
		})
	}
}
