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

// retainedCopy is what Start read from the broker: the valid entries by
// key, and the keys to forget (values that do not decode or validate, and
// expired entries).
type retainedCopy struct {
	entries map[string]Entry
	forget  []string
}

// loadRetained merges the broker's retained copy, validated like a peer's
// entries.
func (c *Catalog) loadRetained(ctx context.Context) (retainedCopy, error) {
	rc := retainedCopy{entries: map[string]Entry{}}
	m, err := c.retain.Retained(ctx, c.retainedLog())
	if err != nil {
		return rc, err
	}
	now := c.clock.Now()
	es := make([]Entry, 0, len(m))
	for k, v := range m {
		var e Entry
		if json.Unmarshal(v, &e) != nil || e.Key != k {
			c.reject("broker", reasonMalformed, "retained value of "+truncate(k))
			rc.forget = append(rc.forget, k)
			continue
		}
		if r := c.validEntry(e, now); r != "" {
			c.reject("broker", r, "retained entry "+truncate(k))
			if r != reasonClock { // maybe a skewed clock: leave it
				rc.forget = append(rc.forget, k)
			}
			continue
		}
		if c.cfg.Expire != nil && c.cfg.Expire(e, now) {
			rc.forget = append(rc.forget, k)
			continue
		}
		rc.entries[k] = e
		es = append(es, e)
	}
	c.mergeLocal(es, true)
	c.log.Debug("catalog loaded from the broker", "entries", len(es), "to_forget", len(rc.forget))
	return rc, nil
}

// repairRetained runs once after Start: it forgets the retained values
// that are invalid or expired, and retains the local entries that win over
// the retained copy (a node's data dir may hold writes the broker never
// kept: a Put whose Retain failed, a stream deleted by hand, a cluster that
// moved brokers).
func (c *Catalog) repairRetained(ctx context.Context, rc retainedCopy) {
	defer c.wg.Done()
	for _, k := range rc.forget {
		if err := c.retain.Forget(ctx, c.retainedLog(), k); err != nil {
			c.log.Debug("catalog: forgetting a retained value failed", "key", k, "err", err)
			return
		}
	}
	n := 0
	for _, e := range c.snapshot() {
		if old, ok := rc.entries[e.Key]; ok && !c.wins(e, old) {
			continue
		}
		if ctx.Err() != nil {
			return
		}
		if err := c.retainEntry(ctx, e); err != nil {
			c.log.Warn("catalog: retaining local entries the broker lacks failed; the next start tries again", "err", err)
			return
		}
		n++
	}
	if n > 0 || len(rc.forget) > 0 {
		c.log.Info("catalog: broker copy repaired", "retained", n, "forgotten", len(rc.forget))
	}
}

// forgetExpired removes from the broker the expired entries this node
// wrote (every node expires the same entries; the writer forgets them, and
// a node that starts forgets what expired while its writer was away).
func (c *Catalog) forgetExpired(ctx context.Context, es []Entry) {
	for _, e := range es {
		if e.Rev.Node != c.cfg.NodeID {
			continue
		}
		if err := c.retain.Forget(ctx, c.retainedLog(), e.Key); err != nil {
			c.log.Debug("catalog: forgetting an expired entry failed", "key", e.Key, "err", err)
			return
		}
	}
}
