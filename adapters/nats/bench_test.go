package nats_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/adapters/nats"
)

// benchBody is the item size the issue asks for.
const benchBody = 256

// BenchmarkQueueThroughput moves b.N 256-byte items through a queue: one
// goroutine enqueues them one by one, another receives and acks each.
// items/s is b.N over the time until the last ack.
//
//	mem                              the in-memory adapter
//	fsync=F/adapter                  this adapter, Prefetch 1, on the embedded server
//	fsync=F/adapter-prefetch64       this adapter, Prefetch 64
//	fsync=F/raw                      nats.go jetstream at its best: PublishMsgAsync
//	                                 with a 4000 window (all acknowledgements awaited
//	                                 at the end), Messages() pulling 500, plain Ack
//
// The adapter's Enqueue waits for its own acknowledgement (durable once it
// returns), which one producer pays in full; the peer benchmark module
// (bench/) runs 64 producers and 8 consumers.
//
// F is "default" (the server writes each message to the OS before acking and
// fsyncs every 2 minutes) or "always" (sync_interval always: fsync before
// acking). Run:
//
//	go test -run '^$' -bench QueueThroughput -benchtime 2000x ./adapters/nats/
func BenchmarkQueueThroughput(b *testing.B) {
	b.Run("mem", func(b *testing.B) {
		br := mem.New()
		defer br.Close()
		benchAdapter(b, br, 1)
	})
	for _, sync := range []bool{false, true} {
		mode := "fsync=default"
		if sync {
			mode = "fsync=always"
		}
		srv := startServer(b, sync)
		openBroker := func(b *testing.B) *nats.Broker {
			br, err := nats.Open(context.Background(), nats.Options{Servers: []string{srv.URL()}})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { br.Close() })
			return br
		}
		b.Run(mode+"/adapter", func(b *testing.B) { benchAdapter(b, openBroker(b), 1) })
		b.Run(mode+"/adapter-prefetch64", func(b *testing.B) { benchAdapter(b, openBroker(b), 64) })
		b.Run(mode+"/raw", func(b *testing.B) { benchRaw(b, srv.URL()) })
	}
}

var benchSeq int

func benchQueueName() string {
	benchSeq++
	return fmt.Sprintf("bench-%d-%d", time.Now().UnixNano(), benchSeq)
}

func benchAdapter(b *testing.B, br adapters.Broker, prefetch int) {
	ctx := context.Background()
	q := benchQueueName()
	if err := br.DeclareQueue(ctx, adapters.QueueConfig{Name: q, Lease: 30 * time.Second}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { br.DeleteQueue(context.Background(), q) })
	c, err := br.Consume(ctx, q, adapters.ConsumeOptions{Prefetch: prefetch})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	body := make([]byte, benchBody)
	errc := make(chan error, 1)
	b.ResetTimer()
	go func() {
		for i := range b.N {
			if err := br.Enqueue(ctx, q, adapters.Message{ID: fmt.Sprint(i), Body: body}); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
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
	b.StopTimer()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
}

func benchRaw(b *testing.B, url string) {
	ctx := context.Background()
	nc, err := natsgo.Connect(url)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4000))
	if err != nil {
		b.Fatal(err)
	}
	name := "RAW_" + benchQueueName()
	subject := "raw." + name
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: name, Subjects: []string{subject},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage,
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { js.DeleteStream(context.Background(), name) })
	cons, err := js.CreateOrUpdateConsumer(ctx, name, jetstream.ConsumerConfig{
		Durable: "raw", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxDeliver: -1,
	})
	if err != nil {
		b.Fatal(err)
	}
	body := make([]byte, benchBody)
	errc := make(chan error, 1)
	b.ResetTimer()
	go func() {
		for i := range b.N {
			msg := natsgo.NewMsg(subject)
			msg.Header.Set("cb-id", fmt.Sprint(i))
			msg.Data = body
			if _, err := js.PublishMsgAsync(msg); err != nil {
				errc <- err
				return
			}
		}
		<-js.PublishAsyncComplete()
		errc <- nil
	}()
	it, err := cons.Messages(jetstream.PullMaxMessages(500))
	if err != nil {
		b.Fatal(err)
	}
	for range b.N {
		m, err := it.Next()
		if err != nil {
			b.Fatal(err)
		}
		if err := m.Ack(); err != nil {
			b.Fatal(err)
		}
	}
	it.Stop()
	// The acks were sent without waiting; make sure they arrived.
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
}
