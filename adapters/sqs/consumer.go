package sqs

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/internal/driver"
)

// Consume opens a consumer. Receive calls long-poll SQS in the background,
// up to min(Prefetch, 10) items per call (1 on Ordered queues, to keep the
// order per key across Nacks); items that arrive after the
// caller gave up wait in the consumer's buffer (they are leased) and are
// dropped there, to come back with the next attempt, if their lease runs
// out before a Receive takes them.
func (b *Broker) Consume(ctx context.Context, queue string, opts adapters.ConsumeOptions) (adapters.Consumer, error) {
	op := fmt.Sprintf("sqs: consume %q", queue)
	if err := b.checkOpen(op); err != nil {
		return nil, err
	}
	if err := opts.Validate(op, 0); err != nil {
		return nil, err
	}
	q, err := b.queue(ctx, op, queue)
	if err != nil {
		return nil, err
	}
	c := &consumer{b: b, q: q, dead: opts.DeadLetters, url: q.url, del: q.del, op: op,
		prefetch: max(1, min(opts.Prefetch, 10)), notify: make(chan struct{})}
	if c.dead {
		c.url, c.del = q.dlqURL, q.dlqD
	}
	if q.ordered && !c.dead {
		// One item per receive call: SQS then hands out the next item of a
		// key only once the one before is deleted, and a Nack cannot leave
		// a later item of the same key behind in the buffer.
		c.prefetch = 1
	}
	c.ctx, c.cancel = context.WithCancel(b.ctx)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		c.cancel()
		return nil, adapters.Errorf(adapters.ErrClosed, op, "broker closed")
	}
	b.cons[c] = struct{}{}
	return c, nil
}

type consumer struct {
	b        *Broker
	q        *queueInfo
	dead     bool
	url      string
	del      *batcher[string]
	op       string
	prefetch int
	ctx      context.Context
	cancel   context.CancelFunc

	// out: handed out by Receive, lease not done.
	out driver.Held[*delivery]
	// acks: deletes of acknowledged items SQS has not answered yet.
	acks inflight

	mu     sync.Mutex
	closed bool
	// buf: received from SQS (leased there) but not yet handed out. It is
	// the consumer's own, beside out: it is a FIFO that Receive takes from
	// in order and skips what expired in it, which driver.Held (a set) does
	// not express; Close releases both.
	buf      []*delivery
	fetching bool
	fetchErr error
	notify   chan struct{} // closed when a fetch ends
}

// Receive returns the next item under its lease.
func (c *consumer) Receive(ctx context.Context) (adapters.Delivery, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, adapters.Errorf(adapters.ErrClosed, c.op, "consumer closed")
		}
		now := time.Now()
		for len(c.buf) > 0 {
			d := c.buf[0]
			c.buf = c.buf[1:]
			// Expired in the buffer: SQS hands it out again (and a last
			// attempt is dead-lettered by its lease's Expire hook).
			if d.lease.State() == driver.StateHeld && d.LeaseDeadline().After(now) {
				// Close closes out under c.mu after setting c.closed, so
				// Add cannot fail here.
				c.out.Add(d)
				c.mu.Unlock()
				return d, nil
			}
		}
		if err := c.fetchErr; err != nil {
			c.fetchErr = nil
			c.mu.Unlock()
			return nil, err
		}
		if !c.fetching {
			c.fetching = true
			go c.fetch() // not in b.wg: may outlive Broker.Close by one long poll
		}
		notify := c.notify
		c.mu.Unlock()
		select {
		case <-notify:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.ctx.Done():
		}
	}
}

