package mem

import (
	"context"
	"fmt"

	"github.com/clusterbus/clusterbus/adapters"
)

var _ adapters.Retainer = (*Broker)(nil)

// Retain implements adapters.Retainer: the server keeps key's last value
// of log for as long as it lives (Restart keeps it).
func (b *Broker) Retain(ctx context.Context, log, key string, value []byte) error {
	op := fmt.Sprintf("mem: retain %q", log)
	if err := adapters.ValidateRetained(op, log, key); err != nil {
		return err
	}
	if b.srv.caps.MaxMessageSize > 0 && len(value)+len(key) > b.srv.caps.MaxMessageSize {
		return adapters.Errorf(adapters.ErrTooLarge, op, "%d bytes, limit %d", len(value)+len(key), b.srv.caps.MaxMessageSize)
	}
	if err := b.start(ctx, op, "topic", log); err != nil {
		return err
	}
	defer b.srv.mu.Unlock()
	if b.srv.retained == nil {
		b.srv.retained = map[string]map[string][]byte{}
	}
	m := b.srv.retained[log]
	if m == nil {
		m = map[string][]byte{}
		b.srv.retained[log] = m
	}
	m[key] = append([]byte{}, value...)
	return nil
}

// Retained implements adapters.Retainer.
func (b *Broker) Retained(ctx context.Context, log string) (map[string][]byte, error) {
	op := fmt.Sprintf("mem: retained %q", log)
	if err := b.start(ctx, op, "topic", log); err != nil {
		return nil, err
	}
	defer b.srv.mu.Unlock()
	out := make(map[string][]byte, len(b.srv.retained[log]))
	for k, v := range b.srv.retained[log] {
		out[k] = append([]byte{}, v...)
	}
	return out, nil
}

// Forget implements adapters.Retainer.
func (b *Broker) Forget(ctx context.Context, log, key string) error {
	op := fmt.Sprintf("mem: forget %q", log)
	if err := adapters.ValidateRetained(op, log, key); err != nil {
		return err
	}
	if err := b.start(ctx, op, "topic", log); err != nil {
		return err
	}
	defer b.srv.mu.Unlock()
	delete(b.srv.retained[log], key)
	return nil
}
