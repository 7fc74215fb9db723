package kafka

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/clusterbus/clusterbus/adapters"
)

// Publish sends m to every current subscriber of topic. The Kafka topic is
// created, with one partition, if it does not exist.
func (b *Broker) Publish(ctx context.Context, topic string, m adapters.Message) error {
	op := fmt.Sprintf("kafka: publish %q", topic)
	if err := b.checkOpen(op); err != nil {
		return err
	}
	if err := adapters.ValidateName("topic", topic); err != nil {
		return err
	}
	if err := adapters.ValidateMessage(op, m, capabilities); err != nil {
		return err
	}
	name := b.topicName(topic)
	if err := b.createTopics(ctx, op, b.topicConfig(name, 1)); err != nil {
		return err
	}
	return b.write(ctx, op, encode(name, m))
}

// Subscribe reads topic from its current end: one reader per partition,
// positioned at the end offset the broker reports when Subscribe runs, so
// every message published after Subscribe returns is delivered.
func (b *Broker) Subscribe(ctx context.Context, topic string) (adapters.Subscription, error) {
	op := fmt.Sprintf("kafka: subscribe %q", topic)
	if err := b.checkOpen(op); err != nil {
		return nil, err
	}
	if err := adapters.ValidateName("topic", topic); err != nil {
		return nil, err
	}
	name := b.topicName(topic)
	if err := b.createTopics(ctx, op, b.topicConfig(name, 1)); err != nil {
		return nil, err
	}
	var parts []int
	var ends map[int]int64
	// Right after creation the metadata may lag; retry briefly.
	for attempt := 0; ; attempt++ {
		var err error
		parts, err = b.partitions(ctx, name)
		if err == nil {
			ends, err = b.endOffsets(ctx, name, parts)
		}
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if attempt >= 20 {
			return nil, mapCtxErr(ctx, op, err)
		}
		if !sleepCtx(ctx, 100*time.Millisecond) {
			return nil, ctx.Err()
		}
	}
	sctx, cancel := context.WithCancel(context.Background())
	s := &subscription{b: b, topic: topic, ch: make(chan subItem, 256), ctx: sctx, cancel: cancel}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		cancel()
		return nil, adapters.Errorf(adapters.ErrClosed, op, "broker is closed")
	}
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	for _, p := range parts {
		r := kafkago.NewReader(kafkago.ReaderConfig{
			Brokers:        b.cfg.Brokers,
			Dialer:         b.dialer,
			Topic:          name,
			Partition:      p,
			MinBytes:       1,
			MaxBytes:       maxBatchBytes * 4,
			MaxWait:        500 * time.Millisecond,
			ReadBackoffMin: 50 * time.Millisecond,
			ReadBackoffMax: time.Second,
			MaxAttempts:    3,
			// kafka-go retries lost connections itself and reports them
			// only here; any such error may mean missed messages (or a
			// skipped range if the offset fell out of retention).
			ErrorLogger: kafkago.LoggerFunc(func(f string, a ...any) {
				s.gap.Store(true)
				b.log.Debug("subscription reader: "+fmt.Sprintf(f, a...), "topic", topic)
			}),
		})
		if err := r.SetOffset(ends[p]); err != nil {
			_ = r.Close()
			_ = s.Close()
			return nil, mapCtxErr(ctx, op, err)
		}
		s.wg.Go(func() { s.read(r) })
	}
	return s, nil
}

type subscription struct {
	b      *Broker
	topic  string
	ch     chan subItem
	gap    atomic.Bool // set when a reader may have missed messages
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

func (s *subscription) read(r *kafkago.Reader) {
	defer r.Close()
	var dials int64
	for {
		km, err := r.FetchMessage(s.ctx)
		// kafka-go reconnects on its own, and not every reconnect is
		// logged; a second dial means the connection was lost.
		if dials += r.Stats().Dials; dials > 1 {
			s.gap.Store(true)
			dials = 1
		}
		// The gap goes in line, ahead of the messages read after it, so a
		// Receive already waiting sees it first.
		if s.gap.Swap(false) && !s.send(subItem{gap: true}) {
			return
		}
		if err != nil {
			if s.ctx.Err() != nil {
				return
			}
			s.gap.Store(true)
			s.b.log.Warn("subscription fetch failed; retrying", "topic", s.topic, "err", err)
			if !sleepCtx(s.ctx, 200*time.Millisecond) {
				return
			}
			continue
		}
		m, _, _ := decode(km)
		if !s.send(subItem{m: m}) {
			return
		}
	}
}

// subItem is a message, or a report that messages may have been missed.
type subItem struct {
	m   adapters.Message
	gap bool
}

func (s *subscription) send(it subItem) bool {
	select {
	case s.ch <- it:
		return true
	case <-s.ctx.Done():
		return false
	}
}

// Receive returns the next message. After a lost connection it first
// returns an error matching ErrGap once, then goes on with the messages.
func (s *subscription) Receive(ctx context.Context) (adapters.Message, error) {
	op := fmt.Sprintf("kafka: receive topic %q", s.topic)
	if err := ctx.Err(); err != nil {
		return adapters.Message{}, err
	}
	if s.ctx.Err() != nil {
		return adapters.Message{}, adapters.Errorf(adapters.ErrClosed, op, "subscription is closed")
	}
	select {
	case <-ctx.Done():
		return adapters.Message{}, ctx.Err()
	case <-s.ctx.Done():
		return adapters.Message{}, adapters.Errorf(adapters.ErrClosed, op, "subscription is closed")
	case it := <-s.ch:
		if it.gap {
			return adapters.Message{}, adapters.Errorf(adapters.ErrGap, op, "the connection to Kafka was interrupted")
		}
		return it.m, nil
	}
}

// Close ends the subscription.
func (s *subscription) Close() error {
	s.once.Do(func() {
		s.cancel()
		s.wg.Wait()
		s.b.mu.Lock()
		delete(s.b.subs, s)
		s.b.mu.Unlock()
	})
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
