package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/clusterbus/clusterbus/adapters"
)

func init() {
	var brokerURL string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "check --broker URL",
		Short: "Check a broker: round-trip a topic message and a queue item, print its capabilities",
		Long: `check connects to the broker, publishes a message on a fresh topic and receives it,
enqueues an item on a fresh queue, receives it under a lease and acks it, then prints what the
broker supports. It exits non-zero with the reason if any step fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if brokerURL == "" {
				return &exitError{code: 2, err: errors.New("check: --broker is required, e.g. --broker nats://127.0.0.1:14222")}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			if err := runCheck(ctx, cmd.OutOrStdout(), brokerURL); err != nil {
				if errors.Is(err, context.DeadlineExceeded) {
					err = fmt.Errorf("%w (after --timeout %s)", err, timeout)
				}
				return &exitError{code: 1, err: fmt.Errorf("check %s: %w", adapters.Redact(brokerURL), err)}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&brokerURL, "broker", "", "broker URL ("+schemeList()+")")
	cmd.Flags().DurationVar(&timeout, "timeout", 20*time.Second, "give up after this long")
	rootCmd.AddCommand(cmd)
}

func schemeList() string {
	s := adapters.Schemes()
	out := ""
	for i, x := range s {
		if i > 0 {
			out += ", "
		}
		out += x + "://"
	}
	return out
}

func runCheck(ctx context.Context, w io.Writer, brokerURL string) error {
	nonce := make([]byte, 6)
	_, _ = rand.Read(nonce)
	name := "clusterbus-check-" + hex.EncodeToString(nonce)

	start := time.Now()
	b, err := adapters.Open(ctx, brokerURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer b.Close()
	fmt.Fprintf(w, "connected to %s in %s\n", adapters.Redact(brokerURL), time.Since(start).Round(time.Millisecond))

	// Topic round trip.
	start = time.Now()
	sub, err := b.Subscribe(ctx, name)
	if err != nil {
		return fmt.Errorf("subscribe to topic %s: %w", name, err)
	}
	defer sub.Close()
	body := append([]byte("check "), nonce...)
	if err := b.Publish(ctx, name, adapters.Message{Body: body, Headers: map[string]string{"check": "topic"}}); err != nil {
		return fmt.Errorf("publish to topic %s: %w", name, err)
	}
	for {
		m, err := sub.Receive(ctx)
		if errors.Is(err, adapters.ErrGap) {
			continue
		}
		if err != nil {
			return fmt.Errorf("receive from topic %s: %w", name, err)
		}
		if bytes.Equal(m.Body, body) {
			break
		}
	}
	fmt.Fprintf(w, "topic round trip (%s): ok in %s\n", name, time.Since(start).Round(time.Millisecond))

	// Queue round trip.
	start = time.Now()
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: name, Lease: checkLease(b.Capabilities())}); err != nil {
		return fmt.Errorf("declare queue %s: %w", name, err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.DeleteQueue(dctx, name); err != nil {
			fmt.Fprintf(w, "warning: delete queue %s: %v\n", name, err)
		}
	}()
	if err := b.Enqueue(ctx, name, adapters.Message{ID: "check-" + hex.EncodeToString(nonce), Body: body}); err != nil {
		return fmt.Errorf("enqueue on %s: %w", name, err)
	}
	c, err := b.Consume(ctx, name, adapters.ConsumeOptions{})
	if err != nil {
		return fmt.Errorf("consume %s: %w", name, err)
	}
	defer c.Close()
	d, err := c.Receive(ctx)
	if err != nil {
		return fmt.Errorf("receive from queue %s: %w", name, err)
	}
	if !bytes.Equal(d.Message().Body, body) {
		return fmt.Errorf("queue %s returned a different item (%d bytes) than enqueued", name, len(d.Message().Body))
	}
	if err := d.Ack(ctx); err != nil {
		return fmt.Errorf("ack on %s: %w", name, err)
	}
	fmt.Fprintf(w, "queue round trip (%s): ok in %s (attempt %d)\n", name, time.Since(start).Round(time.Millisecond), d.Attempt())

	printCapabilities(w, b.Capabilities())
	return nil
}

func checkLease(caps adapters.Capabilities) time.Duration {
	lease := 30 * time.Second
	if caps.MaxLease > 0 && lease > caps.MaxLease {
		lease = caps.MaxLease
	}
	if lease < caps.MinLease {
		lease = caps.MinLease
	}
	return lease
}

func printCapabilities(w io.Writer, c adapters.Capabilities) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "capabilities of %s:\n", c.Name)
	fmt.Fprintf(tw, "  lease extension\t%s\n", c.LeaseExtension)
	fmt.Fprintf(tw, "  delayed nack\t%s\n", c.DelayedNack)
	fmt.Fprintf(tw, "  dead-lettering\t%s\n", c.DeadLetter)
	fmt.Fprintf(tw, "  dedupe by ID\t%s\n", c.Dedupe)
	fmt.Fprintf(tw, "  ordering by key\t%s\n", c.Ordering)
	fmt.Fprintf(tw, "  survives restart\t%s\n", c.Restart)
	fmt.Fprintf(tw, "  queue counts\t%s\n", c.QueueStats)
	fmt.Fprintf(tw, "  adaptive prefetch\t%s\n", c.AdaptivePrefetch)
	fmt.Fprintf(tw, "  max message size\t%d bytes\n", c.MaxMessageSize)
	if c.MaxHeaders > 0 {
		fmt.Fprintf(tw, "  max headers\t%d\n", c.MaxHeaders)
	}
	fmt.Fprintf(tw, "  lease\t%s to %s\n", orAny(c.MinLease), orAny(c.MaxLease))
	if c.MaxDelay > 0 {
		fmt.Fprintf(tw, "  max nack delay\t%s\n", c.MaxDelay)
	}
	tw.Flush()
}

func orAny(d time.Duration) string {
	if d == 0 {
		return "any"
	}
	return d.String()
}
