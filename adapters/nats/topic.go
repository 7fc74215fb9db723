package nats

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/clusterbus/clusterbus/adapters"
)

// subBuffer is how many messages a subscription holds before it drops and
// reports a gap.
const subBuffer = 4096

// Publish implements adapters.Broker with a core NATS publish: at most once,
// to the subscribers connected now.
func (b *Broker) Publish(ctx context.Context, topic string, m adapters.Message) error {
	op := "publish " + topic
	if err := b.check(ctx, op); err != nil {
		return err
	}
	if err := adapters.ValidateName("topic", topic); err != nil {
		return err
	}
	if err := adapters.ValidateMessage("nats: "+op, m, b.caps); err != nil {
		return err
	}
	msg := encode(b.topicSubject(topic), m)
	return b.mapErr(op, b.nc.PublishMsg(msg))
}

// Subscribe implements adapters.Broker. It returns once the server has
// registered the subscription, so that a message published afterwards by
// anyone reaches it.
func (b *Broker) Subscribe(ctx context.Context, topic string) (adapters.Subscription, error) {
	op := "subscribe " + topic
	if err := b.check(ctx, op); err != nil {
		return nil, err
	}
	if err := adapters.ValidateName("topic", topic); err != nil {
		return nil, err
	}
	s := &subscription{
		b:      b,
		topic:  topic,
		msgs:   make(chan adapters.Message, subBuffer),
		gap:    make(chan struct{}, 1),
		closed: make(chan struct{}),
	}
	sub, err := b.nc.Subscribe(b.topicSubject(topic), s.deliver)
	if err != nil {
		return nil, b.mapErr(op, err)
	}
	s.sub = sub
	if err := flush(ctx, b.nc); err != nil {
		_ = sub.Unsubscribe()
		return nil, b.mapCtxErr(ctx, op, err)
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		_ = sub.Unsubscribe()
		return nil, b.closedErr(op)
	}
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	return s, nil
}

// flush waits until the server has processed everything sent so far.
func flush(ctx context.Context, nc *nats.Conn) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
	}
	return nc.FlushWithContext(ctx)
}

type subscription struct {
	b     *Broker
	topic string
	sub   *nats.Subscription
	msgs  chan adapters.Message
	gap   chan struct{} // holds a token while a gap is unreported

	closeOnce sync.Once
	closed    chan struct{}
}

func (s *subscription) deliver(msg *nats.Msg) {
	select {
	case s.msgs <- decode(msg, false):
	default:
		s.markGap()
	}
}

func (s *subscription) markGap() {
	select {
	case s.gap <- struct{}{}:
	default:
	}
}

func (s *subscription) closedErr() error {
	return errf(adapters.ErrClosed, "subscription "+s.topic+": receive", "subscription closed")
}

// Receive implements adapters.Subscription. A reconnect, a disconnect or a
// full buffer is reported once as an error matching adapters.ErrGap.
func (s *subscription) Receive(ctx context.Context) (adapters.Message, error) {
	select {
	case <-s.closed:
		return adapters.Message{}, s.closedErr()
	default:
	}
	select {
	case <-s.gap:
		return adapters.Message{}, errf(adapters.ErrGap, "subscription "+s.topic, "reconnect or full buffer")
	default:
	}
	select {
	case m := <-s.msgs:
		return m, nil
	case <-s.gap:
		return adapters.Message{}, errf(adapters.ErrGap, "subscription "+s.topic, "reconnect or full buffer")
	case <-s.closed:
		return adapters.Message{}, s.closedErr()
	case <-ctx.Done():
		return adapters.Message{}, ctx.Err()
	}
}

// Close implements adapters.Subscription.
func (s *subscription) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		_ = s.sub.Unsubscribe()
		s.b.mu.Lock()
		delete(s.b.subs, s)
		s.b.mu.Unlock()
	})
	return nil
}
