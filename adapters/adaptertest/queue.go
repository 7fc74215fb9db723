package adaptertest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

func (s *suite) queueCases() []testCase {
	return []testCase{
		{"LeasedItemHeldByOneConsumer", s.testHeldByOneConsumer},
		{"UnackedItemReturnsAfterLease", s.testUnackedReturns},
		{"ExtendKeepsItemFromReturning", s.testExtendKeeps},
		{"NackDelayReturnsNoEarlier", s.testNackDelay},
		{"NackZeroReturnsPromptly", s.testNackZero},
		{"AckedItemNeverReturns", s.testAckedNeverReturns},
		{"AckedBeforeCloseStaysAcked", s.testAckedBeforeClose},
		{"ConcurrentOperationsOnOneDelivery", s.testConcurrentOperations},
		{"EnqueueBatchStoresEveryItem", s.testEnqueueBatch},
		{"EnqueueAsyncStoresEveryItem", s.testEnqueueAsync},
		{"ConcurrentConsumersAckEachItemOnce", s.testConcurrentConsumers(1000, adapters.ConsumeOptions{})},
		// An adapter that resizes what it fetches ahead (NATS) does so
		// here, from 1 item up, while every item is taken at once.
		{"AdaptivePrefetchAcksEachItemOnce", s.testAdaptivePrefetch},
		{"HeadersAndBinaryBodyRoundTrip", s.testQueueRoundTrip},
		{"DuplicateIDsDropped", s.testDedupe},
		{"OrderedByKey", s.testOrdered},
		{"DeclareTwiceSameConfig", s.testDeclareTwice},
		{"ClosedConsumerReleasesItems", s.testClosedConsumerReleases},
		{"ClosedConsumerReceiveIsClosed", s.testClosedConsumer},
	}
}

// While one consumer holds an item under its lease, a consumer on another
// client does not receive it.
func (s *suite) testHeldByOneConsumer(t *testing.T) {
	b1, b2 := s.open(t), s.open(t)
	q := s.declare(t, b1, adapters.QueueConfig{Lease: s.queueLease(2 * s.lease)})
	c1 := s.consume(t, b1, q.Name, adapters.ConsumeOptions{})
	c2 := s.consume(t, b2, q.Name, adapters.ConsumeOptions{})
	s.enqueue(t, b1, q.Name, adapters.Message{ID: "only", Body: []byte("x")})
	// Whichever consumer gets it, the other must not while it is held.
	type got struct {
		d   adapters.Delivery
		err error
		who int
	}
	ch := make(chan got, 2)
	ctx, cancel := context.WithTimeout(context.Background(), s.wait)
	defer cancel()
	for i, c := range []adapters.Consumer{c1, c2} {
		go func() {
			d, err := c.Receive(ctx)
			ch <- got{d, err, i + 1}
		}()
	}
	first := <-ch
	if first.err != nil {
		t.Fatalf("consumer %d: Receive: %v", first.who, first.err)
	}
	// Hold for half the lease, measured from the lease deadline the
	// adapter reports, so a slow Receive does not count against the broker.
	holdUntil := first.d.LeaseDeadline().Add(-q.Lease / 2)
	select {
	case second := <-ch:
		if second.err == nil {
			t.Fatalf("consumer %d received %q (attempt %d) while consumer %d held it",
				second.who, second.d.Message().ID, second.d.Attempt(), first.who)
		}
		t.Fatalf("consumer %d: Receive: %v", second.who, second.err)
	case <-time.After(time.Until(holdUntil)):
	}
	s.ack(t, first.d)
	cancel()
	if second := <-ch; second.err == nil {
		t.Errorf("consumer %d received %q (attempt %d) after it was acked", second.who, second.d.Message().ID, second.d.Attempt())
	}
}