// fetch runs one ReceiveMessage call (retrying while SQS is unreachable)
// and puts what it got into the buffer.
func (c *consumer) fetch() {
	var (
		got []*delivery
		err error
	)
	failed := 0
	for backoff := 100 * time.Millisecond; ; backoff = min(2*backoff, 5*time.Second) {
		got, err = c.receive()
		if err == nil || code(err) != adapters.ErrUnavailable || c.ctx.Err() != nil {
			if failed > 0 && err == nil {
				c.b.log.Info("receiving again", "queue", c.q.name, "dead_letters", c.dead, "failures", failed)
			}
			break
		}
		if failed == 0 {
			c.b.log.Warn("receive failed; retrying with backoff", "queue", c.q.name, "dead_letters", c.dead, "err", err)
		}
		failed++
		select {
		case <-time.After(backoff):
		case <-c.ctx.Done():
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fetching = false
	if c.closed {
		c.releaseLocked(got)
	} else {
		c.buf = append(c.buf, got...)
		if err != nil && c.ctx.Err() == nil {
			if code(err) == adapters.ErrNotFound {
				c.b.forget(c.q.name)
			}
			c.fetchErr = mapErr(c.op, err)
		}
	}
	close(c.notify)
	c.notify = make(chan struct{})
}

func (c *consumer) receive() ([]*delivery, error) {
	// The call does not end with the consumer (or the broker, until one
	// long-poll time after its Close): a long poll cut off at the client
	// can still be handed items by the server (fauxqs does this, and SQS
	// may), which would then stay hidden for a lease. Left to finish, its
	// items are released at once (see fetch).
	out, err := c.b.sqs.ReceiveMessage(c.b.pollCtx, &sqs.ReceiveMessageInput{
		QueueUrl:              aws.String(c.url),
		MaxNumberOfMessages:   int32(c.prefetch),
		WaitTimeSeconds:       seconds(c.b.cfg.WaitTime),
		VisibilityTimeout:     withGrace(seconds(c.q.lease)),
		MessageAttributeNames: []string{"All"},
		MessageSystemAttributeNames: []types.MessageSystemAttributeName{
			types.MessageSystemAttributeNameApproximateReceiveCount, types.MessageSystemAttributeNameMessageGroupId,
		},
	})
	if err != nil {
		return nil, err
	}
	// SQS started the visibility timeout somewhere between the request and
	// the response (a long poll may wait 20 s); the lease is counted from
	// the response. SQS is asked for graceSeconds more than the lease, which
	// covers the time the response took to arrive.
	received := time.Now()
	ds := make([]*delivery, 0, len(out.Messages))
	for _, m := range out.Messages {
		dec, err := decode(c.op, aws.ToString(m.Body), m.MessageAttributes)
		if err != nil {
			// Not ours or corrupt: hand it over with the raw body so that
			// the caller can dead-letter it, rather than loop on it.
			c.b.log.Warn("undecodable message", "queue", c.q.name, "message_id", aws.ToString(m.MessageId), "err", err)
			dec = decoded{msg: adapters.Message{ID: aws.ToString(m.MessageId), Body: []byte(aws.ToString(m.Body))}}
		}
		if dec.msg.ID == "" {
			dec.msg.ID = aws.ToString(m.MessageId)
		}
		if c.dead {
			if dec.msg.Headers == nil {
				dec.msg.Headers = map[string]string{}
			}
			reason := dec.reason
			if reason == "" {
				reason = fmt.Sprintf("moved by the SQS redrive policy after MaxAttempts (%d) deliveries", c.q.maxAttempts)
			}
			dec.msg.Headers[adapters.HeaderDeadLetterReason] = reason
		}
		attempt, _ := strconv.Atoi(m.Attributes[string(types.MessageSystemAttributeNameApproximateReceiveCount)])
		d := &delivery{
			c: c, msg: dec.msg, attempt: max(1, attempt), handle: aws.ToString(m.ReceiptHandle),
			sqsID: aws.ToString(m.MessageId), group: m.Attributes[string(types.MessageSystemAttributeNameMessageGroupId)],
			body: aws.ToString(m.Body), attrs: m.MessageAttributes,
		}
		h := driver.Hooks{Done: func() { c.out.Remove(d) }}
		if !c.dead && d.attempt >= c.q.maxAttempts {
			// The last attempt: dead-lettered at the deadline if still held.
			h.Expire = d.expire
		}
		d.lease.Start(received.Add(c.q.lease), h)
		ds = append(ds, d)
	}
	return ds, nil
}

// Close stops the consumer and makes its unsettled items visible again at
// once (visibility timeout 0); settling them afterwards returns
// ErrLeaseLost.
func (c *consumer) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	ds := append(c.buf, c.out.Close()...)
	c.buf = nil
	c.mu.Unlock()
	c.cancel()
	c.b.mu.Lock()
	delete(c.b.cons, c)
	c.b.mu.Unlock()
	err := c.release(ds)
	c.acks.wait()
	return err
}

// inflight counts the deletes Ack sent that SQS has not answered yet.
type inflight struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // made by wait, closed when n drops to 0
}

func (f *inflight) started() {
	f.mu.Lock()
	f.n++
	f.mu.Unlock()
}

func (f *inflight) done() {
	f.mu.Lock()
	f.n--
	if f.n == 0 && f.idle != nil {
		close(f.idle)
		f.idle = nil
	}
	f.mu.Unlock()
}

