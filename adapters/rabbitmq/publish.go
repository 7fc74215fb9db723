package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/clusterbus/clusterbus/adapters"
)

// pubChan is a channel in confirm mode used for one publish at a time, so
// that a basic.return seen before the confirm belongs to that publish.
type pubChan struct {
	ch      *amqp.Channel
	gen     uint64
	returns chan amqp.Return
	closes  chan *amqp.Error
}

// maxIdlePublishers bounds the idle confirm channels kept for reuse. Each
// concurrent Enqueue holds one channel, so the pool grows to the number of
// concurrent producers (up to this bound) instead of opening and closing a
// channel per publish beyond a small fixed pool.
const maxIdlePublishers = 256

func (b *Broker) getPub(ctx context.Context) (*pubChan, error) {
	b.mu.Lock()
	if n := len(b.pool); n > 0 {
		pc := b.pool[n-1]
		b.pool = b.pool[:n-1]
		b.mu.Unlock()
		return pc, nil
	}
	b.mu.Unlock()
	ch, gen, err := b.channel(ctx)
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		ch.Close()
		return nil, err
	}
	return &pubChan{ch: ch, gen: gen,
		returns: ch.NotifyReturn(make(chan amqp.Return, 1)),
		closes:  ch.NotifyClose(make(chan *amqp.Error, 1)),
	}, nil
}

func (b *Broker) putPub(pc *pubChan) {
	b.mu.Lock()
	if !b.closed && b.gen == pc.gen && !pc.ch.IsClosed() && len(b.pool) < maxIdlePublishers {
		b.pool = append(b.pool, pc)
		b.mu.Unlock()
		return
	}
	b.mu.Unlock()
	pc.ch.Close()
}

// errNoRoute is a publish that the broker returned as unroutable.
var errNoRoute = errors.New("no queue bound")

// publish sends p and waits for the broker's confirm. With mandatory, an
// unroutable message fails with errNoRoute. A publish cut off by a lost
// connection is sent again on the next one (so it may arrive twice); one
// the broker nacked is sent again after a backoff (maxNackRetries).
func (b *Broker) publish(ctx context.Context, exchange, key string, mandatory bool, p amqp.Publishing) error {
	nacks := 0
	for attempt := 0; ; attempt++ {
		if attempt == 5 {
			return fmt.Errorf("publish: connection lost %d times in a row", attempt)
		}
		pc, err := b.getPub(ctx)
		if err != nil {
			return err
		}
		conf, err := pc.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, mandatory, false, p)
		if err != nil {
			pc.ch.Close()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if isCode(err, amqp.ChannelError) || errors.Is(err, amqp.ErrClosed) {
				continue // channel or connection gone: retry on a new one
			}
			return err
		}
		ok, err := conf.WaitContext(ctx)
		if err != nil {
			pc.ch.Close() // a confirm is outstanding; don't reuse
			return err
		}
		if !ok {
			if pc.ch.IsClosed() {
				if b.isClosed() {
					return adapters.ErrClosed
				}
				select {
				case e := <-pc.closes:
					if e != nil && isChannelFault(e.Code) {
						return e // the broker closed the channel over this publish
					}
				default:
				}
				continue // lost with the connection: publish again
			}
			b.putPub(pc)
			if err := nackBackoff(ctx, &nacks, "the message"); err != nil {
				return err
			}
			attempt-- // not a lost connection
			continue
		}
		select {
		case r := <-pc.returns:
			b.putPub(pc)
			return fmt.Errorf("%w: %d %s", errNoRoute, r.ReplyCode, r.ReplyText)
		default:
		}
		b.putPub(pc)
		return nil
	}
}

// maxNackRetries bounds how often a publish the broker nacked is sent
// again. RabbitMQ nacks what a queue could not take, as a quorum queue
// without a leader just after a broker restart does, and its docs say to
// republish; after the last retry the error reaches the caller (an Enqueue,
// a delayed Nack, the delay mover), whose item is still where it was.
const maxNackRetries = 5