// An item that is not settled comes back after its lease, to another
// consumer, with the attempt count increased and the message unchanged; the
// first holder's late Ack then fails with ErrLeaseLost.
func (s *suite) testUnackedReturns(t *testing.T) {
	b1, b2 := s.open(t), s.open(t)
	q := s.declare(t, b1, adapters.QueueConfig{})
	c1 := s.consume(t, b1, q.Name, adapters.ConsumeOptions{})
	want := richMessage()
	s.enqueue(t, b1, q.Name, want)
	d1 := s.receive(t, c1, "first delivery")
	received := time.Now()
	if d1.Attempt() != 1 {
		t.Errorf("first delivery: Attempt %d, want 1", d1.Attempt())
	}
	c2 := s.consume(t, b2, q.Name, adapters.ConsumeOptions{})
	d2 := s.receive(t, c2, "redelivery after the lease")
	if el := time.Since(received); el < q.Lease/2 {
		t.Errorf("item came back %s after it was received, lease %s", el, q.Lease)
	}
	if d2.Attempt() != 2 {
		t.Errorf("redelivery: Attempt %d, want 2", d2.Attempt())
	}
	if d := diffMessage(d2.Message(), want); d != "" {
		t.Errorf("redelivered message changed: %s", d)
	}
	if err := d1.Ack(s.ctx(t)); !errors.Is(err, adapters.ErrLeaseLost) {
		t.Errorf("Ack by the first holder after its lease expired and the item was redelivered: %v, want ErrLeaseLost", err)
	}
	s.ack(t, d2)
	s.expectNone(t, c1, s.lease+s.lease/2, "after the redelivery was acked")
}

// Extending the lease again and again keeps the item from any other
// consumer across more than two lease periods; the holder can then ack it.
func (s *suite) testExtendKeeps(t *testing.T) {
	s.skipUnless(t, "LeaseExtension", s.caps.LeaseExtension)
	b1, b2 := s.open(t), s.open(t)
	q := s.declare(t, b1, adapters.QueueConfig{})
	c1 := s.consume(t, b1, q.Name, adapters.ConsumeOptions{})
	c2 := s.consume(t, b2, q.Name, adapters.ConsumeOptions{})
	s.enqueue(t, b1, q.Name, adapters.Message{ID: "extended"})
	d := s.receive(t, c1, "first delivery")
	// Another consumer keeps trying while the holder extends.
	stolen := make(chan adapters.Delivery, 1)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if d2, err := c2.Receive(ctx); err == nil {
			stolen <- d2
		}
	}()
	end := time.Now().Add(2*q.Lease + q.Lease/2)
	extends := 0
	for time.Now().Before(end) {
		select {
		case d2 := <-stolen:
			cancel()
			wg.Wait()
			t.Fatalf("after %d extends, another consumer received %q (attempt %d) while the holder kept extending", extends, d2.Message().ID, d2.Attempt())
		case <-time.After(q.Lease / 3):
		}
		if err := d.Extend(s.ctx(t), q.Lease); err != nil {
			cancel()
			wg.Wait()
			t.Fatalf("Extend #%d: %v", extends+1, err)
		}
		extends++
		if dl := d.LeaseDeadline(); time.Until(dl) < q.Lease/2 {
			t.Errorf("after Extend(%s), LeaseDeadline is only %s away", q.Lease, time.Until(dl))
		}
	}
	s.ack(t, d)
	cancel()
	wg.Wait()
	select {
	case d2 := <-stolen:
		t.Errorf("another consumer received %q (attempt %d) around the Ack", d2.Message().ID, d2.Attempt())
	default:
	}
	t.Logf("held across %s with %d extends", 2*q.Lease+q.Lease/2, extends)
}

// Nack(delay) returns the item as a new attempt, not before the delay.
func (s *suite) testNackDelay(t *testing.T) {
	s.skipUnless(t, "DelayedNack", s.caps.DelayedNack)
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{})
	c := s.consume(t, b, q.Name, adapters.ConsumeOptions{})
	s.enqueue(t, b, q.Name, adapters.Message{ID: "delayed"})
	d := s.receive(t, c, "first delivery")
	delay := 2 * s.lease
	if s.caps.MaxDelay > 0 && delay > s.caps.MaxDelay {
		delay = s.caps.MaxDelay
	}
	start := time.Now()
	if err := d.Nack(s.ctx(t), delay); err != nil {
		t.Fatalf("Nack(%s): %v", delay, err)
	}
	d2 := s.receive(t, c, "delivery after the delay")
	// A small tolerance for clocks that tick differently from ours.
	if el := time.Since(start); el < delay-50*time.Millisecond {
		t.Errorf("item came back %s after Nack(%s)", el, delay)
	} else {
		t.Logf("came back %s after Nack(%s)", el, delay)
	}
	if d2.Attempt() != 2 {
		t.Errorf("after Nack: Attempt %d, want 2", d2.Attempt())
	}
	s.ack(t, d2)
}

