package bus

import (
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/workqueue"
)

// Scheduled duties on a broker that drops duplicate message IDs run through
// a leased queue: the lead enqueues each slot as the item "duty:NAME:SLOT"
// on the queue "clusterbus-<cluster>-duties" (declared Dedupe), and the lead
// alone consumes that queue with a workqueue.Worker, running each item under
// its lease (kept by leasing while the duty runs). A second
// enqueue of the same slot (by a new lead, or by two leads on both sides of
// a partition) is dropped by the broker within its dedupe window, and an
// item whose lead died mid-run comes back when its lease expires and runs on
// the next lead.

// dutyItem is the body of a duty queue item.
type dutyItem struct {
	Name string `json:"name"`
	Slot int64  `json:"slot"`
	Term uint64 `json:"term"`
}

func (n *Node) dutyQueueName() string { return "clusterbus-" + n.cfg.Cluster + "-duties" }

// dutyQueueMode: scheduled duties go through the queue when the broker
// deduplicates IDs.
func (n *Node) dutyQueueMode() bool { return n.b.Capabilities().Dedupe.Available() }

// dutyLease is the duty queue's lease: ten failure timeouts, within the
// broker's bounds. The worker renews it while a run lasts.
func (n *Node) dutyLease() time.Duration {
	caps := n.b.Capabilities()
	l := 10 * n.cfg.FailureTimeout
	if caps.MinLease > 0 && l < caps.MinLease {
		l = caps.MinLease
	}
	if caps.MaxLease > 0 && l > caps.MaxLease {
		l = caps.MaxLease
	}
	return l
}

func (n *Node) dutyQueueConfig() adapters.QueueConfig {
	return adapters.QueueConfig{Name: n.dutyQueueName(), Lease: n.dutyLease(), MaxAttempts: 5, Dedupe: true}
}

// callDuty runs d once, turning a panic into an error, and notes the run
// for the status.
func (n *Node) callDuty(ctx context.Context, d *duty, term uint64) (err error) {
	began := n.clock.Now()
	ctx, span := otel.Tracer("github.com/clusterbus/clusterbus/bus").Start(ctx, "duty "+d.name, trace.WithAttributes(
		attribute.String("clusterbus.duty", d.name), attribute.Int64("clusterbus.term", int64(term)),
		attribute.String("clusterbus.node", n.cfg.NodeID)))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("bus: duty %q panicked: %v", d.name, r)
		}
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
		n.recordDutyRun(d.name, term, began, err, ctx.Err() != nil)
	}()
	return d.fn(ctx, term)
}

func (n *Node) markDutyDone(name string, slot int64) {
	n.mu.Lock()
	if slot > n.dutyDone[name] {
		n.dutyDone[name] = slot
	}
	n.mu.Unlock()
}

// scheduleDuty enqueues each slot of d while ctx (the lead term) lasts.
// Slots already known done are not enqueued.
func (n *Node) scheduleDuty(ctx context.Context, d *duty, log *slog.Logger) {
	var last int64
	for {
		slot := DutySlot(n.clock.Now(), d.every)
		n.mu.Lock()
		done := n.dutyDone[d.name] >= slot
		term := n.term
		n.mu.Unlock()
		if slot > last && !done {
			msg, err := encode("duty", n.cfg.Cluster, n.cfg.NodeID, dutyItem{Name: d.name, Slot: slot, Term: term})
			if err == nil {
				msg.ID = fmt.Sprintf("duty:%s:%d", d.name, slot)
				err = n.b.Enqueue(ctx, n.dutyQueueName(), msg)
			}
			if err == nil {
				last = slot
			} else if ctx.Err() == nil {
				log.Warn("enqueue duty slot failed; retrying", "slot", slot, "err", err)
				select {
				case <-ctx.Done():
					return
				case <-n.clock.After(n.cfg.HeartbeatInterval):
				}
				continue
			}
		} else {
			last = max(last, slot)
		}
		next := time.Unix(0, (slot+1)*int64(d.every))
		select {
		case <-ctx.Done():
			return
		case <-n.clock.After(n.clock.Until(next)):
		}
	}
}

