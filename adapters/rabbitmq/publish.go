package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/clusterbus/clusterbus/adapters"
)

// Publishing is pipelined: concurrent publishes share a few channels in
// confirm mode (confirmers), each sent at once and waiting only for its own
// confirm, so RabbitMQ confirms many of them per frame (multiple acks)
// instead of one channel round trip per publish.
const (
	// confirmerBusy is how many publishes may wait on one confirmer before
	// the pool opens another, up to maxConfirmers.
	confirmerBusy = 64
	maxConfirmers = 16
)

// confirmer is a channel in confirm mode shared by concurrent publishes.
// Its listener matches each confirm to its publish by delivery tag, and
// each basic.return to its publish by a token in CorrelationId: RabbitMQ
// sends a mandatory publish's return before its confirm, and the client
// hands both, in that order, to the one listener (unbuffered channels, so
// the return is taken before the confirm is even sent).
type confirmer struct {
	ch  *amqp.Channel
	gen uint64

	sendMu sync.Mutex // held while publishing: tags follow registration order

	mu       sync.Mutex
	waits    map[uint64]*pubWait // by delivery tag, until confirmed or lost
	returned map[string]amqp.Return
	dead     bool        // the channel closed: no new publishes
	closeErr *amqp.Error // why, if the broker said
}

// pubWait is one publish waiting for its confirm.
type pubWait struct {
	token string
	done  chan struct{}
	// Set before done is closed:
	acked    bool         // the broker confirmed it (false: nacked or lost)
	lost     bool         // the channel closed before the confirm
	returned *amqp.Return // the broker returned it as unroutable
	closeErr *amqp.Error  // with lost: why the channel closed, if known
}

var pubTokens atomic.Uint64

// newConfirmer opens a confirm channel on the current connection and starts
// its listener.
func (b *Broker) newConfirmer(ctx context.Context) (*confirmer, error) {
	ch, gen, err := b.channel(ctx)
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		ch.Close()
		return nil, err
	}
	cf := &confirmer{ch: ch, gen: gen, waits: map[uint64]*pubWait{}, returned: map[string]amqp.Return{}}
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation))
	returns := ch.NotifyReturn(make(chan amqp.Return))
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))
	go cf.listen(confirms, returns, closes)
	return cf, nil
}

// listen resolves the confirmer's publishes until its channel closes, then
// fails the ones still waiting as lost. It must always be ready to receive:
// the client gives up on a notification nobody takes within 5 s, and a lost
// confirm would leave its publish waiting. So it only ever waits for cf.mu,
// which nobody holds while calling into the client.
func (cf *confirmer) listen(confirms <-chan amqp.Confirmation, returns <-chan amqp.Return, closes <-chan *amqp.Error) {
	for confirms != nil || returns != nil {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			cf.mu.Lock()
			cf.returned[r.CorrelationId] = r
			cf.mu.Unlock()
		case c, ok := <-confirms:
			if !ok {
				confirms = nil
				continue
			}
			cf.mu.Lock()
			w := cf.waits[c.DeliveryTag]
			delete(cf.waits, c.DeliveryTag)
			if w != nil {
				if r, ok := cf.returned[w.token]; ok {
					w.returned = &r
					delete(cf.returned, w.token)
				}
				w.acked = c.Ack
			}
			cf.mu.Unlock()
			if w != nil {
				close(w.done)
			}
		}
	}
	var why *amqp.Error
	select {
	case why = <-closes:
	default:
	}
	cf.mu.Lock()
	cf.dead = true
	cf.closeErr = why
	waits := cf.waits
	cf.waits = nil
	cf.mu.Unlock()
	for _, w := range waits {
		w.lost, w.closeErr = true, why
		close(w.done)
	}
}

// inflight is the number of publishes waiting on cf.
func (cf *confirmer) inflight() int {
	cf.mu.Lock()
	defer cf.mu.Unlock()
	return len(cf.waits)
}

// isDead reports whether cf's channel closed. It calls nothing of the
// client's under cf.mu (see send).
func (cf *confirmer) isDead() bool {
	cf.mu.Lock()
	dead := cf.dead
	cf.mu.Unlock()
	return dead || cf.ch.IsClosed()
}

// send publishes each of ps in order and registers its wait. It stops at
// the first publish that fails; the waits of those sent are returned with
// the error.
func (cf *confirmer) send(ctx context.Context, exchange, key string, mandatory bool, ps []amqp.Publishing) ([]*pubWait, error) {
	cf.sendMu.Lock()
	defer cf.sendMu.Unlock()
	waits := make([]*pubWait, 0, len(ps))
	for _, p := range ps {
		w := &pubWait{token: strconv.FormatUint(pubTokens.Add(1), 36), done: make(chan struct{})}
		p.CorrelationId = w.token
		// The tag is read outside cf.mu: the client's reader holds its own
		// lock on the sequence while it hands a confirm to the listener,
		// which may be waiting for cf.mu. (sendMu keeps the tag ours.)
		tag := cf.ch.GetNextPublishSeqNo()
		cf.mu.Lock()
		if cf.dead {
			cf.mu.Unlock()
			return waits, amqp.ErrClosed
		}
		cf.waits[tag] = w
		cf.mu.Unlock()
		if err := cf.ch.PublishWithContext(ctx, exchange, key, mandatory, false, p); err != nil {
			cf.mu.Lock()
			if cf.waits != nil {
				delete(cf.waits, tag)
			}
			cf.mu.Unlock()
			return waits, err
		}
		waits = append(waits, w)
	}
	return waits, nil
}