// Nack(0) returns the item at once: well before the lease it was held under
// would have expired.
func (s *suite) testNackZero(t *testing.T) {
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{Lease: s.queueLease(4 * s.lease)})
	c := s.consume(t, b, q.Name, adapters.ConsumeOptions{})
	s.enqueue(t, b, q.Name, adapters.Message{ID: "nacked"})
	d := s.receive(t, c, "first delivery")
	deadline := d.LeaseDeadline()
	start := time.Now()
	if err := d.Nack(s.ctx(t), 0); err != nil {
		t.Fatalf("Nack(0): %v", err)
	}
	d2, err := tryReceive(c, time.Until(deadline))
	if err != nil {
		t.Fatalf("no redelivery before the first lease would have expired (%s): %v", q.Lease, err)
	}
	t.Logf("came back %s after Nack(0)", time.Since(start))
	if d2.Attempt() != 2 {
		t.Errorf("after Nack(0): Attempt %d, want 2", d2.Attempt())
	}
	s.ack(t, d2)
}

// An acked item never comes back, checked across three lease periods.
func (s *suite) testAckedNeverReturns(t *testing.T) {
	b1, b2 := s.open(t), s.open(t)
	q := s.declare(t, b1, adapters.QueueConfig{})
	c1 := s.consume(t, b1, q.Name, adapters.ConsumeOptions{})
	c2 := s.consume(t, b2, q.Name, adapters.ConsumeOptions{})
	s.enqueue(t, b1, q.Name, adapters.Message{ID: "acked"})
	d := s.receive(t, c1, "first delivery")
	s.ack(t, d)
	var wg sync.WaitGroup
	for i, c := range []adapters.Consumer{c1, c2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.expectNone(t, c, 3*q.Lease, fmt.Sprintf("consumer %d after Ack", i+1))
		}()
	}
	wg.Wait()
}

// Items acked just before Broker.Close stay acked: an Ack that returned nil
// may have been sent without waiting for the broker, but Close returns only
// once such acks reached it (see adapters.Delivery.Ack), so a new client
// receives none of them, checked across one and a half leases.
func (s *suite) testAckedBeforeClose(t *testing.T) {
	const n = 20
	b1 := s.open(t)
	q := s.declare(t, b1, adapters.QueueConfig{})
	for i := range n {
		s.enqueue(t, b1, q.Name, adapters.Message{ID: fmt.Sprintf("acked-%02d", i)})
	}
	c1 := s.consume(t, b1, q.Name, adapters.ConsumeOptions{Prefetch: n})
	for i := range n {
		s.ack(t, s.receive(t, c1, fmt.Sprintf("item %d of %d", i+1, n)))
	}
	if err := b1.Close(); err != nil {
		t.Fatalf("Close right after the acks: %v", err)
	}
	c2 := s.consume(t, s.open(t), q.Name, adapters.ConsumeOptions{})
	s.expectNone(t, c2, q.Lease+q.Lease/2, "a new client after the acks and Close")
}

