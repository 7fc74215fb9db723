package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/rabbitmq"
)

// rabbitURL is the RabbitMQ the rabbit-* systems use (-rabbit).
var rabbitURL = "amqp://guest:guest@127.0.0.1:5672/"

// runRabbitRaw is amqp091-go used at its best for the same guarantees: a
// quorum queue, every producer on its own confirm channel with up to 64
// publishes awaiting their confirms (all awaited before it counts as done),
// consumers with basic.qos(prefetch) and one ack per delivery.
func runRabbitRaw(ctx context.Context, url string, cfg config, drain bool) (time.Duration, error) {
	return runRabbitRawWith(ctx, url, cfg, drain, 64)
}

// runRabbitRawWith is runRabbitRaw with up to window publishes per producer
// awaiting their confirms; window 1 is the adapter's guarantee (each call
// waits for its own confirm), shown for diagnosis as rabbit-raw-sync.
func runRabbitRawWith(ctx context.Context, _ string, cfg config, drain bool, window int) (time.Duration, error) {
	conn, err := amqp.Dial(rabbitURL)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return 0, err
	}
	q := uniqueName("bench-raw-")
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
		return 0, err
	}
	defer func() {
		if ch, err := conn.Channel(); err == nil {
			ch.QueueDelete(q, false, false, false)
			ch.Close()
		}
	}()
	body := make([]byte, cfg.size)
	c := newCounter(cfg.items)
	var conns []*amqp.Connection
	defer func() {
		for _, cn := range conns {
			cn.Close()
		}
	}()
	start := func() error {
		for range cfg.consumers {
			cn, err := amqp.Dial(rabbitURL)
			if err != nil {
				return err
			}
			conns = append(conns, cn)
			cch, err := cn.Channel()
			if err != nil {
				return err
			}
			if err := cch.Qos(cfg.prefetch, 0, false); err != nil {
				return err
			}
			dch, err := cch.Consume(q, "", false, false, false, false, nil)
			if err != nil {
				return err
			}
			go func() {
				for d := range dch {
					if d.Ack(false) == nil {
						c.add()
					}
				}
			}()
		}
		return nil
	}
	// Producers: each takes a confirm channel of its own on first use.
	type prod struct {
		ch      *amqp.Channel
		pending []*amqp.DeferredConfirmation
	}
	var mu sync.Mutex
	var pool []*prod
	var all []*prod
	flush := func(p *prod) error {
		for _, dc := range p.pending {
			ok, err := dc.WaitContext(ctx)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("nacked")
			}
		}
		p.pending = p.pending[:0]
		return nil
	}
	enqueue := func(i int) error {
		mu.Lock()
		var p *prod
		if n := len(pool); n > 0 {
			p, pool = pool[n-1], pool[:n-1]
		}
		mu.Unlock()
		if p == nil {
			pch, err := conn.Channel()
			if err != nil {
				return err
			}
			if err := pch.Confirm(false); err != nil {
				return err
			}
			p = &prod{ch: pch}
			mu.Lock()
			all = append(all, p)
			mu.Unlock()
		}
		dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, "", q, false, false,
			amqp.Publishing{DeliveryMode: amqp.Persistent, MessageId: fmt.Sprint(i), Body: body})
		if err != nil {
			return err
		}
		p.pending = append(p.pending, dc)
		if len(p.pending) >= window {
			if err := flush(p); err != nil {
				return err
			}
		}
		mu.Lock()
		pool = append(pool, p)
		mu.Unlock()
		return nil
	}
	t0, err := measureWith(ctx, cfg, drain, start, enqueue, func() error {
		for _, p := range all {
			if err := flush(p); err != nil {
				return err
			}
		}
		return nil
	}, c)
	return time.Since(t0), err
}

// runRabbitAdapter is the clusterbus RabbitMQ adapter: Enqueue from the
// producers on one Broker, one Broker per consumer with Prefetch -prefetch
// and one Receive/Ack loop.
func runRabbitAdapter(ctx context.Context, url string, cfg config, drain bool) (time.Duration, error) {
	return runRabbitAdapterWith(ctx, url, cfg, drain, 1)
}

func runRabbitAdapterWith(ctx context.Context, _ string, cfg config, drain bool, batch int) (time.Duration, error) {
	open := func() (*rabbitmq.Broker, error) {
		return rabbitmq.Open(ctx, rabbitURL, rabbitmq.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	}
	pb, err := open()
	if err != nil {
		return 0, err
	}
	defer pb.Close()
	q := uniqueName("bench-adapter-")
	if err := pb.DeclareQueue(ctx, adapters.QueueConfig{Name: q}); err != nil {
		return 0, err
	}
	defer pb.DeleteQueue(context.Background(), q)
	body := make([]byte, cfg.size)
	c := newCounter(cfg.items)
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var brokers []*rabbitmq.Broker
	defer func() {
		cancel()
		wg.Wait()
		for _, b := range brokers {
			b.Close()
		}
	}()
	start := func() error {
		for range cfg.consumers {
			b, err := open()
			if err != nil {
				return err
			}
			brokers = append(brokers, b)
			cons, err := b.Consume(ctx, q, adapters.ConsumeOptions{Prefetch: cfg.prefetch})
			if err != nil {
				return err
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer cons.Close()
				for {
					d, err := cons.Receive(rctx)
					if err != nil {
						return
					}
					if d.Ack(rctx) == nil {
						c.add()
					}
				}
			}()
		}
		return nil
	}
	enqueue, produced := adapterProducer(ctx, pb, q, cfg, body, batch)
	t0, err := measureWith(ctx, cfg, drain, start, enqueue, produced, c)
	return time.Since(t0), err
}
