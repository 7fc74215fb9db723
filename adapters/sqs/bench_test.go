package sqs_test

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awssqs "github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/sqs"
)

// Queue throughput of 256-byte items, enqueue -> receive -> ack, through the
// adapter and through the raw SQS client doing the same work, in the same
// run against the same server. Each of the workers goroutines enqueues its
// share; as many consumers receive (up to 10 per call) and ack.
//
//	go test -run '^$' -bench QueueThroughput -benchtime 2000x ./adapters/sqs
//
// Metrics: adapter-items/s (Enqueue per item), adapter-batch-items/s
// (EnqueueBatch of 10), raw-items/s (SendMessage, ReceiveMessage of 10,
// DeleteMessage per item), raw-batch-items/s (SendMessageBatch and
// DeleteMessageBatch of 10), and adapter/raw and adapter/raw-batch, the
// adapter's throughput as a fraction of the raw client's. Bodies are 256
// bytes of text on both sides (a binary body would cost the adapter base64).
// adapter-batch/raw-batch compares the two that send ten to a request.
//
// With -sqs.rtt D (go test ... -args -sqs.rtt 10ms) every byte between the
// clients and the test server is delayed by D/2 each way, as a server tens
// of milliseconds away would be (AWS from another region, or through a
// proxy): what bounds throughput then is how many requests are in flight,
// not the test server's CPU.
func BenchmarkQueueThroughput(b *testing.B) {
	const workers = 8
	br := open(b)
	if *benchRTT > 0 {
		if server == nil {
			b.Skip("-sqs.rtt needs the local test server")
		}
		br = openVia(b, delayProxy(b, server.Endpoint(), *benchRTT/2))
	}
	ctx := context.Background()
	raw := make([]byte, 128)
	rand.Read(raw)
	body := []byte(fmt.Sprintf("%x", raw)) // 256 bytes of text: no base64 on either side
	n := b.N

	// Warm up the server and both clients so the first measured path does
	// not pay for it.
	{
		start := time.Now()
		q := declare(b, br, adapters.QueueConfig{Lease: 30 * time.Second})
		adapterRun(b, ctx, br, q.Name, 200, workers, body, false)
		rawRun(b, ctx, br.SQS(), queueURL(b, br, q.Name), 200, workers, body, true)
		b.Logf("warm-up %s", time.Since(start))
	}
	var adapterDur, adapterBatchDur, rawDur, batchDur time.Duration
	b.ResetTimer()
	{
		q := declare(b, br, adapters.QueueConfig{Lease: 30 * time.Second})
		start := time.Now()
		adapterRun(b, ctx, br, q.Name, n, workers, body, false)
		adapterDur = time.Since(start)
	}
	{
		q := declare(b, br, adapters.QueueConfig{Lease: 30 * time.Second})
		start := time.Now()
		adapterRun(b, ctx, br, q.Name, n, workers, body, true)
		adapterBatchDur = time.Since(start)
	}
	{
		q := declare(b, br, adapters.QueueConfig{Lease: 30 * time.Second})
		url := queueURL(b, br, q.Name)
		start := time.Now()
		rawRun(b, ctx, br.SQS(), url, n, workers, body, false)
		rawDur = time.Since(start)
	}
	{
		q := declare(b, br, adapters.QueueConfig{Lease: 30 * time.Second})
		url := queueURL(b, br, q.Name)
		start := time.Now()
		rawRun(b, ctx, br.SQS(), url, n, workers, body, true)
		batchDur = time.Since(start)
	}
	b.StopTimer()
	rate := func(d time.Duration) float64 { return float64(n) / d.Seconds() }
	b.ReportMetric(rate(adapterDur), "adapter-items/s")
	b.ReportMetric(rate(rawDur), "raw-items/s")
	b.ReportMetric(rate(batchDur), "raw-batch-items/s")
	b.ReportMetric(rate(adapterDur)/rate(rawDur), "adapter/raw")
	b.ReportMetric(rate(adapterDur)/rate(batchDur), "adapter/raw-batch")
	b.ReportMetric(rate(adapterBatchDur), "adapter-batch-items/s")
	b.ReportMetric(rate(adapterBatchDur)/rate(batchDur), "adapter-batch/raw-batch")
}

func queueURL(b testing.TB, br *sqs.Broker, name string) string {
	out, err := br.SQS().GetQueueUrl(context.Background(), &awssqs.GetQueueUrlInput{QueueName: aws.String(testPrefix + name)})
	if err != nil {
		b.Fatal(err)
	}
	return *out.QueueUrl
}

