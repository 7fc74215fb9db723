package bus

import (
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// Scheduled duties on a broker that drops duplicate message IDs run through
// a leased queue: the lead enqueues each slot as the item "duty:NAME:SLOT"
// on the queue "clusterbus-<cluster>-duties" (declared Dedupe), and the lead
// alone consumes that queue, running each item under its lease. A second
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
// broker's bounds. Runs longer than that are extended while they last.
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

func (n *Node) declareDutyQueue(ctx context.Context) error {
	return n.b.DeclareQueue(ctx, adapters.QueueConfig{
		Name: n.dutyQueueName(), Lease: n.dutyLease(), MaxAttempts: 5, Dedupe: true,
	})
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

// consumeDuties runs the duty queue's items while ctx (the lead term) lasts.
func (n *Node) consumeDuties(ctx context.Context, term uint64) {
	log := n.log.With("term", term, "queue", n.dutyQueueName())
	var con adapters.Consumer
	for con == nil {
		err := n.declareDutyQueue(ctx)
		if err == nil {
			con, err = n.b.Consume(ctx, n.dutyQueueName(), adapters.ConsumeOptions{Prefetch: 1})
		}
		if err != nil {
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
	}
	defer con.Close()
	for {
		dl, err := con.Receive(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, adapters.ErrClosed) {
				return
			}
			log.Warn("duty queue receive failed", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-n.clock.After(n.cfg.HeartbeatInterval):
			}
			continue
		}
		n.runDutyItem(ctx, dl, term, log)
	}
}

func (n *Node) runDutyItem(ctx context.Context, dl adapters.Delivery, term uint64, log *slog.Logger) {
	bg := context.WithoutCancel(ctx)
	msg := dl.Message()
	_, _, rej := checkHeaders(n.cfg.Cluster, msg)
	var it dutyItem
	if rej == "" {
		if err := json.Unmarshal(msg.Body, &it); err != nil {
			rej = rejectMalformed
		}
	}
	if rej != "" {
		n.m.rejected.WithLabelValues(rej).Inc()
		log.Warn("duty item rejected", "reason", rej, "id", msg.ID)
		_ = dl.DeadLetter(bg, "bus: duty item rejected: "+rej)
		return
	}
	n.mu.Lock()
	d := n.duties[it.Name]
	done := n.dutyDone[it.Name] >= it.Slot
	n.mu.Unlock()
	switch {
	case d == nil:
		// Registered on another version of the application, perhaps.
		log.Warn("duty item for a duty not registered here; returned to the queue", "duty", it.Name)
		_ = dl.Nack(bg, 0)
		return
	case done:
		log.Debug("duty slot already done", "duty", it.Name, "slot", it.Slot)
		_ = dl.Ack(bg)
		return
	case it.Slot < DutySlot(n.clock.Now(), d.every)-1:
		log.Info("duty slot is stale; skipped", "duty", it.Name, "slot", it.Slot)
		_ = dl.Ack(bg)
		return
	}
	// Keep the lease while the duty runs.
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	if n.b.Capabilities().LeaseExtension.Available() {
		lease := n.dutyLease()
		go func() {
			for {
				select {
				case <-runCtx.Done():
					return
				case <-n.clock.After(lease / 3):
				}
				if err := dl.Extend(runCtx, lease); err != nil && runCtx.Err() == nil {
					log.Warn("duty lease extension failed", "duty", it.Name, "err", err)
				}
			}
		}()
	}
	err := n.callDuty(runCtx, d, term)
	stop()
	if ctx.Err() != nil {
		// Lead lost mid-run: the item goes back to the queue (consumer
		// closed) and the next lead runs the slot again.
		log.Info("duty interrupted by the loss of the lead", "duty", it.Name, "slot", it.Slot)
		return
	}
	if err != nil {
		delay := min(n.cfg.HeartbeatInterval<<min(dl.Attempt(), 6), 30*time.Second)
		log.Warn("duty failed; retrying", "duty", it.Name, "slot", it.Slot, "attempt", dl.Attempt(), "err", err)
		if caps := n.b.Capabilities(); !caps.DelayedNack.Available() {
			delay = 0
		}
		_ = dl.Nack(bg, delay)
		return
	}
	if err := dl.Ack(bg); err != nil {
		log.Warn("duty ack failed; the slot may run again", "duty", it.Name, "slot", it.Slot, "err", err)
	}
	n.markDutyDone(it.Name, it.Slot)
	log.Debug("duty slot done", "duty", it.Name, "slot", it.Slot)
	n.publishHeartbeat()
}
