package azservicebus

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"

	sb "github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/google/uuid"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/internal/driver"
)

// consumer receives one queue (or its dead-letter sub-queue) in peek-lock.
type consumer struct {
	b        *Broker
	queue    string
	dead     bool
	info     queueInfo
	rcv      *sb.Receiver
	prefetch int

	recvMu sync.Mutex // one ReceiveMessages at a time
	buf    []*sb.ReceivedMessage

	// held are the deliveries Receive returned and that are not settled
	// or expired yet; Close abandons them.
	held driver.Held[*delivery]

	closeOnce sync.Once
	done      chan struct{}
}

func (c *consumer) isClosed() bool {
	select {
	case <-c.done:
		return true
	case <-c.b.done:
		return true
	default:
		return false
	}
}

// withClose returns ctx cancelled also when the consumer or broker closes.
func (c *consumer) withClose(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-c.done:
		case <-c.b.done:
		case <-ctx.Done():
		}
		cancel()
	}()
	return ctx, cancel
}

// Receive returns the next item under its Service Bus lock. Items whose
// attempts exceed the queue's MaxAttempts (possible only for Nack(delay)
// copies, see the package doc) are dead-lettered here and skipped.
func (c *consumer) Receive(ctx context.Context) (adapters.Delivery, error) {
	op := fmt.Sprintf("azservicebus: receive %q", c.queue)
	c.recvMu.Lock()
	defer c.recvMu.Unlock()
	backoff := 50 * time.Millisecond
	for {
		if c.isClosed() {
			return nil, adapters.Errorf(adapters.ErrClosed, op, "consumer is closed")
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if len(c.buf) > 0 {
			rm := c.buf[0]
			c.buf = c.buf[1:]
			d := c.newDelivery(rm)
			if !c.dead && d.attempt > c.info.maxAttempts {
				reason := fmt.Sprintf("max attempts (%d) exceeded", c.info.maxAttempts)
				if err := d.DeadLetter(ctx, reason); err != nil && !errors.Is(err, adapters.ErrLeaseLost) {
					c.b.log.Warn("dead-lettering an item over its attempts failed", "queue", c.queue, "id", d.m.ID, "err", err)
				}
				continue
			}
			if !c.held.Add(d) {
				// Close took the held set meanwhile; it abandons the
				// buffer once this Receive returns.
				c.buf = append([]*sb.ReceivedMessage{rm}, c.buf...)
				return nil, adapters.Errorf(adapters.ErrClosed, op, "consumer is closed")
			}
			return d, nil
		}
		rctx, cancel := c.withClose(ctx)
		msgs, err := c.rcv.ReceiveMessages(rctx, c.prefetch, nil)
		cancel()
		if c.isClosed() {
			return nil, adapters.Errorf(adapters.ErrClosed, op, "consumer is closed")
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil {
			err = mapErrCtx(ctx, op, err)
			if !adapters.IsRetryable(err) {
				return nil, err
			}
			c.b.log.Debug("receive failed; retrying", "queue", c.queue, "err", err)
		} else if len(msgs) > 0 {
			c.buf = msgs
			backoff = 50 * time.Millisecond
			continue
		}
		// Zero messages and a nil error: the SDK recovered from a fault
		// (link or connection) and gave up this call. Pause, then go on.
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.done:
		case <-c.b.done:
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// Close closes the receiver. The items it holds, delivered by Receive and
// unsettled or buffered and not returned yet, are abandoned.
func (c *consumer) Close() error {
	c.closeOnce.Do(func() {
		close(c.done)
		var buf []*sb.ReceivedMessage
		for _, d := range c.held.Close() {
			// Take is false for a delivery settling now (its operation
			// keeps its outcome) or whose lock expired.
			if d.lease.Take() {
				buf = append(buf, d.rm)
			}
		}
		c.recvMu.Lock()
		buf = append(buf, c.buf...)
		c.buf = nil
		c.recvMu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, rm := range buf {
			if err := c.rcv.AbandonMessage(ctx, rm, nil); err != nil {
				c.b.log.Debug("close: abandoning an item failed; it returns when its lock expires", "queue", c.queue, "err", err)
			}
		}
		c.b.log.Debug("consumer closed", "queue", c.queue, "abandoned", len(buf))
		_ = c.rcv.Close(ctx)
		c.b.drop(c, nil)
	})
	return nil
}

// newDelivery starts the lease of a received message: until its lock's
// locked-until.
func (c *consumer) newDelivery(rm *sb.ReceivedMessage) *delivery {
	d := &delivery{c: c, rm: rm, m: fromSB(rm, c.dead), attempt: attemptOf(rm)}
	deadline := time.Now().Add(c.info.lease)
	if rm.LockedUntil != nil {
		deadline = *rm.LockedUntil
	}
	d.lease.Start(deadline, driver.Hooks{
		// Service Bus makes the item available again itself when the
		// lock expires; Done drops the delivery from the held set then.
		Done: func() { c.held.Remove(d) },
		Valid: func() error {
			if c.isClosed() {
				return adapters.Errorf(adapters.ErrClosed, "azservicebus: settle", "the consumer or broker was closed; its unsettled items were abandoned")
			}
			return nil
		},
	})
	return d
}

// maxEarlierAttempts bounds the attempts of earlier copies read from
// propAttempts, so that adding the delivery count cannot overflow.
const maxEarlierAttempts = math.MaxInt32

// attemptOf is the attempt number of a received message: the attempts of
// earlier copies (propAttempts, set on a Nack(delay) copy) plus its own
// DeliveryCount. A missing, malformed, negative or out-of-range
// propAttempts counts as no earlier attempts, and the result is at least 1.
func attemptOf(rm *sb.ReceivedMessage) int {
	base := 0
	if s, ok := rm.ApplicationProperties[propAttempts].(string); ok {
		if n, err := strconv.Atoi(s); err == nil && n > 0 && n <= maxEarlierAttempts {
			base = n
		}
	}
	return base + max(int(rm.DeliveryCount), 1)
}

// delayedCopy is the copy of m that Nack(delay) schedules after attempt
// attempts: a new MessageID (or duplicate detection would drop the copy),
// the original ID and the attempts so far in application properties.
func delayedCopy(m adapters.Message, attempt int) *sb.Message {
	cp := toSB(m)
	cp.MessageID = ptr(uuid.NewString())
	cp.ApplicationProperties[propID] = m.ID
	cp.ApplicationProperties[propAttempts] = strconv.Itoa(attempt)
	return cp
}

// delivery is one received message under its Service Bus lock.
type delivery struct {
	c       *consumer
	rm      *sb.ReceivedMessage
	m       adapters.Message
	attempt int
	lease   driver.Lease
}

func (d *delivery) Message() adapters.Message { return d.m }
func (d *delivery) Attempt() int              { return d.attempt }
func (d *delivery) Queue() string             { return d.c.queue }
func (d *delivery) LeaseDeadline() time.Time  { return d.lease.Deadline() }

// settle runs a settling call for an operation begun on the lease, retrying
// it (up to three tries) while it fails with a transient error such as a
// link being recovered, and ends the operation. A retry after an attempt
// whose outcome was lost can report ErrLeaseLost although the first attempt
// took effect. Lock lost, and a closed consumer or broker, end the lease.
func (d *delivery) settle(ctx context.Context, op string, fn func(context.Context) error) error {
	var err error
	for try := 1; ; try++ {
		err = fn(ctx)
		if err == nil {
			d.lease.Settled()
			return nil
		}
		err = mapErrCtx(ctx, op, err)
		if try == 3 || !adapters.IsRetryable(err) || d.c.isClosed() {
			break
		}
		d.c.b.log.Debug("settling failed; retrying", "queue", d.c.queue, "id", d.m.ID, "err", err)
		select {
		case <-ctx.Done():
			d.lease.Failed(ctx.Err())
			return ctx.Err()
		case <-time.After(time.Duration(try) * 100 * time.Millisecond):
		}
	}
	d.lease.Failed(err)
	if errors.Is(err, adapters.ErrClosed) && !errors.Is(err, adapters.ErrLeaseLost) {
		return &adapters.Error{Code: adapters.ErrLeaseLost, Op: op, Err: err}
	}
	return err
}

func (d *delivery) op(verb string) string {
	return fmt.Sprintf("azservicebus: %s %q message %q", verb, d.c.queue, d.m.ID)
}

// Ack completes the message.
func (d *delivery) Ack(ctx context.Context) error {
	op := d.op("ack")
	if err := d.lease.Begin(ctx, op); err != nil {
		return err
	}
	return d.settle(ctx, op, func(ctx context.Context) error { return d.c.rcv.CompleteMessage(ctx, d.rm, nil) })
}

// Nack abandons the message (delay 0: Service Bus counts a delivery and
// dead-letters at MaxDeliveryCount), or for a delay sends a scheduled copy
// with the attempt count so far and then completes the original.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	op := d.op("nack")
	if err := adapters.ValidateDelay(op, delay, caps); err != nil {
		return err
	}
	if delay > 0 && d.c.dead {
		return adapters.Errorf(adapters.ErrUnsupported, op, "Nack with a delay on the dead-letter queue: Service Bus cannot send to a dead-letter sub-queue; use Nack(0)")
	}
	if err := d.lease.Begin(ctx, op); err != nil {
		return err
	}
	if !d.c.dead && d.attempt >= d.c.info.maxAttempts {
		reason := fmt.Sprintf("max attempts (%d) used up; the last attempt was nacked", d.c.info.maxAttempts)
		return d.settle(ctx, op, func(ctx context.Context) error {
			return d.c.rcv.DeadLetterMessage(ctx, d.rm, &sb.DeadLetterOptions{Reason: &reason})
		})
	}
	if delay == 0 {
		return d.settle(ctx, op, func(ctx context.Context) error { return d.c.rcv.AbandonMessage(ctx, d.rm, nil) })
	}
	cp := delayedCopy(d.m, d.attempt)
	at := time.Now().Add(delay)
	cp.ScheduledEnqueueTime = &at
	// Copy first, then complete: a failure in between leaves a duplicate,
	// never a loss.
	if err := d.c.b.send(ctx, op, d.c.queue, cp); err != nil {
		d.lease.Failed(err)
		return err
	}
	err := d.settle(ctx, op, func(ctx context.Context) error { return d.c.rcv.CompleteMessage(ctx, d.rm, nil) })
	if err != nil {
		d.c.b.log.Warn("nack: the delayed copy was sent but completing the original failed; the item may be delivered twice",
			"queue", d.c.queue, "id", d.m.ID, "err", err)
	}
	return err
}

// Extend renews the Service Bus lock, which always runs for the queue's
// full lock duration from now.
func (d *delivery) Extend(ctx context.Context, dur time.Duration) error {
	op := d.op("extend")
	if err := adapters.ValidateExtend(op, dur, d.c.info.lease); err != nil {
		return err
	}
	if err := d.lease.Begin(ctx, op); err != nil {
		return err
	}
	if err := d.c.rcv.RenewMessageLock(ctx, d.rm, nil); err != nil {
		err = mapErrCtx(ctx, op, err)
		d.lease.Failed(err)
		return err
	}
	until := time.Now().Add(d.c.info.lease)
	if d.rm.LockedUntil != nil {
		until = *d.rm.LockedUntil
	}
	d.lease.Extended(until)
	return nil
}

// DeadLetter moves the message to the dead-letter sub-queue with the reason
// in DeadLetterReason (cut to 4096 bytes).
func (d *delivery) DeadLetter(ctx context.Context, reason string) error {
	op := d.op("dead-letter")
	if err := d.lease.Begin(ctx, op); err != nil {
		return err
	}
	if len(reason) > maxDeadLetterLen {
		reason = reason[:maxDeadLetterLen]
	}
	return d.settle(ctx, op, func(ctx context.Context) error {
		return d.c.rcv.DeadLetterMessage(ctx, d.rm, &sb.DeadLetterOptions{Reason: &reason})
	})
}
