package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/clusterbus/clusterbus/adapters"
)

func init() {
	var brokerURL string
	var limit int
	var wait time.Duration
	queueCmd := &cobra.Command{Use: "queue", Short: "Work queues on a broker"}
	replayCmd := &cobra.Command{
		Use:   "replay QUEUE --broker URL",
		Short: "Move dead-lettered items of QUEUE back onto it, printing each with its reason",
		Long: `replay reads QUEUE's dead-letter queue and puts each item back on QUEUE with its body, key and
headers, a fresh message ID (the old ID with a ~replay suffix, so a broker's dedupe window does
not drop it) and a fresh attempt count; it prints the ID and the dead-letter reason of each.
An item leaves the dead-letter queue only after it is back on QUEUE, so an interrupted replay
loses nothing (an item may then be on both). It stops after --max items, or when no dead
letter has arrived for --wait. Fix the cause first: a replayed item that fails again is
dead-lettered again.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if brokerURL == "" {
				return &exitError{code: 2, err: errors.New("queue replay: --broker is required, e.g. --broker nats://127.0.0.1:14222")}
			}
			if limit < 0 || wait <= 0 {
				return &exitError{code: 2, err: fmt.Errorf("queue replay: --max %d, --wait %s: want --max >= 0 (0: all) and --wait > 0", limit, wait)}
			}
			n, err := runReplay(cmd.Context(), cmd.OutOrStdout(), brokerURL, args[0], limit, wait)
			fmt.Fprintf(cmd.OutOrStdout(), "%d items replayed onto %s\n", n, args[0])
			if err != nil {
				return &exitError{code: 1, err: fmt.Errorf("queue replay %s: %w", args[0], err)}
			}
			return nil
		},
	}
	f := replayCmd.Flags()
	f.StringVar(&brokerURL, "broker", "", "broker URL ("+schemeList()+")")
	f.IntVar(&limit, "max", 0, "replay at most this many items (0: all)")
	f.DurationVar(&wait, "wait", 5*time.Second, "stop when no dead letter arrives for this long")
	queueCmd.AddCommand(replayCmd)
	rootCmd.AddCommand(queueCmd)
}

// runReplay moves dead letters of queue back onto it; it returns how many.
func runReplay(ctx context.Context, w io.Writer, brokerURL, queue string, limit int, wait time.Duration) (int, error) {
	b, err := adapters.Open(ctx, brokerURL)
	if err != nil {
		return 0, fmt.Errorf("connect: %w", err)
	}
	defer b.Close()
	c, err := b.Consume(ctx, queue, adapters.ConsumeOptions{DeadLetters: true})
	if err != nil {
		return 0, fmt.Errorf("read the dead letters: %w", err)
	}
	defer c.Close()
	n := 0
	for limit == 0 || n < limit {
		rctx, cancel := context.WithTimeout(ctx, wait)
		d, err := c.Receive(rctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil && rctx.Err() != nil {
				return n, nil // none for --wait: done
			}
			return n, fmt.Errorf("receive a dead letter: %w", err)
		}
		m := d.Message()
		reason := m.Headers[adapters.HeaderDeadLetterReason]
		out := adapters.Message{Key: m.Key, Body: m.Body, Headers: maps.Clone(m.Headers)}
		maps.DeleteFunc(out.Headers, func(k, _ string) bool {
			return strings.HasPrefix(strings.ToLower(k), adapters.ReservedHeaderPrefix)
		})
		if m.ID != "" {
			suffix := fmt.Sprintf("~replay-%d", time.Now().UnixMilli())
			out.ID = m.ID[:min(len(m.ID), 128-len(suffix))] + suffix // IDs are at most 128 bytes
		}
		if err := b.Enqueue(ctx, queue, out); err != nil {
			_ = d.Nack(context.WithoutCancel(ctx), 0)
			return n, fmt.Errorf("put %q back (it stays dead-lettered): %w", m.ID, err)
		}
		if err := d.Ack(ctx); err != nil {
			return n, fmt.Errorf("%q is back on the queue but still dead-lettered too: %w", m.ID, err)
		}
		n++
		fmt.Fprintf(w, "replayed %s as %s (dead-lettered: %s)\n", m.ID, out.ID, reason)
	}
	return n, nil
}
