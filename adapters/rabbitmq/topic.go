package rabbitmq

import (
	"context"
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/clusterbus/clusterbus/adapters"
)

// subscriptionPrefetch bounds the messages in flight to a subscription.
const subscriptionPrefetch = 256

// exchangeName is the fanout exchange of a topic.
func exchangeName(topic string) string { return "cb.t." + topic }

// ensureExchange declares the topic's exchange once per connection.
func (b *Broker) ensureExchange(ctx context.Context, ex string) error {
	b.mu.Lock()
	gen, ok := b.declared[ex]
	cur := b.gen
	b.mu.Unlock()
	if ok && gen == cur {
		return nil
	}
	ch, gen, err := b.channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close()
	if err := ch.ExchangeDeclare(ex, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		return err
	}
	b.mu.Lock()
	b.declared[ex] = gen
	b.mu.Unlock()
	return nil
}

// Publish sends m to the topic's fanout exchange and waits for the broker's
// confirm. Subscribers that are not connected miss it.
func (b *Broker) Publish(ctx context.Context, topic string, m adapters.Message) error {
	op := "rabbitmq: publish " + topic
	if b.isClosed() {
		return adapters.Errorf(adapters.ErrClosed, op, "broker closed")
	}
	if err := adapters.ValidateName("topic", topic); err != nil {
		return adapters.Wrap(adapters.ErrInvalidArgument, op, err)
	}
	if err := adapters.ValidateMessage(op, m, b.caps); err != nil {
		return err
	}
	if m.ID == "" {
		m.ID = newID()
	}
	ex := exchangeName(topic)
	if err := b.ensureExchange(ctx, ex); err != nil {
		return mapErr(op, err)
	}
	return mapErr(op, b.publish(ctx, ex, "", false, toPublishing(m, false)))
}

// Subscribe binds an exclusive, auto-deleted, server-named queue to the
// topic's exchange. After a reconnect it binds a new queue and the next
// Receive reports adapters.ErrGap.
func (b *Broker) Subscribe(ctx context.Context, topic string) (adapters.Subscription, error) {
	op := "rabbitmq: subscribe " + topic
	if b.isClosed() {
		return nil, adapters.Errorf(adapters.ErrClosed, op, "broker closed")
	}
	if err := adapters.ValidateName("topic", topic); err != nil {
		return nil, adapters.Wrap(adapters.ErrInvalidArgument, op, err)
	}
	s := &subscription{b: b, op: op, exchange: exchangeName(topic), out: make(chan adapters.Message, 256), gap: make(chan struct{}, 1), done: make(chan struct{})}
	ch, dch, err := s.setup(ctx)
	if err != nil {
		return nil, mapErr(op, err)
	}
	b.wg.Add(1)
	go s.run(ch, dch)
	return s, nil
}

type subscription struct {
	b        *Broker
	op       string
	exchange string
	out      chan adapters.Message
	gap      chan struct{} // holds a token after a reconnect
	done     chan struct{}
	once     sync.Once
}

func (s *subscription) setup(ctx context.Context) (*amqp.Channel, <-chan amqp.Delivery, error) {
	if err := s.b.ensureExchange(ctx, s.exchange); err != nil {
		return nil, nil, err
	}
	ch, _, err := s.b.channel(ctx)
	if err != nil {
		return nil, nil, err
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err == nil {
		err = ch.QueueBind(q.Name, "", s.exchange, false, nil)
	}
	// Manual acks under a prefetch window keep a slow subscriber's backlog
	// in its RabbitMQ queue rather than in this process's memory.
	if err == nil {
		err = ch.Qos(subscriptionPrefetch, 0, false)
	}
	var dch <-chan amqp.Delivery
	if err == nil {
		dch, err = ch.Consume(q.Name, "", false, true, false, false, nil)
	}
	if err != nil {
		ch.Close()
		return nil, nil, err
	}
	return ch, dch, nil
}

func (s *subscription) run(ch *amqp.Channel, dch <-chan amqp.Delivery) {
	defer s.b.wg.Done()
	for {
	forward:
		for {
			select {
			case d, ok := <-dch:
				if !ok {
					break forward
				}
				select {
				case s.out <- fromDelivery(&d):
					d.Ack(false) // an error means the channel died: handled below
				case <-s.done:
					ch.Close()
					return
				case <-s.b.done:
					return
				}
			case <-s.done:
				ch.Close()
				return
			case <-s.b.done:
				return
			}
		}
		// The channel or connection died: messages may be lost.
		select {
		case s.gap <- struct{}{}:
		default:
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-s.done:
			case <-s.b.done:
			case <-ctx.Done():
			}
			cancel()
		}()
		var err error
		for attempt := 0; ; attempt++ {
			ch, dch, err = s.setup(ctx)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return
			}
			s.b.log.Warn("rabbitmq: resubscribe failed", "exchange", s.exchange, "err", err)
			select {
			case <-ctx.Done():
				return
			default:
			}
			if !s.b.sleep(backoff(attempt, s.b.opts.MaxBackoff)) {
				cancel()
				return
			}
		}
		cancel()
		s.b.log.Info("rabbitmq: resubscribed", "exchange", s.exchange)
	}
}

// Receive returns the next message; adapters.ErrGap once after a
// reconnect; adapters.ErrClosed after Close.
func (s *subscription) Receive(ctx context.Context) (adapters.Message, error) {
	if s.closed() {
		return adapters.Message{}, adapters.Errorf(adapters.ErrClosed, s.op, "subscription closed")
	}
	select {
	case <-s.gap:
		return adapters.Message{}, adapters.Errorf(adapters.ErrGap, s.op, "connection to the broker was lost")
	default:
	}
	select {
	case <-s.gap:
		return adapters.Message{}, adapters.Errorf(adapters.ErrGap, s.op, "connection to the broker was lost")
	case m := <-s.out:
		return m, nil
	case <-ctx.Done():
		return adapters.Message{}, ctx.Err()
	case <-s.done:
	case <-s.b.done:
	}
	return adapters.Message{}, adapters.Errorf(adapters.ErrClosed, s.op, "subscription closed")
}

func (s *subscription) closed() bool {
	select {
	case <-s.done:
		return true
	case <-s.b.done:
		return true
	default:
		return false
	}
}

// Close ends the subscription; its queue is deleted by the broker.
func (s *subscription) Close() error {
	s.once.Do(func() { close(s.done) })
	return nil
}
