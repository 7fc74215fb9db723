package main

import (
	"context"

	"github.com/clusterbus/clusterbus/adapters"
)

// countingBroker counts every Ack that returns nil on its consumers'
// deliveries, as the raw and adapter systems count after their own Ack
// returns: a workqueue's time ends when its last item is acked, not when
// its Workers have stopped.
type countingBroker struct {
	adapters.Broker
	c *counter
}

func (b countingBroker) Consume(ctx context.Context, queue string, opts adapters.ConsumeOptions) (adapters.Consumer, error) {
	cons, err := b.Broker.Consume(ctx, queue, opts)
	if err != nil {
		return nil, err
	}
	return countingConsumer{cons, b.c}, nil
}

type countingConsumer struct {
	adapters.Consumer
	c *counter
}

func (c countingConsumer) Receive(ctx context.Context) (adapters.Delivery, error) {
	d, err := c.Consumer.Receive(ctx)
	if err != nil {
		return nil, err
	}
	return countingDelivery{d, c.c}, nil
}

type countingDelivery struct {
	adapters.Delivery
	c *counter
}

func (d countingDelivery) Ack(ctx context.Context) error {
	err := d.Delivery.Ack(ctx)
	if err == nil {
		d.c.add()
	}
	return err
}
