package rabbitmq

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// Concurrent Enqueues share confirm channels: each must get its own
// outcome. Half go to a declared queue and half to one never declared,
// interleaved from many goroutines, so returns (unroutable) and confirms of
// stored items cross on the same channels; half of each go through
// EnqueueAsync, all sent before the first Pending is waited for. Every
// enqueue to the missing queue is ErrNotFound, every other one succeeds, and
// the declared queue holds exactly the items that succeeded.
func TestConcurrentEnqueuesGetTheirOwnOutcome(t *testing.T) {
	requireBroker(t)
	b := openTest(t, testURL())
	q := declareTest(t, b, adapters.QueueConfig{})
	missing := uniqueName("never")
	const n, workers = 400, 32
	var wg sync.WaitGroup
	errs := make([]error, n)
	pending := make([]adapters.Pending, n) // every other pair goes through EnqueueAsync
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				to := q.Name
				if i%2 == 1 {
					to = missing
				}
				m := adapters.Message{ID: fmt.Sprint(i), Body: []byte("x")}
				if i%4 < 2 {
					errs[i] = b.Enqueue(testCtx(t), to, m)
					continue
				}
				if pending[i], errs[i] = b.EnqueueAsync(testCtx(t), to, m); errs[i] != nil {
					pending[i] = nil
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	for i, p := range pending { // every send is out before the first Wait
		if p != nil {
			errs[i] = p.Wait(testCtx(t))
		}
	}
	for i, err := range errs {
		if i%2 == 1 && !errors.Is(err, adapters.ErrNotFound) {
			t.Errorf("enqueue %d to the undeclared queue: %v, want ErrNotFound", i, err)
		}
		if i%2 == 0 && err != nil {
			t.Errorf("enqueue %d to the declared queue: %v", i, err)
		}
	}
	c, err := b.Consume(testCtx(t), q.Name, adapters.ConsumeOptions{Prefetch: 50})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	seen := map[string]bool{}
	for len(seen) < n/2 {
		d := receive(t, c, 10*time.Second)
		id := d.Message().ID
		if seen[id] {
			t.Fatalf("item %s delivered twice", id)
		}
		var i int
		if _, err := fmt.Sscan(id, &i); err != nil || i%2 != 0 {
			t.Fatalf("unexpected item %q in the declared queue", id)
		}
		seen[id] = true
		if err := d.Ack(testCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	if b.confirmerCount() < 1 {
		t.Fatal("no shared confirm channel was used")
	}
}

// confirmerCount is the number of confirmers in the pool (for tests).
func (b *Broker) confirmerCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.confirmers)
}
