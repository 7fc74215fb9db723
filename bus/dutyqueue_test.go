package bus

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// TestDutyQueueOutcomes: on the duty queue, a failed run is retried until it
// succeeds (then the slot is done), a malformed item and an item for a duty
// no node registers are dead-lettered with their reasons, and none of them
// stops the lead from consuming.
func TestDutyQueueOutcomes(t *testing.T) {
	cfg := testConfig("duty-outcomes")
	c := newFakeCluster(t, cfg)
	a := c.add("a")
	var mu sync.Mutex
	calls := 0
	if err := a.RegisterDuty("flaky", "every 1h", func(ctx context.Context, term uint64) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls <= 2 {
			return errors.New("not yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	raw := c.srv.Client()
	t.Cleanup(func() { _ = raw.Close() })
	if err := raw.DeclareQueue(ctx, a.dutyQueueConfig()); err != nil {
		t.Fatal(err)
	}
	ghost, _ := encode("duty", cfg.Cluster, "a", dutyItem{Name: "ghost", Slot: DutySlot(c.clock.Now(), time.Hour)})
	ghost.ID = "duty:ghost:1"
	if err := raw.Enqueue(ctx, a.dutyQueueName(), ghost); err != nil {
		t.Fatal(err)
	}
	bad, _ := encode("duty", cfg.Cluster, "a", dutyItem{})
	bad.ID, bad.Body = "duty:bad:1", []byte("{not json")
	if err := raw.Enqueue(ctx, a.dutyQueueName(), bad); err != nil {
		t.Fatal(err)
	}
	slot := DutySlot(c.clock.Now(), time.Hour)
	c.until(30*time.Second, "flaky duty done after two failures", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.dutyDone["flaky"] >= slot
	})
	mu.Lock()
	if calls != 3 {
		t.Errorf("flaky duty ran %d times, want 3 (two failures, one success)", calls)
	}
	mu.Unlock()

	dl, err := raw.Consume(ctx, a.dutyQueueName(), adapters.ConsumeOptions{DeadLetters: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dl.Close()
	reasons := map[string]string{}
	c.until(60*time.Second, "ghost and malformed items dead-lettered", func() bool {
		rctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		d, err := dl.Receive(rctx)
		cancel()
		if err == nil {
			reasons[d.Message().ID] = d.Message().Headers[adapters.HeaderDeadLetterReason]
			_ = d.Ack(ctx)
		}
		return len(reasons) == 2
	})
	if r := reasons["duty:bad:1"]; !strings.Contains(r, "bus: duty item rejected: malformed") {
		t.Errorf("malformed item dead-letter reason %q", r)
	}
	if r := reasons["duty:ghost:1"]; !strings.Contains(r, `duty "ghost" is not registered`) || !strings.Contains(r, "attempt 5 of 5") {
		t.Errorf("unregistered duty item dead-letter reason %q", r)
	}
	if l, _ := a.IsLead(); !l {
		t.Error("a no longer leads")
	}
}

// TestDutyInterruptedByLeadLossRunsOnNextLead: a duty running when its node
// loses the lead is cancelled, and its item goes back to the queue at once
// (not after its lease) and runs on the next lead.
func TestDutyInterruptedByLeadLossRunsOnNextLead(t *testing.T) {
	cfg := testConfig("duty-interrupt")
	c := newFakeCluster(t, cfg)
	type run struct {
		node        string
		slot        int64
		interrupted bool
	}
	var mu sync.Mutex
	var runs []run
	started := make(chan struct{}, 1)
	reg := func(n *fakeNode, block bool) {
		if err := n.RegisterDuty("long", "every 1h", func(ctx context.Context, term uint64) error {
			r := run{node: n.ID(), slot: DutySlot(c.clock.Now(), time.Hour)}
			if block {
				select {
				case started <- struct{}{}:
				default:
				}
				<-ctx.Done()
				r.interrupted = true
			}
			mu.Lock()
			runs = append(runs, r)
			mu.Unlock()
			return ctx.Err()
		}); err != nil {
			t.Fatal(err)
		}
	}
	a := c.add("a")
	reg(a, true)
	c.step()
	b := c.add("b")
	reg(b, false)
	c.until(testFT+3*testHB, "a leads", func() bool { return c.agreeOn("a") })
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the duty did not start on a")
	}
	a.Drain()
	lease := a.dutyLease()
	took := c.until(lease, "the interrupted slot runs on b", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range runs {
			if r.node == "b" {
				return true
			}
		}
		return false
	})
	mu.Lock()
	defer mu.Unlock()
	if len(runs) != 2 || runs[0].node != "a" || !runs[0].interrupted || runs[1].node != "b" || runs[1].interrupted || runs[0].slot != runs[1].slot {
		t.Fatalf("runs %+v; want a interrupted, then b on the same slot", runs)
	}
	t.Logf("slot ran on b %s (fake time) after a drained; lease %s", took, lease)
}
