package azservicebus_test

import (
	"context"
	"crypto/rand"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sb "github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/clusterbus/clusterbus/adapters"
)

const (
	benchProducers = 4  // concurrent enqueuers
	benchReceivers = 8  // concurrent receive -> ack loops (adapter) or completers (raw)
	benchBatch     = 64 // items per EnqueueBatch / SendMessageBatch, and the receive prefetch
)

// BenchmarkQueueThroughput measures enqueue -> receive -> ack of 256-byte
// items against the Node TEST server (not Service Bus: the figures say what
// the adapter costs over the SDK, not what Azure does), in one run:
//
//   - raw-sdk: the SDK used at its best: 4 producers each sending message
//     batches of 64 (NewMessageBatch/SendMessageBatch); one receiver calling
//     ReceiveMessages for up to 64 and 8 goroutines completing them.
//   - adapter: 4 producers calling Enqueue, one item per call.
//   - adapter-batch: 4 producers calling adapters.EnqueueBatch with 64.
//
// Both adapter cases consume with Prefetch 64 and 8 goroutines calling
// Receive and Ack, and report their ratio to raw ("x-raw").
//
//	go test -run '^$' -bench QueueThroughput -benchtime 5000x ./adapters/azservicebus/
func BenchmarkQueueThroughput(b *testing.B) {
	body := make([]byte, 256)
	_, _ = rand.Read(body)
	// Warm the test server (Node's JIT) so that the sub-benchmark that runs
	// first is not the slower one for that reason alone.
	warm := openTest(b)
	wq := uniqueName("warm")
	if err := warm.DeclareQueue(context.Background(), adapters.QueueConfig{Name: wq, Lease: 30 * time.Second}); err != nil {
		b.Fatal(err)
	}
	if err := pump(warm, wq, 500, body); err != nil {
		b.Fatal(err)
	}
	_ = warm.DeleteQueue(context.Background(), wq)
	var raw float64
	b.Run("raw-sdk", func(b *testing.B) { raw = benchRaw(b, body) })
	for _, batch := range []int{1, benchBatch} {
		name := "adapter"
		if batch > 1 {
			name = "adapter-batch"
		}
		b.Run(name, func(b *testing.B) {
			if rate := benchAdapter(b, body, batch); raw > 0 {
				b.ReportMetric(rate/raw, "x-raw")
			}
		})
	}
}

// produce sends n items from benchProducers goroutines, calling send with
// the first item's index and the number of items: at most batch, at least 1.
func produce(n, batch int, send func(first, k int) error) error {
	var next atomic.Int64
	errs := make(chan error, benchProducers)
	for range benchProducers {
		go func() {
			for {
				hi := int(next.Add(int64(batch)))
				lo := hi - batch
				if lo >= n {
					errs <- nil
					return
				}
				if err := send(lo, min(hi, n)-lo); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
	for range benchProducers {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	return err
}

func benchAdapter(b *testing.B, body []byte, batch int) float64 {
	br := openTest(b)
	ctx := context.Background()
	q := uniqueName("bench")
	if err := br.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: 30 * time.Second}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.DeleteQueue(context.Background(), q) })
	c, err := br.Consume(ctx, q, adapters.ConsumeOptions{Prefetch: benchBatch})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	start := time.Now()
	errs := make(chan error, 1)
	go func() {
		errs <- produce(b.N, batch, func(first, k int) error {
			if batch == 1 {
				return br.Enqueue(ctx, q, adapters.Message{ID: strconv.Itoa(first), Body: body})
			}
			ms := make([]adapters.Message, k)
			for i := range ms {
				ms[i] = adapters.Message{ID: strconv.Itoa(first + i), Body: body}
			}
			return adapters.EnqueueBatch(ctx, br, q, ms)
		})
	}()
	// Receivers wait without a timeout (a Receive cut short can leave
	// items the SDK took on link credit locked until the lease ends); the
	// last ack cancels the others' Receive.
	rctx, done := context.WithCancel(ctx)
	defer done()
	var left atomic.Int64
	left.Store(int64(b.N))
	var wg sync.WaitGroup
	for range benchReceivers {
		wg.Go(func() {
			for {
				d, err := c.Receive(rctx)
				if err != nil {
					if rctx.Err() == nil {
						b.Error(err)
					}
					return
				}
				if err := d.Ack(ctx); err != nil {
					b.Error(err)
					return
				}
				if left.Add(-1) == 0 {
					done()
				}
			}
		})
	}
	wg.Wait()
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	rate := float64(b.N) / time.Since(start).Seconds()
	b.ReportMetric(rate, "items/s")
	return rate
}

func benchRaw(b *testing.B, body []byte) float64 {
	s := needServer(b)
	br := openTest(b) // only to declare the queue the same way
	ctx := context.Background()
	q := uniqueName("benchraw")
	if err := br.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: 30 * time.Second}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = br.DeleteQueue(context.Background(), q) })
	client, err := sb.NewClientFromConnectionString(s.connectionString(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close(ctx)
	sender, err := client.NewSender(q, nil)
	if err != nil {
		b.Fatal(err)
	}
	rcv, err := client.NewReceiverForQueue(q, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	start := time.Now()
	errs := make(chan error, 1)
	go func() {
		errs <- produce(b.N, benchBatch, func(first, k int) error {
			batch, err := sender.NewMessageBatch(ctx, nil)
			if err != nil {
				return err
			}
			for i := range k {
				id := strconv.Itoa(first + i)
				if err := batch.AddMessage(&sb.Message{MessageID: &id, Body: body}, nil); err != nil {
					return err
				}
			}
			return sender.SendMessageBatch(ctx, batch, nil)
		})
	}()
	work := make(chan *sb.ReceivedMessage, benchBatch)
	var wg sync.WaitGroup
	for range benchReceivers {
		wg.Go(func() {
			for m := range work {
				if err := rcv.CompleteMessage(ctx, m, nil); err != nil {
					b.Error(err)
				}
			}
		})
	}
	for n := 0; n < b.N; {
		msgs, err := rcv.ReceiveMessages(ctx, benchBatch, nil)
		if err != nil {
			b.Fatal(err)
		}
		for _, m := range msgs {
			work <- m
			n++
		}
	}
	close(work)
	wg.Wait()
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	rate := float64(b.N) / time.Since(start).Seconds()
	b.ReportMetric(rate, "items/s")
	return rate
}

// pump enqueues n items and receives and acks them through the adapter.
func pump(br adapters.Broker, q string, n int, body []byte) error {
	ctx := context.Background()
	c, err := br.Consume(ctx, q, adapters.ConsumeOptions{})
	if err != nil {
		return err
	}
	defer c.Close()
	for i := range n {
		if err := br.Enqueue(ctx, q, adapters.Message{ID: strconv.Itoa(i), Body: body}); err != nil {
			return err
		}
		d, err := c.Receive(ctx)
		if err != nil {
			return err
		}
		if err := d.Ack(ctx); err != nil {
			return err
		}
	}
	return nil
}
