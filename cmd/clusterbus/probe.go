package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// queueProbe is the round trip that makes a node serving queues count
// itself connected (bus.Node.SetProbe): an enqueue the broker acknowledges
// as durable on the cluster's probe queue, then a receive that drains it
// (items of any node; each is acked). A NATS server cut off from its
// JetStream quorum relays heartbeats but fails here, so its nodes fence
// instead of answering 200 while every submission to them fails.
type queueProbe struct {
	mu    sync.Mutex // Probe and Close
	b     adapters.Broker
	queue string
	node  string
	cons  adapters.Consumer
	seq   int
}

// newQueueProbe declares the probe queue and returns the probe.
func newQueueProbe(ctx context.Context, b adapters.Broker, cluster, node string) (*queueProbe, error) {
	p := &queueProbe{b: b, queue: cluster + "-probe", node: node}
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: p.queue, Lease: 10 * time.Second, MaxAttempts: 100}); err != nil {
		return nil, fmt.Errorf("probe queue %s: %w", p.queue, err)
	}
	return p, nil
}

// Probe runs one round trip.
func (p *queueProbe) Probe(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seq++
	msg := adapters.Message{ID: fmt.Sprintf("probe:%s:%d:%d", p.node, time.Now().UnixNano(), p.seq), Body: []byte("{}")}
	if err := p.b.Enqueue(ctx, p.queue, msg); err != nil {
		return fmt.Errorf("queue probe: enqueue on %s: %w", p.queue, err)
	}
	if p.cons == nil {
		c, err := p.b.Consume(ctx, p.queue, adapters.ConsumeOptions{Prefetch: 1})
		if err != nil {
			return fmt.Errorf("queue probe: consume %s: %w", p.queue, err)
		}
		p.cons = c
	}
	// Drain what is there (another node may have taken this node's item;
	// this one takes theirs): an empty queue after the wait is fine.
	rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	d, err := p.cons.Receive(rctx)
	switch {
	case err == nil:
		if err := d.Ack(ctx); err != nil && !errors.Is(err, adapters.ErrLeaseLost) {
			return fmt.Errorf("queue probe: ack on %s: %w", p.queue, err)
		}
	case rctx.Err() != nil && ctx.Err() == nil:
		// Nothing to take within the wait: the enqueue was the round trip.
	default:
		p.cons.Close()
		p.cons = nil
		return fmt.Errorf("queue probe: receive on %s: %w", p.queue, err)
	}
	return nil
}

// Close releases the probe's consumer.
func (p *queueProbe) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cons != nil {
		p.cons.Close()
		p.cons = nil
	}
}
