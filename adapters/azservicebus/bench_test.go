package azservicebus_test

import (
	"context"
	"crypto/rand"
	"strconv"
	"testing"
	"time"

	sb "github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/clusterbus/clusterbus/adapters"
)

// adapterItemsPerSec is the adapter's figure from the last run, for the
// ratio the raw sub-benchmark reports.
var adapterItemsPerSec float64

// BenchmarkQueueThroughput measures enqueue → receive → ack of 256-byte
// items, one at a time from one producer and one consumer running
// concurrently, through the adapter and through the raw azservicebus client
// doing the same work, against the Node TEST server (not Service Bus: the
// figures say what the adapter costs over the SDK, not what Azure does).
//
//	go test -run '^$' -bench QueueThroughput -benchtime 2000x ./adapters/azservicebus/
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
	b.Run("adapter", func(b *testing.B) {
		br := openTest(b)
		ctx := context.Background()
		q := uniqueName("bench")
		if err := br.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: 30 * time.Second}); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = br.DeleteQueue(context.Background(), q) })
		c, err := br.Consume(ctx, q, adapters.ConsumeOptions{})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		b.SetBytes(int64(len(body)))
		b.ResetTimer()
		start := time.Now()
		errs := make(chan error, 1)
		go func() {
			for i := range b.N {
				if err := br.Enqueue(ctx, q, adapters.Message{ID: strconv.Itoa(i), Body: body}); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
		for range b.N {
			d, err := c.Receive(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if err := d.Ack(ctx); err != nil {
				b.Fatal(err)
			}
		}
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
		adapterItemsPerSec = float64(b.N) / time.Since(start).Seconds()
		b.ReportMetric(adapterItemsPerSec, "items/s")
	})
	b.Run("raw-sdk", func(b *testing.B) {
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
			for i := range b.N {
				id := strconv.Itoa(i)
				if err := sender.SendMessage(ctx, &sb.Message{MessageID: &id, Body: body}, nil); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
		for n := 0; n < b.N; {
			msgs, err := rcv.ReceiveMessages(ctx, 1, nil)
			if err != nil {
				b.Fatal(err)
			}
			for _, m := range msgs {
				if err := rcv.CompleteMessage(ctx, m, nil); err != nil {
					b.Fatal(err)
				}
				n++
			}
		}
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
		raw := float64(b.N) / time.Since(start).Seconds()
		b.ReportMetric(raw, "items/s")
		if adapterItemsPerSec > 0 {
			b.ReportMetric(adapterItemsPerSec/raw, "adapter/raw")
		}
	})
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
