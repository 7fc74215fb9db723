package flows

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// ReplayOptions bound a Replay's scan of the dead-letter queue.
type ReplayOptions struct {
	// Wait is how long to wait for the next dead letter before the scan
	// ends. Default 1s.
	Wait time.Duration
	// Max bounds the dead letters looked at. Default 1000.
	Max int
}

// Replay puts the dead-lettered items of execution id back on the flows
// queue, with fresh attempts, and returns how many. Retry does the same
// from the execution's record, without reading the dead-letter queue; an
// item of an execution retried since is dropped when it runs. It reads the queue's
// dead-letter queue, holding the items of other executions until it is
// done and then handing them back; an item leaves the dead-letter queue
// only once it is back on the queue. Fix the cause first: a replayed step
// that fails again is dead-lettered again.
func (e *Engine) Replay(ctx context.Context, id string, o ReplayOptions) (int, error) {
	if o.Wait <= 0 {
		o.Wait = time.Second
	}
	if o.Max <= 0 {
		o.Max = 1000
	}
	c, err := e.b.Consume(ctx, e.cfg.Queue, adapters.ConsumeOptions{DeadLetters: true})
	if err != nil {
		return 0, fmt.Errorf("flows: replay %s: read the dead letters: %w", id, err)
	}
	defer c.Close()
	var others []adapters.Delivery
	defer func() {
		bg := context.WithoutCancel(ctx)
		for _, d := range others {
			_ = d.Nack(bg, 0)
		}
	}()
	n, flow := 0, ""
	var errs []error
	for seen := 0; seen < o.Max; seen++ {
		rctx, cancel := context.WithTimeout(ctx, o.Wait)
		d, err := c.Receive(rctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil && rctx.Err() != nil {
				break // none for Wait: the scan is done
			}
			errs = append(errs, fmt.Errorf("receive a dead letter: %w", err))
			break
		}
		m := d.Message()
		var it item
		if decodeItem(m.Body, &it) != nil || it.Exec != id {
			others = append(others, d)
			continue
		}
		out := adapters.Message{Key: m.Key, Body: m.Body, Headers: maps.Clone(m.Headers)}
		maps.DeleteFunc(out.Headers, func(k, _ string) bool {
			return strings.HasPrefix(strings.ToLower(k), adapters.ReservedHeaderPrefix)
		})
		// A fresh ID: the broker's dedupe window would drop the old one.
		suffix := fmt.Sprintf("~replay-%d", e.opts.Clock.Now().UnixMilli())
		out.ID = m.ID[:min(len(m.ID), 128-len(suffix))] + suffix
		if err := e.b.Enqueue(ctx, e.cfg.Queue, out); err != nil {
			others = append(others, d)
			errs = append(errs, fmt.Errorf("put %s back (it stays dead-lettered): %w", m.ID, err))
			break
		}
		if err := d.Ack(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s is back on the queue but still dead-lettered too: %w", m.ID, err))
		}
		n, flow = n+1, it.Flow
		e.log.Info("flows: execution replayed", "flow", it.Flow, "execution", id, "step", it.Step, "seq", it.Seq,
			"dead_letter_reason", m.Headers[adapters.HeaderDeadLetterReason])
	}
	if n > 0 {
		e.rec.update(id, func(r *record) {
			if r.State == StateDeadLettered || r.State == StateFailed {
				r.State, r.Error, r.Ended, r.Node = StateRunning, "", time.Time{}, e.opts.NodeID
			}
			if r.Flow == "" {
				r.Flow = flow
			}
		})
	}
	if err := errors.Join(errs...); err != nil {
		return n, fmt.Errorf("flows: replay %s: %w", id, err)
	}
	if n == 0 {
		return 0, adapters.Errorf(adapters.ErrNotFound, "flows: replay", "no dead-lettered item of execution %q in queue %s", id, e.cfg.Queue)
	}
	return n, nil
}
