package kafka_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/clusterbus/clusterbus/adapters"
)

const (
	benchBody      = 256 // bytes per item
	benchWorkers   = 8   // concurrent enqueuers and concurrent receivers
	benchPartition = 4   // partitions of the queue topic, as in testQuery
)

// BenchmarkQueueThroughput measures enqueue -> receive -> ack of 256-byte
// items through the adapter and through raw kafka-go doing the same work
// (a Writer with acks=all and a 2 ms batch timeout; a Reader in a consumer
// group with FetchMessage and a synchronous CommitMessages per item), on the
// same broker in the same run. Both use 8 enqueuers and 8 receivers and a
// topic of 4 partitions. It reports items/s for each and logs the ratio.
//
//	go test ./adapters/kafka -run '^$' -bench QueueThroughput -benchtime 3000x
func BenchmarkQueueThroughput(b *testing.B) {
	benchPair(b, false)
}

// BenchmarkQueueDrain is the consuming half alone: the items are enqueued
// before the timer starts, then receive -> ack is timed, adapter vs raw
// kafka-go as above. It shows the cost of the adapter's per-offset ack
// tracking and commits without the producer's batching in the way.
//
//	go test ./adapters/kafka -run '^$' -bench QueueDrain -benchtime 3000x
func BenchmarkQueueDrain(b *testing.B) {
	benchPair(b, true)
}

// benchPair runs raw kafka-go, then the adapter; the adapter's result also
// reports its throughput as a fraction of raw ("x-raw").
func benchPair(b *testing.B, prefill bool) {
	srv := startServer(b)
	var raw float64
	b.Run("raw-kafka-go", func(b *testing.B) { raw = benchRaw(b, srv, prefill) })
	b.Run("adapter", func(b *testing.B) {
		if rate := benchAdapter(b, srv, prefill); raw > 0 {
			b.ReportMetric(rate/raw, "x-raw")
		}
	})
}

// produce runs n sends on benchWorkers goroutines.
func produce(b *testing.B, n int64, send func() error) {
	var wg sync.WaitGroup
	var next atomic.Int64
	for range benchWorkers {
		wg.Go(func() {
			for i := next.Add(1); i <= n; i = next.Add(1) {
				if err := send(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func benchAdapter(b *testing.B, srv *server, prefill bool) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	br, err := srv.open(ctx, b)
	if err != nil {
		b.Fatal(err)
	}
	defer br.Close()
	q := uniqueName("bench")
	if err := br.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: time.Minute}); err != nil {
		b.Fatal(err)
	}
	defer br.DeleteQueue(context.Background(), q)
	c, err := br.Consume(ctx, q, adapters.ConsumeOptions{Prefetch: benchWorkers})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	body := make([]byte, benchBody)
	n := int64(b.N)
	send := func() error { return br.Enqueue(ctx, q, adapters.Message{Body: body}) }
	if prefill {
		produce(b, n, send)
	}
	b.ResetTimer()
	start := time.Now()
	var acked atomic.Int64
	var wg sync.WaitGroup
	if !prefill {
		wg.Go(func() { produce(b, n, send) })
	}
	for range benchWorkers {
		wg.Go(func() {
			for acked.Load() < n {
				rctx, rcancel := context.WithTimeout(ctx, 200*time.Millisecond)
				d, err := c.Receive(rctx)
				rcancel()
				if err != nil {
					if ctx.Err() != nil {
						b.Error(err)
						return
					}
					continue
				}
				if err := d.Ack(ctx); err != nil {
					b.Errorf("Ack: %v", err)
					return
				}
				acked.Add(1)
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	rate := float64(b.N) / el.Seconds()
	b.ReportMetric(rate, "items/s")
	return rate
}

func benchRaw(b *testing.B, srv *server, prefill bool) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	brokers := strings.Split(srv.brokers, ",")
	topic := uniqueName("rawbench")
	client := &kafkago.Client{Addr: kafkago.TCP(brokers...)}
	if _, err := client.CreateTopics(ctx, &kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{
		{Topic: topic, NumPartitions: benchPartition, ReplicationFactor: -1}}}); err != nil {
		b.Fatal(err)
	}
	defer client.DeleteTopics(context.Background(), &kafkago.DeleteTopicsRequest{Topics: []string{topic}})
	w := &kafkago.Writer{Addr: kafkago.TCP(brokers...), Topic: topic, Balancer: &kafkago.Hash{},
		RequiredAcks: kafkago.RequireAll, BatchTimeout: 2 * time.Millisecond, BatchSize: 256}
	defer w.Close()
	r := kafkago.NewReader(kafkago.ReaderConfig{Brokers: brokers, GroupID: topic, Topic: topic,
		MinBytes: 1, MaxBytes: 4 << 20, MaxWait: 500 * time.Millisecond, StartOffset: kafkago.FirstOffset,
		HeartbeatInterval: 300 * time.Millisecond, SessionTimeout: 6 * time.Second, JoinGroupBackoff: 500 * time.Millisecond})
	defer r.Close()
	body := make([]byte, benchBody)
	n := int64(b.N)
	send := func() error { return w.WriteMessages(ctx, kafkago.Message{Value: body}) }
	if prefill {
		produce(b, n, send)
	}
	b.ResetTimer()
	start := time.Now()
	var acked atomic.Int64
	var wg sync.WaitGroup
	if !prefill {
		wg.Go(func() { produce(b, n, send) })
	}
	for range benchWorkers {
		wg.Go(func() {
			for acked.Load() < n {
				rctx, rcancel := context.WithTimeout(ctx, 200*time.Millisecond)
				m, err := r.FetchMessage(rctx)
				rcancel()
				if err != nil {
					if ctx.Err() != nil {
						b.Error(err)
						return
					}
					continue
				}
				if err := r.CommitMessages(ctx, m); err != nil {
					b.Errorf("CommitMessages: %v", err)
					return
				}
				acked.Add(1)
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	rate := float64(b.N) / el.Seconds()
	b.ReportMetric(rate, "items/s")
	return rate
}