// consumeDuties runs the duty queue's items while ctx (the lead term) lasts,
// through a workqueue.Worker (one handler, lease kept by leasing while the
// duty runs, retries and dead-letters by workqueue). The worker is made per
// term and stopped when the term ends, which hands an interrupted item back
// to the queue for the next lead.
func (n *Node) consumeDuties(ctx context.Context, term uint64) {
	wlog := n.log.With("term", term) // the worker adds the queue
	log := wlog.With("queue", n.dutyQueueName())
	w, err := workqueue.New(n.b, workqueue.Config{
		Queue:       n.dutyQueueConfig(),
		Concurrency: 1,
		Retry:       workqueue.Backoff{Initial: n.cfg.HeartbeatInterval, Max: 30 * time.Second, Multiplier: 2},
	}, func(hctx context.Context, job *workqueue.Job) error {
		return n.runDutyItem(ctx, hctx, job, term, log)
	}, workqueue.Options{Clock: n.clock, Logger: wlog, Metrics: n.wqm})
	if err != nil {
		log.Error("duty queue worker not created; scheduled duties do not run this term", "err", err)
		return
	}
	for {
		err := w.Start(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		log.Warn("duty queue unavailable; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-n.clock.After(n.cfg.HeartbeatInterval):
		}
	}
	<-ctx.Done()
	// Lead lost: cancel a running duty at once and hand its item back.
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Stop(sctx); err != nil {
		log.Warn("duty queue worker did not stop cleanly", "err", err)
	}
}

// runDutyItem is the duty queue's handler. lead is the lead term's context,
// ctx the item's (cancelled when the lease is lost or the worker stops).
// Its error is workqueue's outcome: Permanent for a rejected item
// (dead-lettered with the reason), RetryAfter for a duty not registered
// here, a plain error for a failed run (retried with backoff).
func (n *Node) runDutyItem(lead, ctx context.Context, job *workqueue.Job, term uint64, log *slog.Logger) error {
	msg := job.Message
	_, _, rej := checkHeaders(n.cfg.Cluster, msg)
	var it dutyItem
	if rej == "" {
		if err := json.Unmarshal(msg.Body, &it); err != nil {
			rej = rejectMalformed
		}
	}
	if rej != "" {
		n.m.rejected.WithLabelValues(rej).Inc()
		return workqueue.Permanent(fmt.Errorf("bus: duty item rejected: %s", rej))
	}
	n.mu.Lock()
	d := n.duties[it.Name]
	done := n.dutyDone[it.Name] >= it.Slot
	n.mu.Unlock()
	switch {
	case d == nil:
		// Registered on another version of the application, perhaps.
		return workqueue.RetryAfter(n.cfg.HeartbeatInterval, fmt.Errorf("bus: duty %q is not registered on this node", it.Name))
	case done:
		log.Debug("duty slot already done", "duty", it.Name, "slot", it.Slot)
		return nil
	case it.Slot < DutySlot(n.clock.Now(), d.every)-1:
		log.Info("duty slot is stale; skipped", "duty", it.Name, "slot", it.Slot)
		return nil
	}
	err := n.callDuty(ctx, d, term)
	if lead.Err() != nil {
		// Lead lost mid-run: wait for the worker's stop (consumeDuties
		// calls it when lead ends) so the item is handed back, not acked
		// or retried; the next lead runs the slot again.
		log.Info("duty interrupted by the loss of the lead", "duty", it.Name, "slot", it.Slot)
		<-ctx.Done()
		return fmt.Errorf("bus: lead lost while duty %q ran: %w", it.Name, context.Cause(ctx))
	}
	if err != nil {
		log.Warn("duty failed; retrying", "duty", it.Name, "slot", it.Slot, "attempt", job.Attempt, "err", err)
		return err
	}
	n.markDutyDone(it.Name, it.Slot)
	log.Debug("duty slot done", "duty", it.Name, "slot", it.Slot)
	n.publishHeartbeat()
	return nil
}