// nackBackoff counts a nack of what was published and waits before it is
// sent again: 50 ms, doubling, at most 800 ms (1.55 s over all five). It
// returns the error for the caller once maxNackRetries are used up, or
// ctx's error if ctx ends first.
func nackBackoff(ctx context.Context, nacks *int, what string) error {
	if *nacks >= maxNackRetries {
		return fmt.Errorf("broker refused %s (basic.nack, %d times)", what, *nacks+1)
	}
	t := time.NewTimer(min(50*time.Millisecond<<*nacks, 800*time.Millisecond))
	defer t.Stop()
	*nacks++
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// isChannelFault tells a channel closed because of what was sent (which a
// retry would repeat) from a lost connection.
func isChannelFault(code int) bool {
	switch code {
	case amqp.NotFound, amqp.AccessRefused, amqp.PreconditionFailed, amqp.ResourceLocked, amqp.NotAllowed:
		return true
	}
	return false
}

// publishBatch sends every publishing of ps on one confirm channel without
// waiting in between, then waits for all their confirms. Every publishing
// goes to the same exchange and key, so with mandatory either all are
// routed or a return fails the batch with errNoRoute. A batch cut off by a
// lost connection is sent again whole on the next one, and one with a
// nacked message again whole after a backoff (so items may arrive twice).
func (b *Broker) publishBatch(ctx context.Context, exchange, key string, mandatory bool, ps []amqp.Publishing) error {
	nacks := 0
	for attempt := 0; ; attempt++ {
		if attempt == 5 {
			return fmt.Errorf("publish: connection lost %d times in a row", attempt)
		}
		pc, err := b.getPub(ctx)
		if err != nil {
			return err
		}
		// Returns come before the confirms of their publishings; take them
		// off the channel's one-slot buffer while waiting so the client's
		// reader never blocks on it.
		var returned []amqp.Return
		stop, drained := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(drained)
			for {
				select {
				case r := <-pc.returns:
					returned = append(returned, r)
				case <-stop:
					return
				}
			}
		}()
		ok, retry, err := waitBatch(ctx, pc, exchange, key, mandatory, ps)
		close(stop)
		<-drained
	drain:
		for {
			select {
			case r := <-pc.returns:
				returned = append(returned, r)
			default:
				break drain
			}
		}
		if retry {
			continue
		}
		if err != nil {
			return err
		}
		if !ok {
			if pc.ch.IsClosed() {
				if b.isClosed() {
					return adapters.ErrClosed
				}
				select {
				case e := <-pc.closes:
					if e != nil && isChannelFault(e.Code) {
						return e
					}
				default:
				}
				continue // lost with the connection: publish again
			}
			b.putPub(pc)
			if err := nackBackoff(ctx, &nacks, "a message of the batch"); err != nil {
				return err
			}
			attempt-- // not a lost connection
			continue
		}
		b.putPub(pc)
		if len(returned) > 0 {
			r := returned[0]
			return fmt.Errorf("%w: %d %s", errNoRoute, r.ReplyCode, r.ReplyText)
		}
		return nil
	}
}

// waitBatch publishes ps on pc and waits for every confirm. ok is false if
// one was nacked or lost with the channel; retry is true if a publish
// failed because the channel or connection went away (pc is closed then).
func waitBatch(ctx context.Context, pc *pubChan, exchange, key string, mandatory bool, ps []amqp.Publishing) (ok, retry bool, err error) {
	confs := make([]*amqp.DeferredConfirmation, 0, len(ps))
	for _, p := range ps {
		conf, err := pc.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, mandatory, false, p)
		if err != nil {
			pc.ch.Close()
			if ctx.Err() != nil {
				return false, false, ctx.Err()
			}
			if isCode(err, amqp.ChannelError) || errors.Is(err, amqp.ErrClosed) {
				return false, true, nil
			}
			return false, false, err
		}
		confs = append(confs, conf)
	}
	ok = true
	for _, conf := range confs {
		acked, err := conf.WaitContext(ctx)
		if err != nil {
			pc.ch.Close() // confirms are outstanding; don't reuse
			return false, false, err
		}
		ok = ok && acked
	}
	return ok, false, nil
}
