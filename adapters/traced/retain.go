package traced

import (
	"context"
	"fmt"

	"github.com/clusterbus/clusterbus/adapters"
)

var _ adapters.Retainer = (*Broker)(nil)

// Retain passes through to the wrapped broker (adapters.ErrUnsupported if
// it keeps nothing; see adapters.RetainerOf). Retained values carry no
// trace context.
func (b *Broker) Retain(ctx context.Context, log, key string, value []byte) error {
	r, ok := adapters.RetainerOf(b.inner)
	if !ok {
		return adapters.Errorf(adapters.ErrUnsupported, fmt.Sprintf("traced: retain %q", log), "%s retains nothing", b.system)
	}
	return r.Retain(ctx, log, key, value)
}

// Retained passes through to the wrapped broker.
func (b *Broker) Retained(ctx context.Context, log string) (map[string][]byte, error) {
	r, ok := adapters.RetainerOf(b.inner)
	if !ok {
		return nil, adapters.Errorf(adapters.ErrUnsupported, fmt.Sprintf("traced: retained %q", log), "%s retains nothing", b.system)
	}
	return r.Retained(ctx, log)
}

// Forget passes through to the wrapped broker.
func (b *Broker) Forget(ctx context.Context, log, key string) error {
	r, ok := adapters.RetainerOf(b.inner)
	if !ok {
		return adapters.Errorf(adapters.ErrUnsupported, fmt.Sprintf("traced: forget %q", log), "%s retains nothing", b.system)
	}
	return r.Forget(ctx, log, key)
}
