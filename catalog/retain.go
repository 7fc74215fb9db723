package catalog

import (
	"context"
	"encoding/json"

	"github.com/clusterbus/clusterbus/adapters"
)

// retainEntry keeps e as its key's last value in the broker.
func (c *Catalog) retainEntry(ctx context.Context, e Entry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return adapters.Wrap(adapters.ErrInvalidArgument, "catalog: encode", err)
	}
	return c.retain.Retain(ctx, c.retainedLog(), e.Key, b)
}

// loadRetained merges the broker's retained copy, validated like a peer's
// entries.
func (c *Catalog) loadRetained(ctx context.Context) error {
	m, err := c.retain.Retained(ctx, c.retainedLog())
	if err != nil {
		return err
	}
	es := make([]Entry, 0, len(m))
	for k, v := range m {
		var e Entry
		if json.Unmarshal(v, &e) != nil || e.Key != k {
			c.reject("broker", reasonMalformed, "retained value of "+truncate(k))
			continue
		}
		es = append(es, e)
	}
	c.mergeRemote("broker", es)
	c.log.Debug("catalog loaded from the broker", "entries", len(es))
	return nil
}
