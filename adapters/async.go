package adapters

import "context"

// Pending is an enqueue in flight (see EnqueueAsync).
type Pending interface {
	// Wait returns nil once the message is durable, which is what Enqueue
	// returning nil means, or the error Enqueue would have returned. If ctx
	// ends first it returns ctx's error and the message may or may not be
	// stored; Wait may be called again, and returns the same outcome
	// every time once it is known. Wait is safe for concurrent use.
	Wait(ctx context.Context) error
}

// AsyncEnqueuer is implemented by brokers that can send an item and have
// the caller wait for the broker's acknowledgement later, so that one
// producer keeps many items in flight (nats.go's asynchronous publisher,
// for one). It is optional; use the function EnqueueAsync, which falls back
// to Enqueue.
type AsyncEnqueuer interface {
	// EnqueueAsync validates m as Enqueue does and sends it, returning
	// once it is sent or queued to be sent, before the broker has stored
	// it. Errors known before sending (an invalid message, a queue that
	// does not exist, a closed broker) are returned here, the others by
	// Pending.Wait. ctx is the enqueue's context: if it ends before Wait
	// returned nil, the outcome is unknown.
	EnqueueAsync(ctx context.Context, queue string, m Message) (Pending, error)
}

// EnqueueAsync stores m in the queue without waiting for the broker:
// nothing is durable until the returned Pending's Wait returns nil. It uses
// b's AsyncEnqueuer if it has one, else, once m passes ValidateMessage, an
// Enqueue on its own goroutine (at most 4,096 at a time in the process;
// past that EnqueueAsync waits for one to end, or for ctx). A producer that
// keeps a window of Pendings and waits for the oldest sends at the broker's
// pace instead of one round trip at a time.
func EnqueueAsync(ctx context.Context, b Broker, queue string, m Message) (Pending, error) {
	if ae, ok := b.(AsyncEnqueuer); ok {
		return ae.EnqueueAsync(ctx, queue, m)
	}
	caps := b.Capabilities()
	if err := ValidateMessage(caps.Name+": enqueue "+queue, m, caps); err != nil {
		return nil, err
	}
	select {
	case fallbackSlots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p := &enqueueing{done: make(chan struct{})}
	go func() {
		p.err = b.Enqueue(ctx, queue, m)
		<-fallbackSlots
		close(p.done)
	}()
	return p, nil
}

// fallbackSlots bounds the Enqueue calls EnqueueAsync runs on goroutines of
// their own, process-wide: past it, EnqueueAsync waits for room, as a
// native publisher waits for room in its window.
var fallbackSlots = make(chan struct{}, 4096)

// enqueueing is the Pending of an Enqueue running on its own goroutine.
type enqueueing struct {
	done chan struct{}
	err  error
}

func (p *enqueueing) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}
