package sqs

import (
	"context"
	"sync"
)

// batcher coalesces concurrent calls into SQS batch requests (group
// commit): a call waits until the batch that holds its item has been
// answered, so a call that returns nil has been done by SQS. A lone call is
// sent at once, never held back to wait for company.
type batcher[T any] struct {
	maxN     int
	maxBytes int
	flush    func(ctx context.Context, items []T) []error
	opCtx    func() (context.Context, context.CancelFunc)

	mu      sync.Mutex
	pending []*batchOp[T]
	running bool
}

type batchOp[T any] struct {
	ctx  context.Context
	item T
	size int
	err  error
	done chan struct{}
}

// do queues item and waits for its result. If ctx ends before the item was
// sent, it is not sent; if ctx ends after, do returns ctx.Err() and the
// item may have been done.
func (bt *batcher[T]) do(ctx context.Context, item T, size int) error {
	return bt.doAll(ctx, []T{item}, []int{size})[0]
}

// doAll queues every item at once (in order, so they share requests) and
// waits for their results, as do does for one.
func (bt *batcher[T]) doAll(ctx context.Context, items []T, sizes []int) []error {
	ops := make([]*batchOp[T], len(items))
	for i, item := range items {
		ops[i] = &batchOp[T]{ctx: ctx, item: item, size: sizes[i], done: make(chan struct{})}
	}
	bt.mu.Lock()
	bt.pending = append(bt.pending, ops...)
	if !bt.running {
		bt.running = true
		go bt.run()
	}
	bt.mu.Unlock()
	errs := make([]error, len(ops))
	for i, op := range ops {
		select {
		case <-op.done:
			errs[i] = op.err
		case <-ctx.Done():
			errs[i] = ctx.Err()
		}
	}
	return errs
}

func (bt *batcher[T]) run() {
	for {
		bt.mu.Lock()
		var batch []*batchOp[T]
		bytes := 0
		rest := bt.pending[:0]
		for _, op := range bt.pending {
			switch {
			case op.ctx.Err() != nil:
				op.err = op.ctx.Err()
				close(op.done)
			case len(batch) < bt.maxN && (len(batch) == 0 || bytes+op.size <= bt.maxBytes):
				batch = append(batch, op)
				bytes += op.size
			default:
				rest = append(rest, op)
			}
		}
		clear(bt.pending[len(rest):])
		bt.pending = rest
		if len(batch) == 0 {
			bt.running = false
			bt.mu.Unlock()
			return
		}
		bt.mu.Unlock()

		items := make([]T, len(batch))
		for i, op := range batch {
			items[i] = op.item
		}
		ctx, cancel := bt.opCtx()
		errs := bt.flush(ctx, items)
		cancel()
		for i, op := range batch {
			op.err = errs[i]
			close(op.done)
		}
	}
}