// Operations on one delivery may be called concurrently and run one at a
// time: an Ack racing an Extend of the same delivery succeeds whichever goes
// first (the Extend then succeeds too, or finds the item settled:
// ErrLeaseLost; skipped where LeaseExtension is unsupported); of two racing
// Acks exactly one succeeds and the other is
// ErrLeaseLost; and every acked item stays acked.
func (s *suite) testConcurrentOperations(t *testing.T) {
	const n = 5
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{Lease: s.queueLease(2 * s.lease)})
	for i := range 2 * n {
		s.enqueue(t, b, q.Name, adapters.Message{ID: fmt.Sprintf("race-%02d", i), Body: []byte("x")})
	}
	c := s.consume(t, b, q.Name, adapters.ConsumeOptions{})
	for i := range n {
		d := s.receive(t, c, fmt.Sprintf("item %d for Extend and Ack", i+1))
		if !s.caps.LeaseExtension.Available() {
			// No Extend to race: the item is acked on its own.
			s.ack(t, d)
			continue
		}
		errs := make(chan error, 1)
		go func() { errs <- d.Extend(s.ctx(t), q.Lease) }()
		if err := d.Ack(s.ctx(t)); err != nil {
			t.Fatalf("Ack racing an Extend of %s: %v", d.Message().ID, err)
		}
		if err := <-errs; err != nil && !errors.Is(err, adapters.ErrLeaseLost) {
			t.Fatalf("Extend racing an Ack of %s: %v, want nil or ErrLeaseLost", d.Message().ID, err)
		}
	}
	for i := range n {
		d := s.receive(t, c, fmt.Sprintf("item %d for two Acks", i+1))
		errs := make(chan error, 2)
		for range 2 {
			go func() { errs <- d.Ack(s.ctx(t)) }()
		}
		e1, e2 := <-errs, <-errs
		ok := 0
		for _, err := range []error{e1, e2} {
			switch {
			case err == nil:
				ok++
			case !errors.Is(err, adapters.ErrLeaseLost):
				t.Fatalf("racing Acks of %s: %v, want nil or ErrLeaseLost", d.Message().ID, err)
			}
		}
		if ok != 1 {
			t.Fatalf("racing Acks of %s: %d succeeded (%v, %v), want exactly 1", d.Message().ID, ok, e1, e2)
		}
	}
	s.expectNone(t, c, q.Lease+q.Lease/2, "after every item was acked")
}

// adapters.EnqueueBatch (the broker's BatchEnqueuer, or Enqueue per item)
// stores every item of a batch with its message intact; a batch with one
// message over the size limit fails with ErrTooLarge and stores nothing.
func (s *suite) testEnqueueBatch(t *testing.T) {
	const n = 50
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{})
	if s.caps.MaxMessageSize > 0 {
		bad := []adapters.Message{{ID: "ok", Body: []byte("x")},
			{ID: "too-large", Body: make([]byte, s.caps.MaxMessageSize+1)}}
		if err := adapters.EnqueueBatch(s.ctx(t), b, q.Name, bad); !errors.Is(err, adapters.ErrTooLarge) {
			t.Fatalf("EnqueueBatch with a message over the limit: %v, want ErrTooLarge", err)
		}
	}
	want := richMessage()
	ms := make([]adapters.Message, n)
	for i := range ms {
		ms[i] = want
		ms[i].ID = fmt.Sprintf("batch-%02d", i)
	}
	if err := adapters.EnqueueBatch(s.ctx(t), b, q.Name, ms); err != nil {
		t.Fatalf("EnqueueBatch of %d: %v", n, err)
	}
	s.receiveEach(t, b, q.Name, n, want, "batch-")
}

// receiveEach receives n items from queue, acks them and expects no more:
// each once, its ID starting with prefix, its message otherwise want.
func (s *suite) receiveEach(t *testing.T, b adapters.Broker, queue string, n int, want adapters.Message, prefix string) {
	t.Helper()
	c := s.consume(t, b, queue, adapters.ConsumeOptions{})
	seen := map[string]bool{}
	for range n {
		d := s.receive(t, c, fmt.Sprintf("%d of %d %s items", len(seen)+1, n, prefix))
		got := d.Message()
		if seen[got.ID] {
			t.Errorf("item %q delivered twice", got.ID)
		}
		seen[got.ID] = true
		w := want
		w.ID = got.ID
		if diff := diffMessage(got, w); diff != "" || !strings.HasPrefix(got.ID, prefix) {
			t.Errorf("item %q: %s (want only the %s items)", got.ID, diff, prefix)
		}
		s.ack(t, d)
	}
	s.expectNone(t, c, s.lease/2, "after the "+prefix+" items")
}

