package nats

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/internal/driver"
)

func reasonExpired(maxAttempts int) string {
	return fmt.Sprintf("max attempts (%d) exceeded: the lease of the last attempt expired without ack", maxAttempts)
}

type delivery struct {
	c       *consumer
	msg     jetstream.Msg
	md      *jetstream.MsgMetadata
	m       adapters.Message
	attempt int
	lease   driver.Lease
}

func (d *delivery) Message() adapters.Message { return d.m }
func (d *delivery) Attempt() int              { return d.attempt }
func (d *delivery) Queue() string             { return d.c.queue }
func (d *delivery) LeaseDeadline() time.Time  { return d.lease.Deadline() }

// last reports whether this is the item's last attempt.
func (d *delivery) last() bool { return d.c.maxAttempts > 0 && d.attempt >= d.c.maxAttempts }

// start starts the lease until deadline. Every lease ends at its deadline
// (Done drops it from the held set). Only a last attempt has an Expire hook:
// when its lease runs out unsettled the adapter dead-letters it at once,
// rather than when some consumer next pulls it; any other item comes back by
// itself (the server's AckWait).
func (d *delivery) start(deadline time.Time) {
	h := driver.Hooks{
		Done:  func() { d.c.held.Remove(d) },
		Valid: d.c.valid,
	}
	if d.last() {
		h.Expire = d.expireLast
	}
	d.lease.Start(deadline, h)
}

// expireLast runs when the lease of a last attempt has expired.
func (d *delivery) expireLast() {
	if d.c.b.isClosed() {
		return // it comes back as attempt MaxAttempts+1 and is moved then
	}
	d.moveDetached(reasonExpired(d.c.maxAttempts))
}

// begin starts an operation on the delivery (see driver.Lease.Begin).
func (d *delivery) begin(ctx context.Context, op string) error {
	return d.lease.Begin(ctx, "nats: "+op)
}

// moveDetached moves the item to the dead-letter queue on the adapter's own
// account. If that fails the item stays in the queue (unacked) and the next
// delivery, past MaxAttempts, moves it.
func (d *delivery) moveDetached(reason string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.moveToDLQ(ctx, reason, d.c.maxAttempts); err != nil {
		d.c.b.log.Warn("nats: cannot dead-letter an item past its attempts; it comes back and is retried", "queue", d.c.queue, "err", err)
	}
}

// reply sends an acknowledgement verb and waits for the server to confirm.
func (d *delivery) reply(ctx context.Context, op string, body []byte) error {
	rctx := ctx
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	_, err := d.c.b.nc.RequestWithContext(rctx, d.msg.Reply(), body)
	return d.c.b.mapCtxErr(ctx, op, err)
}

// send sends an acknowledgement verb without waiting for the server: the
// connection delivers it in order with everything else this client sends,
// and Consumer.Close and Broker.Close flush it. If the connection is down,
// nats.go holds it in its reconnect buffer and sends it on reconnect.
func (d *delivery) send(ctx context.Context, op string, body []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return d.c.b.mapErr(op, d.c.b.nc.Publish(d.msg.Reply(), body))
}

// Ack implements adapters.Delivery with a plain acknowledgement that does
// not wait for the server's reply; see the package doc for what a nil
// return promises.
func (d *delivery) Ack(ctx context.Context) error {
	if err := d.lease.Begin(ctx, d.c.ackBeginOp); err != nil {
		return err
	}
	err := d.send(ctx, d.c.ackOp, ackBody)
	if err == nil {
		d.settled()
	}
	return d.lease.End(err)
}

// settled tells the compactor the item was acknowledged.
func (d *delivery) settled() {
	if d.c.comp != nil {
		d.c.comp.settled(d.md.Sequence.Stream)
	}
}

var (
	ackBody = []byte("+ACK")
	nakBody = []byte("-NAK")
)

// Nack implements adapters.Delivery with NakWithDelay, sent like Ack without
// waiting; on the last attempt it dead-letters the item instead.
func (d *delivery) Nack(ctx context.Context, delay time.Duration) error {
	op := d.c.op("nack")
	if err := adapters.ValidateDelay("nats: "+op, delay, d.c.b.caps); err != nil {
		return err
	}
	if err := d.begin(ctx, op); err != nil {
		return err
	}
	if d.last() {
		reason := fmt.Sprintf("max attempts (%d) exceeded: nacked on the last attempt", d.c.maxAttempts)
		return d.lease.End(d.moveToDLQ(ctx, reason, d.attempt))
	}
	body := nakBody
	if delay > 0 {
		body = fmt.Appendf(nil, `-NAK {"delay": %d}`, delay.Nanoseconds())
	}
	return d.lease.End(d.send(ctx, op, body))
}

// Extend implements adapters.Delivery with InProgress, which restarts the
// server's AckWait timer: the lease is renewed by the queue's full lease,
// whatever d is.
func (d *delivery) Extend(ctx context.Context, dur time.Duration) error {
	op := d.c.op("extend")
	if err := adapters.ValidateExtend("nats: "+op, dur, d.c.lease); err != nil {
		return err
	}
	if err := d.begin(ctx, op); err != nil {
		return err
	}
	start := time.Now()
	if err := d.reply(ctx, op, []byte("+WPI")); err != nil {
		d.lease.Failed(err)
		return err
	}
	d.lease.Extended(start.Add(d.c.lease))
	return nil
}

// DeadLetter implements adapters.Delivery.
func (d *delivery) DeadLetter(ctx context.Context, reason string) error {
	op := d.c.op("dead-letter")
	if d.c.dlq {
		return errf(adapters.ErrInvalidArgument, op, "the item is already in the dead-letter queue; Ack removes it, Nack returns it to the dead-letter queue")
	}
	if err := d.begin(ctx, op); err != nil {
		return err
	}
	return d.lease.End(d.moveToDLQ(ctx, reason, d.attempt))
}

// moveToDLQ publishes the item to the dead-letter stream (deduplicated by
// its stream sequence, so a repeated move after a crash stores it once),
// waits for the store, then acks the original.
func (d *delivery) moveToDLQ(ctx context.Context, reason string, attempts int) error {
	b := d.c.b
	op := d.c.op("dead-letter")
	if len(reason) > maxReasonLen {
		reason = reason[:maxReasonLen]
	}
	reason = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' || r == 0 {
			return ' '
		}
		return r
	}, reason)
	msg := encode(b.dlqSubject(d.c.queue), d.m)
	msg.Header[adapters.HeaderDeadLetterReason] = []string{escapeValue(reason)}
	msg.Header[hdrAttempts] = []string{strconv.Itoa(attempts)}
	msg.Header[hdrFrom] = []string{d.c.queue}
	msg.Header[jetstream.MsgIDHeader] = []string{fmt.Sprintf("%s:%d", d.md.Stream, d.md.Sequence.Stream)}
	if _, err := b.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(b.dlqStream(d.c.queue))); err != nil {
		return b.mapCtxErr(ctx, op, err)
	}
	if err := d.reply(ctx, op, ackBody); err != nil {
		return err
	}
	d.settled()
	return nil
}

// release gives the item back at once (Consumer.Close); on its last attempt
// it goes to the dead-letter queue instead.
func (d *delivery) release() {
	if !d.lease.Take() {
		return
	}
	if d.last() {
		d.moveDetached(fmt.Sprintf("max attempts (%d) exceeded: the consumer holding the last attempt closed", d.c.maxAttempts))
		return
	}
	_ = d.c.b.nc.Publish(d.msg.Reply(), nakBody)
}