// wait returns once nothing is in flight. Each request ends within the
// broker's operation timeout (opCtx), so it does not wait forever.
func (f *inflight) wait() {
	f.mu.Lock()
	if f.n == 0 {
		f.mu.Unlock()
		return
	}
	if f.idle == nil {
		f.idle = make(chan struct{})
	}
	idle := f.idle
	f.mu.Unlock()
	<-idle
}

func (c *consumer) releaseLocked(ds []*delivery) {
	if len(ds) > 0 {
		go c.release(ds) //nolint:errcheck // logged inside
	}
}

// release sets the visibility of ds to 0 so that others get them now.
func (c *consumer) release(ds []*delivery) error {
	var handles []string
	for _, d := range ds {
		if d.lease.Take() {
			handles = append(handles, d.handle)
		}
	}
	ctx, cancel := c.b.opCtx()
	defer cancel()
	for len(handles) > 0 {
		n := min(10, len(handles))
		es := make([]types.ChangeMessageVisibilityBatchRequestEntry, n)
		for i, h := range handles[:n] {
			es[i] = types.ChangeMessageVisibilityBatchRequestEntry{Id: aws.String(strconv.Itoa(i)), ReceiptHandle: aws.String(h), VisibilityTimeout: 0}
		}
		handles = handles[n:]
		if _, err := c.b.sqs.ChangeMessageVisibilityBatch(ctx, &sqs.ChangeMessageVisibilityBatchInput{QueueUrl: aws.String(c.url), Entries: es}); err != nil {
			c.b.log.Warn("releasing unsettled items failed; they return when their leases expire", "queue", c.q.name, "err", err)
			return mapErr(c.op+": release unsettled items", err)
		}
	}
	return nil
}

// delivery is one received item. The adapter tracks settlement itself:
// SQS accepts some stale receipt handles silently.
type delivery struct {
	c       *consumer
	msg     adapters.Message
	attempt int
	handle  string
	sqsID   string
	group   string
	body    string
	attrs   map[string]types.MessageAttributeValue
	lease   driver.Lease
}

// graceSeconds is added to the visibility timeout SQS is asked for, beyond
// the lease the adapter reports: the adapter's own deadline always passes
// before SQS makes the item visible again, so an Ack sent just before the
// reported deadline cannot race a redelivery, and on the last attempt the
// adapter still holds the item when the lease runs out and dead-letters it
// (else it would wait in the queue for the next receive to be moved by the
// redrive policy).
const graceSeconds = 1

// withGrace adds graceSeconds to a visibility timeout, within SQS's 12 h
// maximum (a 12 h lease gets no grace).
func withGrace(s int32) int32 {
	return min(s+graceSeconds, int32(MaxLease/time.Second))
}

var _ adapters.Delivery = (*delivery)(nil)

func (d *delivery) Message() adapters.Message { return d.msg }
func (d *delivery) Attempt() int              { return d.attempt }
func (d *delivery) Queue() string             { return d.c.q.name }

func (d *delivery) LeaseDeadline() time.Time { return d.lease.Deadline() }

func (d *delivery) op(verb string) string {
	return fmt.Sprintf("sqs: %s %q item %s", verb, d.c.q.name, d.msg.ID)
}

// Ack deletes the item without waiting for SQS's answer (adapters.Delivery
// allows it): the delete joins the queue's next DeleteMessageBatch request,
// and Close waits for it. A delete SQS refuses is logged; the item then
// comes back after its lease, as if this consumer had died.
func (d *delivery) Ack(ctx context.Context) error {
	op := d.op("ack")
	d.c.acks.started() // before Begin: a Close that takes the lease after it waits for it
	if err := d.lease.Begin(ctx, op); err != nil {
		d.c.acks.done()
		return err
	}
	d.lease.Settled()
	d.c.del.send(d.handle, 0, func(err error) {
		if err != nil {
			d.c.b.log.Warn("sqs: an acknowledged item was not deleted; it comes back after its lease",
				"queue", d.c.q.name, "id", d.msg.ID, "err", err)
		}
		d.c.acks.done()
	})
	return nil
}

// Nack makes the item visible again after delay (rounded up to whole
// seconds). On the last attempt it dead-letters the item instead.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	op := d.op("nack")
	if err := adapters.ValidateDelay(op, delay, d.c.b.caps); err != nil {
		return err
	}
	if !d.c.dead && d.attempt >= d.c.q.maxAttempts {
		return d.deadLetter(ctx, op, fmt.Sprintf("attempts used up: nacked on attempt %d of MaxAttempts %d", d.attempt, d.c.q.maxAttempts))
	}
	if err := d.lease.Begin(ctx, op); err != nil {
		return err
	}
	err := d.changeVisibility(ctx, seconds(delay))
	d.lease.End(err)
	return adapters.Wrap(adapters.ErrUnavailable, op, err)
}

