package rabbitmq

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/clusterbus/clusterbus/adapters"
)

// Both sides do the same work: benchProducers goroutines publish 256-byte
// persistent items to a quorum queue, each waiting for its publisher
// confirm; one consumer with prefetch benchPrefetch receives and acks each.
const (
	benchProducers = 4
	benchPrefetch  = 32
	benchItemSize  = 256
)

// BenchmarkQueueThroughput measures enqueue → receive → ack of 256-byte
// items through the adapter and through raw amqp091-go in the same run, and
// reports both rates and their ratio (adapter/raw).
//
//	go test -run '^$' -bench QueueThroughput -benchtime 3000x ./adapters/rabbitmq
func BenchmarkQueueThroughput(b *testing.B) {
	requireBroker(b)
	n := b.N
	b.ResetTimer()
	adapterRate := benchAdapter(b, n)
	rawRate := benchRaw(b, n)
	b.StopTimer()
	b.ReportMetric(adapterRate, "adapter-items/s")
	b.ReportMetric(rawRate, "raw-items/s")
	b.ReportMetric(adapterRate/rawRate, "ratio")
}

func benchAdapter(b *testing.B, n int) float64 {
	ctx := context.Background()
	br, err := Open(ctx, testURL(), Options{Logger: testLogger(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	q := uniqueName("bench")
	if err := br.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: time.Minute}); err != nil {
		b.Fatal(err)
	}
	defer br.DeleteQueue(ctx, q)
	c, err := br.Consume(ctx, q, adapters.ConsumeOptions{Prefetch: benchPrefetch})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	body := make([]byte, benchItemSize)
	start := time.Now()
	errs := make(chan error, benchProducers+1)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range benchProducers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if err := br.Enqueue(ctx, q, adapters.Message{Body: body}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		d, err := c.Receive(rctx)
		cancel()
		if err != nil {
			b.Fatalf("receive %d of %d: %v", i, n, err)
		}
		if err := d.Ack(ctx); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	return float64(n) / elapsed.Seconds()
}

func benchRaw(b *testing.B, n int) float64 {
	conn, err := amqp.Dial(testURL())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	q := uniqueName("rawbench")
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		b.Fatal(err)
	}
	defer func() {
		if c, err := conn.Channel(); err == nil {
			c.QueueDelete(q, false, false, false)
		}
	}()
	if err := ch.Qos(benchPrefetch, 0, false); err != nil {
		b.Fatal(err)
	}
	deliveries, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	body := make([]byte, benchItemSize)
	ctx := context.Background()
	start := time.Now()
	errs := make(chan error, benchProducers)
	var next atomic.Int64
	var wg sync.WaitGroup
	for p := range benchProducers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pch, err := conn.Channel()
			if err != nil {
				errs <- err
				return
			}
			defer pch.Close()
			if err := pch.Confirm(false); err != nil {
				errs <- err
				return
			}
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				conf, err := pch.PublishWithDeferredConfirmWithContext(ctx, "", q, true, false, amqp.Publishing{
					DeliveryMode: amqp.Persistent, MessageId: fmt.Sprintf("%d-%d", p, i), Body: body,
				})
				if err != nil {
					errs <- err
					return
				}
				if ok, err := conf.WaitContext(ctx); err != nil || !ok {
					errs <- fmt.Errorf("confirm: ok=%v err=%v", ok, err)
					return
				}
			}
		}()
	}
	timeout := time.NewTimer(time.Minute)
	defer timeout.Stop()
	for i := 0; i < n; i++ {
		select {
		case d, ok := <-deliveries:
			if !ok {
				b.Fatal("raw consumer closed")
			}
			if err := d.Ack(false); err != nil {
				b.Fatal(err)
			}
		case err := <-errs:
			b.Fatal(err)
		case <-timeout.C:
			b.Fatalf("raw: received %d of %d within a minute", i, n)
		}
	}
	elapsed := time.Since(start)
	wg.Wait()
	return float64(n) / elapsed.Seconds()
}

// BenchmarkDelayedNackRoundTrip measures the delay path: one consumer
// (prefetch benchPrefetch) nacks each 256-byte item with a 1ms delay (copy
// published to the quorum delay queue, confirmed, then the original acked),
// the consumer's mover publishes it back when due (confirmed, then acked),
// and the consumer acks the second attempt. It reports round
// trips per second and the mean latency of the Nack call.
//
//	go test -run '^$' -bench DelayedNackRoundTrip -benchtime 1000x ./adapters/rabbitmq
func BenchmarkDelayedNackRoundTrip(b *testing.B) {
	requireBroker(b)
	n := b.N
	ctx := context.Background()
	br, err := Open(ctx, testURL(), Options{Logger: testLogger(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	q := uniqueName("nackbench")
	if err := br.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: time.Minute, MaxAttempts: 5}); err != nil {
		b.Fatal(err)
	}
	defer br.DeleteQueue(ctx, q)
	body := make([]byte, benchItemSize)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, benchProducers)
	for range benchProducers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if err := br.Enqueue(ctx, q, adapters.Message{Body: body}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	c, err := br.Consume(ctx, q, adapters.ConsumeOptions{Prefetch: benchPrefetch})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ResetTimer()
	start := time.Now()
	var nackTime time.Duration
	for acked := 0; acked < n; {
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		d, err := c.Receive(rctx)
		cancel()
		if err != nil {
			b.Fatalf("receive (%d of %d acked): %v", acked, n, err)
		}
		switch d.Attempt() {
		case 1:
			t0 := time.Now()
			if err := d.Nack(ctx, time.Millisecond); err != nil {
				b.Fatal(err)
			}
			nackTime += time.Since(t0)
		default:
			if err := d.Ack(ctx); err != nil {
				b.Fatal(err)
			}
			acked++
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(n)/elapsed.Seconds(), "roundtrips/s")
	b.ReportMetric(float64(nackTime.Microseconds())/1000/float64(n), "ms/nack")
}
