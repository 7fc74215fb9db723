package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/clusterbus/clusterbus/adapters"
)

// benchConfig is what `clusterbus bench` measures.
type benchConfig struct {
	Items     int
	Size      int
	Producers int
	Consumers int
	Prefetch  int
	Topic     int // topic messages; 0 skips the topic test
}

func init() {
	var brokerURL string
	var timeout time.Duration
	cfg := benchConfig{}
	cmd := &cobra.Command{
		Use:   "bench --broker URL",
		Short: "Measure a broker through clusterbus: queue throughput and latency, topic latency",
		Long: `bench runs a load against the broker through the same adapter a node uses, on a queue and a
topic of its own that it removes afterwards. Queue: --producers enqueue --items items of
--size bytes while --consumers receive (with --prefetch) and ack them; it prints items/s and
the enqueue-to-receive latency. Topic: it publishes --topic messages one at a time to one
subscriber and prints the publish-to-receive latency. The figures are what this machine, this
network and this broker give; run it next to the nodes to size a cluster. go test -bench in
the adapters/<broker> packages compares the adapter with the raw client.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if brokerURL == "" {
				return &exitError{code: 2, err: errors.New("bench: --broker is required, e.g. --broker nats://127.0.0.1:14222")}
			}
			if err := cfg.validate(); err != nil {
				return &exitError{code: 2, err: fmt.Errorf("bench: %w", err)}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			if err := runBench(ctx, cmd.OutOrStdout(), brokerURL, cfg); err != nil {
				if errors.Is(err, context.DeadlineExceeded) {
					err = fmt.Errorf("%w (after --timeout %s)", err, timeout)
				}
				return &exitError{code: 1, err: fmt.Errorf("bench %s: %w", adapters.Redact(brokerURL), err)}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&brokerURL, "broker", "", "broker URL ("+schemeList()+")")
	f.DurationVar(&timeout, "timeout", 5*time.Minute, "give up after this long")
	f.IntVar(&cfg.Items, "items", 2000, "queue items to send")
	f.IntVar(&cfg.Size, "size", 256, "bytes per queue item and topic message (at least 16)")
	f.IntVar(&cfg.Producers, "producers", 4, "concurrent enqueuers")
	f.IntVar(&cfg.Consumers, "consumers", 4, "concurrent consumers")
	f.IntVar(&cfg.Prefetch, "prefetch", 16, "items each consumer may hold ahead")
	f.IntVar(&cfg.Topic, "topic", 200, "topic messages for the latency test (0 skips it)")
	rootCmd.AddCommand(cmd)
}

func (c benchConfig) validate() error {
	switch {
	case c.Items < 1:
		return fmt.Errorf("--items %d: want at least 1", c.Items)
	case c.Size < 16:
		return fmt.Errorf("--size %d: want at least 16 (a timestamp and a sequence number)", c.Size)
	case c.Producers < 1 || c.Consumers < 1:
		return fmt.Errorf("--producers %d, --consumers %d: want each at least 1", c.Producers, c.Consumers)
	case c.Prefetch < 1:
		return fmt.Errorf("--prefetch %d: want at least 1", c.Prefetch)
	case c.Topic < 0:
		return fmt.Errorf("--topic %d: want 0 or more", c.Topic)
	}
	return nil
}

// benchBody is a body of size bytes carrying the send time and a sequence.
func benchBody(size int, seq uint64) []byte {
	b := make([]byte, size)
	binary.BigEndian.PutUint64(b, uint64(time.Now().UnixNano()))
	binary.BigEndian.PutUint64(b[8:], seq)
	return b
}

func benchSent(b []byte) (time.Time, uint64, bool) {
	if len(b) < 16 {
		return time.Time{}, 0, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(b))), binary.BigEndian.Uint64(b[8:]), true
}

func runBench(ctx context.Context, w io.Writer, brokerURL string, cfg benchConfig) error {
	nonce := make([]byte, 6)
	_, _ = rand.Read(nonce)
	name := "clusterbus-bench-" + hex.EncodeToString(nonce)
	b, err := adapters.Open(ctx, brokerURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer b.Close()
	caps := b.Capabilities()
	if caps.MaxMessageSize > 0 && cfg.Size > caps.MaxMessageSize {
		return fmt.Errorf("--size %d is over %s's message size limit %d", cfg.Size, caps.Name, caps.MaxMessageSize)
	}
	fmt.Fprintf(w, "broker %s (%s); queue and topic %s\n", adapters.Redact(brokerURL), caps.Name, name)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	defer tw.Flush()

	q, err := benchQueue(ctx, b, name, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(tw, "queue\t%d items of %d B, %d producers, %d consumers, prefetch %d\n", cfg.Items, cfg.Size, cfg.Producers, cfg.Consumers, cfg.Prefetch)
	fmt.Fprintf(tw, "  enqueue\t%.0f items/s\n", float64(cfg.Items)/q.enqueue.Seconds())
	fmt.Fprintf(tw, "  enqueue -> ack\t%.0f items/s (all acked %s after the first enqueue)\n", float64(cfg.Items)/q.total.Seconds(), q.total.Round(time.Millisecond))
	fmt.Fprintf(tw, "  enqueue -> receive\tp50 %s  p99 %s  max %s\n", pct(q.lat, 50), pct(q.lat, 99), pct(q.lat, 100))
	if q.redelivered > 0 {
		fmt.Fprintf(tw, "  redelivered\t%d (received more than once)\n", q.redelivered)
	}
	if cfg.Topic > 0 {
		lat, lost, err := benchTopic(ctx, b, name, cfg)
		if err != nil {
			return err
		}
		fmt.Fprintf(tw, "topic\t%d messages of %d B, one at a time, 1 subscriber\n", cfg.Topic, cfg.Size)
		fmt.Fprintf(tw, "  publish -> receive\tp50 %s  p99 %s  max %s\n", pct(lat, 50), pct(lat, 99), pct(lat, 100))
		if lost > 0 {
			fmt.Fprintf(tw, "  lost\t%d (not received within 5s; topics are at most once)\n", lost)
		}
	}
	return nil
}

type benchQueueResult struct {
	enqueue, total time.Duration
	lat            []time.Duration
	redelivered    int
}

func benchQueue(ctx context.Context, b adapters.Broker, name string, cfg benchConfig) (benchQueueResult, error) {
	var res benchQueueResult
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: name, Lease: checkLease(b.Capabilities())}); err != nil {
		return res, fmt.Errorf("declare queue %s: %w", name, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = b.DeleteQueue(dctx, name)
	}()
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	var mu sync.Mutex
	seen := make([]bool, cfg.Items)
	var acked atomic.Int64
	allAcked := make(chan struct{})
	consumers, cctx2 := errgroup.WithContext(cctx)
	for range cfg.Consumers {
		c, err := b.Consume(ctx, name, adapters.ConsumeOptions{Prefetch: cfg.Prefetch})
		if err != nil {
			return res, fmt.Errorf("consume %s: %w", name, err)
		}
		defer c.Close()
		consumers.Go(func() error {
			for {
				d, err := c.Receive(cctx2)
				if err != nil {
					if cctx2.Err() != nil {
						return nil
					}
					return fmt.Errorf("receive: %w", err)
				}
				now := time.Now()
				sent, seq, ok := benchSent(d.Message().Body)
				if err := d.Ack(cctx2); err != nil && cctx2.Err() == nil {
					return fmt.Errorf("ack: %w", err)
				}
				if !ok || seq >= uint64(cfg.Items) {
					continue // not ours
				}
				mu.Lock()
				if seen[seq] {
					res.redelivered++
					mu.Unlock()
					continue
				}
				seen[seq] = true
				res.lat = append(res.lat, now.Sub(sent))
				mu.Unlock()
				if acked.Add(1) == int64(cfg.Items) {
					close(allAcked)
				}
			}
		})
	}
	start := time.Now()
	var next atomic.Int64
	producers, pctx := errgroup.WithContext(ctx)
	for range cfg.Producers {
		producers.Go(func() error {
			for {
				i := next.Add(1) - 1
				if i >= int64(cfg.Items) {
					return nil
				}
				if err := b.Enqueue(pctx, name, adapters.Message{ID: fmt.Sprintf("%s-%d", name, i), Body: benchBody(cfg.Size, uint64(i))}); err != nil {
					return fmt.Errorf("enqueue: %w", err)
				}
			}
		})
	}
	if err := producers.Wait(); err != nil {
		return res, err
	}
	res.enqueue = time.Since(start)
	select {
	case <-allAcked:
	case <-cctx2.Done():
		stop()
		if err := consumers.Wait(); err != nil {
			return res, err
		}
		return res, fmt.Errorf("%d of %d items acked: %w", acked.Load(), cfg.Items, ctx.Err())
	}
	res.total = time.Since(start)
	stop()
	return res, consumers.Wait()
}

func benchTopic(ctx context.Context, b adapters.Broker, name string, cfg benchConfig) ([]time.Duration, int, error) {
	sub, err := b.Subscribe(ctx, name)
	if err != nil {
		return nil, 0, fmt.Errorf("subscribe to topic %s: %w", name, err)
	}
	defer sub.Close()
	var lat []time.Duration
	lost := 0
	for i := range cfg.Topic {
		if err := b.Publish(ctx, name, adapters.Message{Body: benchBody(cfg.Size, uint64(i))}); err != nil {
			return nil, 0, fmt.Errorf("publish to topic %s: %w", name, err)
		}
		// Topics are at most once: a message not here within 5s is lost.
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		for {
			m, err := sub.Receive(rctx)
			if errors.Is(err, adapters.ErrGap) {
				continue
			}
			if err != nil && ctx.Err() == nil && rctx.Err() != nil {
				lost++
				break
			}
			if err != nil {
				cancel()
				return nil, 0, fmt.Errorf("receive from topic %s after %d messages: %w", name, i, err)
			}
			sent, seq, ok := benchSent(m.Body)
			if ok && seq == uint64(i) {
				lat = append(lat, time.Since(sent))
				break
			}
		}
		cancel()
	}
	return lat, lost, nil
}

// pct is the p-th percentile (nearest rank) of d, rounded for printing.
func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	i := max((len(s)*p+99)/100, 1)
	v := s[i-1]
	switch {
	case v >= 100*time.Millisecond:
		return v.Round(time.Millisecond)
	case v >= time.Millisecond:
		return v.Round(10 * time.Microsecond)
	}
	return v.Round(time.Microsecond)
}
