package bus

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// DutyFunc is a lead duty. ctx is cancelled when the lead is lost; term is
// the fencing token of the lead term it runs under. Pass the token to any
// shared resource that can reject writes from an older term.
type DutyFunc func(ctx context.Context, term uint64) error

type duty struct {
	name  string
	every time.Duration // 0: once per lead term
	fn    DutyFunc
}

// RegisterDuty registers a lead duty. schedule is "" (run once each time
// this node gains the lead, retried with backoff while it returns an error)
// or "every <duration>" such as "every 1m" (run once per slot; see the
// package doc for the guarantee). Register duties before Start; a duty
// registered later starts with the next lead term.
func (n *Node) RegisterDuty(name, schedule string, fn DutyFunc) error {
	if err := adapters.ValidateName("duty", name); err != nil {
		return fmt.Errorf("bus: register duty: %w", err)
	}
	every, err := ParseSchedule(schedule)
	if err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, dup := n.duties[name]; dup {
		return adapters.Errorf(adapters.ErrInvalidArgument, "bus: register duty", "duty %q registered twice", name)
	}
	n.duties[name] = &duty{name: name, every: every, fn: fn}
	return nil
}

// ParseSchedule parses "" (no schedule) or "every <duration>" (at least
// one second).
func ParseSchedule(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, nil
	}
	rest, ok := strings.CutPrefix(s, "every ")
	if !ok {
		rest, ok = strings.CutPrefix(s, "@every ")
	}
	d, err := time.ParseDuration(strings.TrimSpace(rest))
	if !ok || err != nil || d < time.Second {
		return 0, adapters.Errorf(adapters.ErrInvalidArgument, "bus: schedule",
			"%q: want \"\" or \"every <duration>\" of at least 1s, such as \"every 1m\"", s)
	}
	return d, nil
}

func (n *Node) dutyListLocked() []*duty {
	out := make([]*duty, 0, len(n.duties))
	for _, d := range n.duties {
		out = append(out, d)
	}
	return out
}

// DutySlot is the slot a scheduled duty's run at t belongs to: slots are
// [k·every, (k+1)·every) of Unix time.
func DutySlot(t time.Time, every time.Duration) int64 { return t.UnixNano() / int64(every) }

// runDuty runs one duty for one lead term, until ctx is cancelled.
func (n *Node) runDuty(ctx context.Context, d *duty, term uint64) {
	log := n.log.With("duty", d.name, "term", term)
	backoff := func(i int) time.Duration {
		b := n.cfg.HeartbeatInterval << min(i, 6)
		return min(b, 30*time.Second)
	}
	call := func(int64) error { return n.callDuty(ctx, d, term) }
	if d.every == 0 {
		for i := 0; ; i++ {
			err := call(0)
			if err == nil || ctx.Err() != nil {
				if err != nil {
					log.Info("duty stopped with the lead", "err", err)
				}
				return
			}
			log.Warn("duty failed; retrying", "err", err, "attempt", i+1)
			select {
			case <-ctx.Done():
				return
			case <-n.clock.After(backoff(i)):
			}
		}
	}
	if n.dutyQueueMode() {
		n.scheduleDuty(ctx, d, log)
		return
	}
	for {
		now := n.clock.Now()
		slot := DutySlot(now, d.every)
		n.mu.Lock()
		done := n.dutyDone[d.name] >= slot
		n.mu.Unlock()
		if !done {
			for i := 0; ; i++ {
				err := call(slot)
				if ctx.Err() != nil {
					return // lead lost mid-run: the slot is not marked done
				}
				if err == nil {
					n.mu.Lock()
					if slot > n.dutyDone[d.name] {
						n.dutyDone[d.name] = slot
					}
					n.mu.Unlock()
					log.Debug("duty slot done", "slot", slot)
					n.publishHeartbeat() // tell the others at once
					break
				}
				log.Warn("duty failed; retrying within its slot", "err", err, "attempt", i+1, "slot", slot)
				if DutySlot(n.clock.Now(), d.every) != slot {
					break // the slot is over; the next one starts fresh
				}
				select {
				case <-ctx.Done():
					return
				case <-n.clock.After(backoff(i)):
				}
			}
		}
		next := time.Unix(0, (slot+1)*int64(d.every))
		select {
		case <-ctx.Done():
			return
		case <-n.clock.After(n.clock.Until(next)):
		}
	}
}