// adapters.EnqueueAsync (the broker's AsyncEnqueuer, or Enqueue on a
// goroutine) stores every item once its Pending's Wait returned nil, with
// its message intact, the waits taken in any order; a message over the size
// limit and a queue never declared fail with ErrTooLarge and ErrNotFound,
// from the call or from Wait, and store nothing.
func (s *suite) testEnqueueAsync(t *testing.T) {
	const n = 50
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{})
	outcome := func(queue string, m adapters.Message) error {
		p, err := adapters.EnqueueAsync(s.ctx(t), b, queue, m)
		if err != nil {
			return err
		}
		return p.Wait(s.ctx(t))
	}
	if s.caps.MaxMessageSize > 0 {
		if err := outcome(q.Name, adapters.Message{ID: "too-large", Body: make([]byte, s.caps.MaxMessageSize+1)}); !errors.Is(err, adapters.ErrTooLarge) {
			t.Fatalf("EnqueueAsync of a message over the limit: %v, want ErrTooLarge", err)
		}
	}
	if err := outcome(fmt.Sprintf("never-declared-%d", time.Now().UnixNano()%1e9), adapters.Message{ID: "lost", Body: []byte("x")}); !errors.Is(err, adapters.ErrNotFound) {
		t.Fatalf("EnqueueAsync on an undeclared queue: %v, want ErrNotFound", err)
	}
	want := richMessage()
	pending := make([]adapters.Pending, n)
	for i := range pending {
		m := want
		m.ID = fmt.Sprintf("async-%02d", i)
		p, err := adapters.EnqueueAsync(s.ctx(t), b, q.Name, m)
		if err != nil {
			t.Fatalf("EnqueueAsync %d: %v", i, err)
		}
		pending[i] = p
	}
	for i := n - 1; i >= 0; i-- { // the last first: each has its own outcome
		if err := pending[i].Wait(s.ctx(t)); err != nil {
			t.Fatalf("Wait of item %d: %v", i, err)
		}
	}
	again, cancel := context.WithTimeout(context.Background(), s.wait)
	defer cancel()
	if err := pending[0].Wait(again); err != nil {
		t.Fatalf("a second Wait of item 0: %v, want its outcome (nil) again", err)
	}
	s.receiveEach(t, b, q.Name, n, want, "async-")
}

// Eight consumers, each on its own client and opened with opts, share items:
// every item is acked exactly once (an Ack that fails with ErrLeaseLost after a lease
// expired under load is not counted), none is missing, and nothing comes
// back afterwards.
// With Capabilities.AdaptivePrefetch, the same with each consumer opened at
// Prefetch 1 and MaxPrefetch 256: resizing what is fetched ahead while every
// item is taken at once loses and repeats nothing.
func (s *suite) testAdaptivePrefetch(t *testing.T) {
	s.skipUnless(t, "AdaptivePrefetch", s.caps.AdaptivePrefetch)
	s.concurrentConsumers(t, 400, adapters.ConsumeOptions{Prefetch: 1, MaxPrefetch: 256})
}

func (s *suite) testConcurrentConsumers(items int, opts adapters.ConsumeOptions) func(t *testing.T) {
	return func(t *testing.T) { s.concurrentConsumers(t, items, opts) }
}

func (s *suite) concurrentConsumers(t *testing.T, items int, opts adapters.ConsumeOptions) {
	const consumers = 8
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{Lease: s.queueLease(2 * s.lease)})
	// Enqueue from a few goroutines to keep the case fast on remote brokers.
	var enq sync.WaitGroup
	errs := make(chan error, items)
	for w := range 8 {
		enq.Add(1)
		go func() {
			defer enq.Done()
			for i := w; i < items; i += 8 {
				ctx, cancel := context.WithTimeout(context.Background(), s.wait)
				err := b.Enqueue(ctx, q.Name, adapters.Message{ID: fmt.Sprintf("item-%04d", i), Body: []byte(fmt.Sprint(i))})
				cancel()
				if err != nil {
					errs <- fmt.Errorf("Enqueue item-%04d: %w", i, err)
					return
				}
			}
		}()
	}
	enq.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	var (
		mu        sync.Mutex
		acked     = map[string]int{}
		lost      int
		delivered int
		again     int // deliveries with Attempt > 1
		all       = make(chan struct{})
		allOnce   sync.Once
	)
	ctx, cancel := context.WithTimeout(context.Background(), 10*s.wait)
	defer cancel()
	var wg sync.WaitGroup
	cons := make([]adapters.Consumer, consumers)
	for i := range cons {
		cons[i] = s.consume(t, s.open(t), q.Name, opts)
	}
	start := time.Now()
	for i, c := range cons {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				d, err := c.Receive(ctx)
				if err != nil {
					if ctx.Err() == nil {
						t.Errorf("consumer %d: Receive: %v", i, err)
					}
					return
				}
				err = d.Ack(ctx)
				mu.Lock()
				delivered++
				if d.Attempt() > 1 {
					again++
				}
				switch {
				case err == nil:
					acked[d.Message().ID]++
					if len(acked) == items {
						allOnce.Do(func() { close(all) })
					}
				case errors.Is(err, adapters.ErrLeaseLost):
					lost++
				default:
					t.Errorf("consumer %d: Ack(%q): %v", i, d.Message().ID, err)
				}
				mu.Unlock()
			}
		}()
	}
	select {
	case <-all:
		t.Logf("%d items acked by %d consumers in %s", items, consumers, time.Since(start))
		// An acked item that the broker still redelivers would come back
		// once its lease ran out.
		time.Sleep(q.Lease + s.lease/2)
	case <-ctx.Done():
	}
	cancel()
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	var dups, missing []string
	for i := range items {
		id := fmt.Sprintf("item-%04d", i)
		switch n := acked[id]; {
		case n == 0:
			missing = append(missing, id)
		case n > 1:
			dups = append(dups, fmt.Sprintf("%s×%d", id, n))
		}
	}
	if len(dups) > 0 {
		t.Errorf("%d items acked more than once: %v", len(dups), dups)
	}
	if len(missing) > 0 {
		t.Errorf("%d items never acked: %v", len(missing), missing)
	}
	t.Logf("deliveries %d (%d of them attempts after the first), acks that lost their lease %d", delivered, again, lost)
}