// confirmer returns a confirmer of the current connection for one more
// publish: the least busy, or a new one while all have confirmerBusy
// publishes waiting and there are fewer than maxConfirmers.
func (b *Broker) confirmer(ctx context.Context) (*confirmer, error) {
	b.mu.Lock()
	live := b.confirmers[:0]
	for _, cf := range b.confirmers {
		if cf.gen == b.gen && !cf.isDead() {
			live = append(live, cf)
		}
	}
	clear(b.confirmers[len(live):])
	b.confirmers = live
	var best *confirmer
	bestN := 0
	for _, cf := range live {
		if n := cf.inflight(); best == nil || n < bestN {
			best, bestN = cf, n
		}
	}
	if best != nil && (bestN < confirmerBusy || len(live) >= maxConfirmers) {
		b.mu.Unlock()
		return best, nil
	}
	b.mu.Unlock()
	cf, err := b.newConfirmer(ctx)
	if err != nil {
		if best != nil {
			return best, nil
		}
		return nil, err
	}
	b.mu.Lock()
	if b.closed || cf.gen != b.gen {
		b.mu.Unlock()
		cf.ch.Close()
		if b.closed {
			return nil, amqp.ErrClosed
		}
		return b.confirmer(ctx)
	}
	b.confirmers = append(b.confirmers, cf)
	b.mu.Unlock()
	return cf, nil
}

// errNoRoute is a publish that the broker returned as unroutable.
var errNoRoute = errors.New("no queue bound")

// publish sends p and waits for the broker's confirm; see publishBatch.
func (b *Broker) publish(ctx context.Context, exchange, key string, mandatory bool, p amqp.Publishing) error {
	return b.publishBatch(ctx, exchange, key, mandatory, []amqp.Publishing{p})
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

// publishBatch sends every publishing of ps to the same exchange and key
// on a shared confirm channel without waiting in between, then waits for
// their confirms. With mandatory, an unroutable publishing fails the batch
// with errNoRoute (the others are stored). A publishing cut off by a lost
// connection is sent again on the next one (so it may arrive twice), at most
// five times in a row; one the broker nacked is sent again after a backoff
// (maxNackRetries). A channel the broker closed over what was sent (a
// missing exchange, say) fails the batch with the broker's error. If ctx
// ends first, what was sent may still be stored.
func (b *Broker) publishBatch(ctx context.Context, exchange, key string, mandatory bool, ps []amqp.Publishing) error {
	nacks, losses := 0, 0
	var noRoute error
	// alone is set after the broker closed a shared channel over something
	// sent on it: which publish was at fault is not known, so the next
	// round goes on a channel of its own, where a fault is this batch's.
	alone := false
	for len(ps) > 0 {
		if losses == 5 {
			return fmt.Errorf("publish: connection lost %d times in a row", losses)
		}
		if b.isClosed() {
			return adapters.ErrClosed
		}
		var cf *confirmer
		var err error
		if alone {
			cf, err = b.newConfirmer(ctx)
		} else {
			cf, err = b.confirmer(ctx)
		}
		if err != nil {
			return err
		}
		waits, sendErr := cf.send(ctx, exchange, key, mandatory, ps)
		if alone {
			defer cf.ch.Close()
		}
		if sendErr != nil && ctx.Err() != nil {
			return ctx.Err()
		}
		if sendErr != nil && !isCode(sendErr, amqp.ChannelError) && !errors.Is(sendErr, amqp.ErrClosed) {
			return sendErr
		}
		var again []amqp.Publishing
		nacked, lost := false, false
		for i, w := range waits {
			select {
			case <-w.done:
			case <-ctx.Done():
				return ctx.Err()
			}
			switch {
			case w.lost:
				if w.closeErr != nil && isChannelFault(w.closeErr.Code) {
					if alone {
						return w.closeErr // the broker closed the channel over this batch
					}
					alone = true
				}
				lost = true
				again = append(again, ps[i])
			case w.returned != nil:
				noRoute = fmt.Errorf("%w: %d %s", errNoRoute, w.returned.ReplyCode, w.returned.ReplyText)
			case !w.acked:
				nacked = true
				again = append(again, ps[i])
			}
		}
		// Those never sent go again too.
		again = append(again, ps[len(waits):]...)
		if sendErr != nil {
			lost = true
		}
		ps = again
		switch {
		case len(ps) == 0:
		case lost:
			if b.isClosed() {
				return adapters.ErrClosed
			}
			losses++
		case nacked:
			if err := nackBackoff(ctx, &nacks, "a message"); err != nil {
				return err
			}
		}
	}
	return noRoute
}