// adapterRun enqueues n items from workers goroutines, each Enqueue per
// item or, with batch, EnqueueBatch of 10 (as rawRun's batch does), and
// receives and acks them on workers consumers.
func adapterRun(b testing.TB, ctx context.Context, br *sqs.Broker, queue string, n, workers int, body []byte, batch bool) {
	var wg sync.WaitGroup
	var errOnce sync.Once
	var firstErr error
	fail := func(err error) { errOnce.Do(func() { firstErr = err }) }
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ms []adapters.Message
			for i := w; i < n; i += workers {
				ms = append(ms, adapters.Message{ID: strconv.Itoa(i), Body: body})
				if batch && len(ms) < 10 && i+workers < n {
					continue
				}
				if err := br.EnqueueBatch(ctx, queue, ms); err != nil {
					fail(err)
					return
				}
				ms = ms[:0]
			}
		}()
	}
	var acked atomic.Int64
	rctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	for range workers {
		c, err := br.Consume(ctx, queue, adapters.ConsumeOptions{Prefetch: 10})
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			for acked.Load() < int64(n) {
				d, err := c.Receive(rctx)
				if err != nil {
					if !errors.Is(err, context.Canceled) {
						fail(err)
					}
					cancel()
					return
				}
				if err := d.Ack(ctx); err != nil {
					fail(err)
					cancel()
					return
				}
				if acked.Add(1) >= int64(n) {
					cancel() // wake the other consumers
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	if got := acked.Load(); got < int64(n) {
		b.Fatalf("acked %d of %d", got, n)
	}
}

func rawRun(b testing.TB, ctx context.Context, cl *awssqs.Client, url string, n, workers int, body []byte, batch bool) {
	var wg sync.WaitGroup
	var errOnce sync.Once
	var firstErr error
	fail := func(err error) { errOnce.Do(func() { firstErr = err }) }
	text := string(body)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !batch {
				for i := w; i < n; i += workers {
					if _, err := cl.SendMessage(ctx, &awssqs.SendMessageInput{QueueUrl: aws.String(url), MessageBody: aws.String(text)}); err != nil {
						fail(err)
						return
					}
				}
				return
			}
			var es []types.SendMessageBatchRequestEntry
			flush := func() bool {
				if len(es) == 0 {
					return true
				}
				out, err := cl.SendMessageBatch(ctx, &awssqs.SendMessageBatchInput{QueueUrl: aws.String(url), Entries: es})
				if err == nil && len(out.Failed) > 0 {
					err = fmt.Errorf("%d entries failed: %s", len(out.Failed), aws.ToString(out.Failed[0].Message))
				}
				es = es[:0]
				if err != nil {
					fail(err)
					return false
				}
				return true
			}
			for i := w; i < n; i += workers {
				es = append(es, types.SendMessageBatchRequestEntry{Id: aws.String(strconv.Itoa(len(es))), MessageBody: aws.String(text)})
				if len(es) == 10 && !flush() {
					return
				}
			}
			flush()
		}()
	}
	var acked atomic.Int64
	rctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	done := func(k int) {
		if acked.Add(int64(k)) >= int64(n) {
			cancel()
		}
	}
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for acked.Load() < int64(n) {
				out, err := cl.ReceiveMessage(rctx, &awssqs.ReceiveMessageInput{QueueUrl: aws.String(url), MaxNumberOfMessages: 10, WaitTimeSeconds: 20})
				if err != nil {
					if rctx.Err() == nil {
						fail(err)
					}
					return
				}
				if batch && len(out.Messages) > 0 {
					es := make([]types.DeleteMessageBatchRequestEntry, len(out.Messages))
					for i, m := range out.Messages {
						es[i] = types.DeleteMessageBatchRequestEntry{Id: aws.String(strconv.Itoa(i)), ReceiptHandle: m.ReceiptHandle}
					}
					if _, err := cl.DeleteMessageBatch(ctx, &awssqs.DeleteMessageBatchInput{QueueUrl: aws.String(url), Entries: es}); err != nil {
						fail(err)
						return
					}
					done(len(es))
					continue
				}
				for _, m := range out.Messages {
					if _, err := cl.DeleteMessage(ctx, &awssqs.DeleteMessageInput{QueueUrl: aws.String(url), ReceiptHandle: m.ReceiptHandle}); err != nil {
						fail(err)
						return
					}
					done(1)
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	if got := acked.Load(); got < int64(n) {
		b.Fatalf("acked %d of %d", got, n)
	}
}

var benchRTT = flag.Duration("sqs.rtt", 0, "BenchmarkQueueThroughput: a round trip time added between the clients and the test server")