// ID, key, headers and a binary body arrive unchanged on a queue; the
// delivery names its queue and counts attempt 1.
func (s *suite) testQueueRoundTrip(t *testing.T) {
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{})
	c := s.consume(t, s.open(t), q.Name, adapters.ConsumeOptions{})
	want := richMessage()
	s.enqueue(t, b, q.Name, want)
	d := s.receive(t, c, "round trip")
	if diff := diffMessage(d.Message(), want); diff != "" {
		t.Errorf("queue item changed in transit: %s", diff)
	}
	if d.Queue() != q.Name {
		t.Errorf("Delivery.Queue %q, want %q", d.Queue(), q.Name)
	}
	if d.Attempt() != 1 {
		t.Errorf("Attempt %d, want 1", d.Attempt())
	}
	if dl := time.Until(d.LeaseDeadline()); dl <= 0 || dl > q.Lease+time.Second {
		t.Errorf("LeaseDeadline %s from now, want within (0, %s]", dl, q.Lease)
	}
	s.ack(t, d)
	// An empty ID is replaced by one.
	s.enqueue(t, b, q.Name, adapters.Message{Body: []byte("no id")})
	d = s.receive(t, c, "item enqueued without ID")
	if d.Message().ID == "" {
		t.Error("item enqueued with an empty ID was delivered with an empty ID, want a generated one")
	}
	s.ack(t, d)
}

// On a queue declared Dedupe, a second enqueue of the same ID is dropped:
// one delivery per ID, carrying the first body.
func (s *suite) testDedupe(t *testing.T) {
	s.skipUnless(t, "Dedupe", s.caps.Dedupe)
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{Dedupe: true})
	c := s.consume(t, b, q.Name, adapters.ConsumeOptions{})
	s.enqueue(t, b, q.Name, adapters.Message{ID: "dup", Body: []byte("first")})
	s.enqueue(t, s.open(t), q.Name, adapters.Message{ID: "dup", Body: []byte("second")})
	s.enqueue(t, b, q.Name, adapters.Message{ID: "other", Body: []byte("other")})
	got := map[string]string{}
	for range 2 {
		d := s.receive(t, c, "deduplicated items")
		if prev, ok := got[d.Message().ID]; ok {
			t.Errorf("ID %q delivered twice (bodies %q and %q)", d.Message().ID, prev, d.Message().Body)
		}
		got[d.Message().ID] = string(d.Message().Body)
		s.ack(t, d)
	}
	if got["dup"] != "first" {
		t.Errorf("ID \"dup\" delivered with body %q, want the first enqueue's \"first\"", got["dup"])
	}
	if _, ok := got["other"]; !ok {
		t.Errorf("ID \"other\" not delivered; got %v", got)
	}
	s.expectNone(t, c, s.lease, "after both IDs were acked")
}

