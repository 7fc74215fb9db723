package rabbitmq

import (
	"context"
	"errors"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Delayed nacks. An item nacked with a delay is published (confirmed) to
// the quorum queue delayedName(source) with its due time in headerDue, and
// the original is acked. The items wait there until a mover moves them back:
// every Consumer of a queue keeps one mover running for its source queue in
// its Broker. The mover consumes the delay queue (moverPrefetch items at a
// time), holds each item until it is due (at most moverHorizon, after which
// a not-yet-due item is put back at the tail), publishes it to its queue
// (confirmed) and only then acks it. A mover that dies, or whose connection
// drops, leaves its items to RabbitMQ, which hands them to another mover;
// a crash between the publish and the ack repeats the item, never loses it.
//
// Earlier versions used a quorum delay queue per delay with a message TTL
// that dead-lettered back at-least-once. RabbitMQ 3.10 does not always
// resume that dead-lettering after the delay queue's leader dies: an item
// whose TTL ended as its leader node was killed sat in the queue, counted
// but neither ready nor dead-lettered, for longer than anyone waited (12
// minutes seen in production, and here more than 3 minutes after a kill
// -9 of one node of three). The client now does the timing: no broker-side
// timer or dead-lettering is involved.
const (
	headerDue     = "x-cb-due" // Unix milliseconds; x- headers are not user headers
	moverPrefetch = 256
	moverHorizon  = 30 * time.Second
)

func delayedName(source string) string { return source + ".delayed" }

// delayedArgs: a plain quorum queue; no TTL, no dead-lettering.
func delayedArgs() amqp.Table { return amqp.Table{"x-queue-type": "quorum"} }

type movers struct {
	mu sync.Mutex
	m  map[string]*mover
}

type mover struct {
	refs   int
	cancel context.CancelFunc
	done   chan struct{}
}

// acquireMover starts the mover of source's delay queue unless one runs
// in b; releaseMover stops it when its last consumer is gone.
func (b *Broker) acquireMover(source string) {
	b.movers.mu.Lock()
	defer b.movers.mu.Unlock()
	if b.movers.m == nil {
		b.movers.m = map[string]*mover{}
	}
	if m := b.movers.m[source]; m != nil {
		m.refs++
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &mover{refs: 1, cancel: cancel, done: make(chan struct{})}
	b.movers.m[source] = m
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		defer close(m.done)
		b.runMover(ctx, source)
	}()
}

func (b *Broker) releaseMover(source string) {
	b.movers.mu.Lock()
	m := b.movers.m[source]
	if m == nil {
		b.movers.mu.Unlock()
		return
	}
	m.refs--
	if m.refs > 0 {
		b.movers.mu.Unlock()
		return
	}
	delete(b.movers.m, source)
	b.movers.mu.Unlock()
	m.cancel()
	<-m.done
}

// runMover moves source's delayed items back when due, reconnecting until
// ctx ends or the Broker closes.
func (b *Broker) runMover(ctx context.Context, source string) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-b.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		err := b.moveOnce(ctx, source)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			b.log.Warn("rabbitmq: delay mover interrupted; restarting", "queue", source, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, b.opts.MaxBackoff)
	}
}

// moveOnce runs the mover on a connection of its own until it closes or
// ctx ends. Its own, because RabbitMQ 3.10 answers a basic.consume on a
// quorum queue whose process is not up yet (just declared, or restarting)
// with INTERNAL_ERROR, which closes the whole connection: on the Broker's
// connection that would cut every consumer and publisher with it.
func (b *Broker) moveOnce(ctx context.Context, source string) error {
	conn, err := b.dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	// amqp091's calls do not take a context: closing the connection is
	// what ends one that hangs when ctx ends, with a deadline since the
	// close handshake can hang as well (ci15: a basic.consume on the delay
	// queue went unanswered for 3.5 minutes after a cluster node came back,
	// and Consumer.Close waited on it).
	defer context.AfterFunc(ctx, func() { _ = conn.CloseDeadline(time.Now().Add(time.Second)) })()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	name := delayedName(source)
	if _, err := ch.QueueDeclarePassive(source, true, false, false, false, nil); err != nil {
		// The queue is gone (deleted): do not bring its delay queue back.
		return err
	}
	if _, err := ch.QueueDeclare(name, true, false, false, false, delayedArgs()); err != nil {
		return err
	}
	if err := ch.Qos(moverPrefetch, 0, false); err != nil {
		return err
	}
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))
	select { // a quorum queue just declared may not be up yet (see above)
	case <-ctx.Done():
		return nil
	case <-time.After(100 * time.Millisecond):
	}
	dch, err := ch.Consume(name, "", false, false, false, false, nil)
	if err != nil {
		return err
	}
	// Items held wait on chDone; when the channel dies RabbitMQ returns
	// them to the delay queue, so they must not be moved after that.
	chDone := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(chDone); wg.Wait() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e := <-closes:
			if e == nil {
				return errors.New("channel closed")
			}
			return e
		case d, ok := <-dch:
			if !ok {
				return errors.New("delay queue consumer cancelled")
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				b.moveWhenDue(ctx, chDone, source, name, d)
			}()
		}
	}
}

// moveWhenDue holds d until it is due (at most moverHorizon) and moves it
// to source, or back to the tail of the delay queue if it is not due yet.
func (b *Broker) moveWhenDue(ctx context.Context, chDone <-chan struct{}, source, name string, d amqp.Delivery) {
	due := time.UnixMilli(int64(intHeader(d.Headers, headerDue)))
	wait := min(time.Until(due), moverHorizon)
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-chDone:
			return
		case <-ctx.Done():
			return
		}
	}
	to := source
	if time.Now().Before(due) {
		to = name // not due: to the tail, so the items behind it get their turn
	}
	h := amqp.Table{}
	for k, v := range d.Headers {
		// RabbitMQ's counts in the delay queue are not the item's.
		if k == "x-delivery-count" || k == "x-death" || (to == source && k == headerDue) {
			continue
		}
		h[k] = v
	}
	p := amqp.Publishing{Headers: h, ContentType: d.ContentType, DeliveryMode: amqp.Persistent,
		MessageId: d.MessageId, Timestamp: d.Timestamp, Body: d.Body}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := b.publish(pctx, "", to, true, p); err != nil {
		if errors.Is(err, errNoRoute) {
			b.log.Error("rabbitmq: a delayed item's queue does not exist; the item stays in its delay queue",
				"queue", to, "delay_queue", name, "id", d.MessageId)
		}
		// Left unacked: it returns to the delay queue with the channel.
		return
	}
	// Confirmed where it goes: a failed ack repeats it, never loses it.
	_ = d.Ack(false)
}