// Extend sets the item's visibility timeout to d from now, rounded up to
// whole seconds.
func (d *delivery) Extend(ctx context.Context, dur time.Duration) error {
	op := d.op("extend")
	if err := adapters.ValidateExtend(op, dur, d.c.q.lease); err != nil {
		return err
	}
	if err := d.lease.Begin(ctx, op); err != nil {
		return err
	}
	s := seconds(dur)
	start := time.Now()
	if err := d.changeVisibility(ctx, withGrace(s)); err != nil {
		d.lease.Failed(err)
		return adapters.Wrap(adapters.ErrUnavailable, op, err)
	}
	d.lease.Extended(start.Add(time.Duration(s) * time.Second))
	return nil
}

func (d *delivery) changeVisibility(ctx context.Context, s int32) error {
	_, err := d.c.b.sqs.ChangeMessageVisibility(ctx, &sqs.ChangeMessageVisibilityInput{
		QueueUrl: aws.String(d.c.url), ReceiptHandle: aws.String(d.handle), VisibilityTimeout: s,
	})
	return mapErr("change visibility", err)
}

// DeadLetter sends a copy of the item, with the reason, to the dead-letter
// queue and then deletes the original.
func (d *delivery) DeadLetter(ctx context.Context, reason string) error {
	op := d.op("dead-letter")
	if d.c.dead {
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "item is already in the dead-letter queue; Ack or Nack it")
	}
	return d.deadLetter(ctx, op, reason)
}

func (d *delivery) deadLetter(ctx context.Context, op, reason string) error {
	if err := d.lease.Begin(ctx, op); err != nil {
		return err
	}
	err := d.moveToDLQ(ctx, op, reason)
	d.lease.End(err)
	return err
}

// expire is the Expire hook of a delivery on its last attempt: its lease
// ran out while held, and the adapter dead-letters it (SQS still hides it
// for graceSeconds).
func (d *delivery) expire() {
	op := d.op("dead-letter on lease expiry")
	ctx, cancel := d.c.b.opCtx()
	defer cancel()
	reason := fmt.Sprintf("lease expired on the last attempt (%d of MaxAttempts %d)", d.attempt, d.c.q.maxAttempts)
	if err := d.moveToDLQ(ctx, op, reason); err != nil {
		d.c.b.log.Warn("dead-lettering an item whose last lease expired failed; the redrive policy moves it on the next receive",
			"queue", d.c.q.name, "id", d.msg.ID, "err", err)
		return
	}
	d.c.b.log.Info("item dead-lettered: lease expired on its last attempt", "queue", d.c.q.name, "id", d.msg.ID, "attempt", d.attempt)
}

// moveToDLQ copies the item with the reason to the dead-letter queue and
// deletes the original. The caller holds the delivery: an operation begun
// on its lease, or its Expire hook.
func (d *delivery) moveToDLQ(ctx context.Context, op, reason string) error {
	attrs := withReason(d.attrs, reason)
	for over := attrsSize(d.body, attrs) - WireLimit; over > 0; over = attrsSize(d.body, attrs) - WireLimit {
		reason = reason[:max(0, len(reason)-over)]
		attrs = withReason(d.attrs, reason)
		if reason == "" {
			break
		}
	}
	in := &sqs.SendMessageInput{QueueUrl: aws.String(d.c.q.dlqURL), MessageBody: aws.String(d.body), MessageAttributes: attrs}
	if d.c.q.fifo {
		g := d.group
		if g == "" {
			g = d.c.q.group(d.msg)
		}
		in.MessageGroupId = aws.String(g)
		in.MessageDeduplicationId = aws.String(fifoToken(d.sqsID))
	}
	if _, err := d.c.b.sqs.SendMessage(ctx, in); err != nil {
		return adapters.Wrap(adapters.ErrUnavailable, op, mapErr("send to dead-letter queue", err))
	}
	if err := d.c.q.del.do(ctx, d.handle, 0); err != nil {
		return adapters.Wrap(adapters.ErrUnavailable, op+": copied to the dead-letter queue but deleting the original failed", err)
	}
	return nil
}

func attrsSize(body string, attrs map[string]types.MessageAttributeValue) int {
	n := len(body)
	for k, a := range attrs {
		n += len(k) + len(aws.ToString(a.DataType)) + len(aws.ToString(a.StringValue)) + len(a.BinaryValue)
	}
	return n
}