// On a queue declared Ordered, one consumer receives the items of each key
// in enqueue order.
func (s *suite) testOrdered(t *testing.T) {
	s.skipUnless(t, "Ordering", s.caps.Ordering)
	const perKey = 10
	keys := []string{"a", "b", "c"}
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{Ordered: true})
	for i := range perKey {
		for _, k := range keys {
			s.enqueue(t, b, q.Name, adapters.Message{ID: fmt.Sprintf("%s-%02d", k, i), Key: k, Body: []byte(fmt.Sprint(i))})
		}
	}
	c := s.consume(t, b, q.Name, adapters.ConsumeOptions{})
	next := map[string]int{}
	for range perKey * len(keys) {
		d := s.receive(t, c, "ordered items")
		m := d.Message()
		want := fmt.Sprintf("%s-%02d", m.Key, next[m.Key])
		if m.ID != want {
			t.Errorf("key %q: got %q, want %q", m.Key, m.ID, want)
		}
		next[m.Key]++
		s.ack(t, d)
	}
	for _, k := range keys {
		if next[k] != perKey {
			t.Errorf("key %q: %d items, want %d", k, next[k], perKey)
		}
	}
}

// Declaring an existing queue again with the same config, from the same or
// another client, succeeds and keeps its items.
func (s *suite) testDeclareTwice(t *testing.T) {
	b1, b2 := s.open(t), s.open(t)
	q := s.declare(t, b1, adapters.QueueConfig{MaxAttempts: 3})
	s.enqueue(t, b1, q.Name, adapters.Message{ID: "kept"})
	for i, b := range []adapters.Broker{b1, b2} {
		if err := b.DeclareQueue(s.ctx(t), q); err != nil {
			t.Fatalf("client %d: second DeclareQueue with the same config: %v", i+1, err)
		}
	}
	c := s.consume(t, b2, q.Name, adapters.ConsumeOptions{})
	d := s.receive(t, c, "item enqueued before the second declare")
	if d.Message().ID != "kept" {
		t.Errorf("got %q, want \"kept\"", d.Message().ID)
	}
	s.ack(t, d)
}

// Closing a consumer releases the items it holds: another consumer gets
// them (at once, or after the lease on brokers that cannot release early)
// and the old delivery can no longer be acked.
func (s *suite) testClosedConsumerReleases(t *testing.T) {
	b1, b2 := s.open(t), s.open(t)
	q := s.declare(t, b1, adapters.QueueConfig{})
	c1 := s.consume(t, b1, q.Name, adapters.ConsumeOptions{})
	s.enqueue(t, b1, q.Name, adapters.Message{ID: "released"})
	d1 := s.receive(t, c1, "first delivery")
	if err := c1.Close(); err != nil {
		t.Fatalf("Consumer.Close: %v", err)
	}
	c2 := s.consume(t, b2, q.Name, adapters.ConsumeOptions{})
	d2 := s.receive(t, c2, "item released by the closed consumer")
	if d2.Message().ID != "released" {
		t.Fatalf("got %q, want \"released\"", d2.Message().ID)
	}
	if err := d1.Ack(s.ctx(t)); !errors.Is(err, adapters.ErrLeaseLost) {
		t.Errorf("Ack through the closed consumer after the item was redelivered: %v, want ErrLeaseLost", err)
	}
	s.ack(t, d2)
}

// Receive on a closed consumer returns ErrClosed, including a Receive that
// was blocked when Close was called.
func (s *suite) testClosedConsumer(t *testing.T) {
	b := s.open(t)
	q := s.declare(t, b, adapters.QueueConfig{})
	c := s.consume(t, b, q.Name, adapters.ConsumeOptions{})
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.wait)
		defer cancel()
		_, err := c.Receive(ctx)
		done <- err
	}()
	if err := c.Close(); err != nil {
		t.Fatalf("Consumer.Close: %v", err)
	}
	if err := <-done; !errors.Is(err, adapters.ErrClosed) {
		t.Errorf("Receive blocked across Close returned %v, want ErrClosed", err)
	}
	if _, err := c.Receive(s.ctx(t)); !errors.Is(err, adapters.ErrClosed) {
		t.Errorf("Receive after Close: %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil && !errors.Is(err, adapters.ErrClosed) {
		t.Errorf("second Close: %v, want nil or ErrClosed", err)
	}
}
