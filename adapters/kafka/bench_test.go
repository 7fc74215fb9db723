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
	benchBatch     = 64  // items per EnqueueBatch / raw WriteMessages call
)

// BenchmarkQueueThroughput measures enqueue -> receive -> ack of 256-byte
// items, on the same broker in the same run, through raw kafka-go used at
// its best and through the adapter:
//
//   - raw-kafka-go: a Writer with acks=all, a 2 ms batch timeout and
//     batches of 256, fed 64 records per WriteMessages call by each of 8
//     producers; a consumer-group Reader (fetches of up to 4 MiB, a queue
//     of 100) read by 8 goroutines, with asynchronous commits every 100 ms
//     (CommitInterval). Durability matches the adapter's (acks=all before
//     WriteMessages returns); the commits are what the adapter's acks are
//     stricter about (Ack returns after its commit).
//   - adapter: 8 producers calling Enqueue, one item each call.
//   - adapter-batch: 8 producers calling adapters.EnqueueBatch with 64.
//   - adapter-async: 8 producers calling adapters.EnqueueAsync per item
//     (the adapter's asynchronous writer), every Pending waited for
//     after the last send.
//
// Both adapter cases receive with 8 goroutines on one Consumer (Prefetch 8)
// and Ack each item. Each adapter case reports its ratio to raw ("x-raw").
//
//	go test ./adapters/kafka -run '^$' -bench QueueThroughput -benchtime 5000x
func BenchmarkQueueThroughput(b *testing.B) {
	benchPair(b, false)
}

// BenchmarkQueueDrain is the consuming half alone: the items are enqueued
// before the timer starts, then receive -> ack is timed, adapter vs raw
// kafka-go as above. It shows the cost of the adapter's per-offset ack
// tracking and commits without the producer's batching in the way.
//
//	go test ./adapters/kafka -run '^$' -bench QueueDrain -benchtime 5000x
func BenchmarkQueueDrain(b *testing.B) {
	benchPair(b, true)
}

// benchPair runs raw kafka-go, then the adapter with one Enqueue per item
// and with EnqueueBatch; the adapter results also report their throughput
// as a fraction of raw ("x-raw").
func benchPair(b *testing.B, prefill bool) {
	srv := startServer(b)
	var raw float64
	b.Run("raw-kafka-go", func(b *testing.B) { raw = benchRaw(b, srv, prefill) })
	for _, c := range []struct {
		name  string
		batch int
		async bool
	}{{"adapter", 1, false}, {"adapter-batch", benchBatch, false}, {"adapter-async", 1, true}} {
		b.Run(c.name, func(b *testing.B) {
			if rate := benchAdapter(b, srv, prefill, c.batch, c.async); raw > 0 {
				b.ReportMetric(rate/raw, "x-raw")
			}
		})
	}
}

// produce sends n items on benchWorkers goroutines, calling send with the
// number of items for each call: at most batch, and at least 1.
func produce(b *testing.B, n int64, batch int, send func(k int) error) {
	var wg sync.WaitGroup
	var next atomic.Int64
	for range benchWorkers {
		wg.Go(func() {
			for {
				hi := next.Add(int64(batch))
				lo := hi - int64(batch) + 1
				if lo > n {
					return
				}
				if err := send(int(min(hi, n) - lo + 1)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// benchAdapter enqueues batch items per EnqueueBatch call (1: Enqueue), or
// with async, one adapters.EnqueueAsync per item, every Pending waited for
// once all are sent.
func benchAdapter(b *testing.B, srv *server, prefill bool, batch int, async bool) float64 {
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
	var pmu sync.Mutex
	var pending []adapters.Pending
	send := func(k int) error {
		if async {
			p, err := adapters.EnqueueAsync(ctx, br, q, adapters.Message{Body: body})
			if err == nil {
				pmu.Lock()
				pending = append(pending, p)
				pmu.Unlock()
			}
			return err
		}
		if batch == 1 {
			return br.Enqueue(ctx, q, adapters.Message{Body: body})
		}
		ms := make([]adapters.Message, k)
		for i := range ms {
			ms[i].Body = body
		}
		return adapters.EnqueueBatch(ctx, br, q, ms)
	}
	produceAll := func() {
		produce(b, n, batch, send)
		for _, p := range pending {
			if err := p.Wait(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	}
	if prefill {
		produceAll()
	}
	b.ResetTimer()
	start := time.Now()
	var acked atomic.Int64
	var wg sync.WaitGroup
	if !prefill {
		wg.Go(produceAll)
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
		CommitInterval: 100 * time.Millisecond, HeartbeatInterval: 300 * time.Millisecond, SessionTimeout: 6 * time.Second, JoinGroupBackoff: 500 * time.Millisecond})
	defer r.Close()
	body := make([]byte, benchBody)
	n := int64(b.N)
	send := func(k int) error {
		ms := make([]kafkago.Message, k)
		for i := range ms {
			ms[i].Value = body
		}
		return w.WriteMessages(ctx, ms...)
	}
	if prefill {
		produce(b, n, benchBatch, send)
	}
	b.ResetTimer()
	start := time.Now()
	var acked atomic.Int64
	var wg sync.WaitGroup
	if !prefill {
		wg.Go(func() { produce(b, n, benchBatch, send) })
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
