package catalog

import (
	"context"
	"encoding/json"
	"time"

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

// staleRetained returns the local entries that win over the retained copy
// Start read (a node's data dir may hold writes the broker never kept: a
// Put whose Retain failed, a stream deleted by hand, a cluster that moved
// brokers). Start calls it before the catalog takes writes: an entry
// written or merged later was retained by its own writer.
func (c *Catalog) staleRetained(rc retainedCopy) []Entry {
	var out []Entry
	for _, e := range c.snapshot() {
		if old, ok := rc.entries[e.Key]; ok && !c.wins(e, old) {
			continue
		}
		out = append(out, e)
	}
	return out
}

// repairRetained runs once after Start: it forgets the retained values
// that are invalid or expired (forget) and retains the local entries that
// won over the retained copy when Start read it (stale) and are still
// this node's entries for their keys. Each entry it retains is published
// as a put.
func (c *Catalog) repairRetained(ctx context.Context, forget []string, stale []Entry) {
	defer c.wg.Done()
	for _, k := range forget {
		if err := c.retain.Forget(ctx, c.retainedLog(), k); err != nil {
			c.log.Debug("catalog: forgetting a retained value failed", "key", k, "err", err)
			return
		}
	}
	n := 0
	for _, e := range stale {
		if ctx.Err() != nil {
			return
		}
		if cur, ok := c.entry(e.Key); !ok || cur.Rev != e.Rev {
			continue // replaced since Start: the newer entry's writer retained it
		}
		if err := c.retainEntry(ctx, e); err != nil {
			c.log.Warn("catalog: retaining local entries the broker lacks failed; the next start tries again", "err", err)
			return
		}
		if cur, ok := c.entry(e.Key); ok && cur.Rev != e.Rev && cur.Rev.Node == c.cfg.NodeID {
			// This node wrote the key while e was being retained: its
			// own Retain may have landed first.
			c.retainAgain([]string{e.Key})
		}
		// Published like a Put's entry, so that a node holding a newer
		// write of the key retains it again (see retainAgain).
		if err := c.publish(ctx, kindPut, wireMsg{Entries: []Entry{e}}); err != nil {
			c.log.Debug("catalog: publishing a repaired entry failed", "key", e.Key, "err", err)
		}
		n++
	}
	if n > 0 || len(forget) > 0 {
		c.log.Info("catalog: broker copy repaired", "retained", n, "forgotten", len(forget))
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

// maxAgain bounds the keys waiting to be retained again; past it, keys are
// dropped (and counted): the next start's repair retains what wins.
const maxAgain = 10000

// retainAgain queues keys whose retained value may be stale. The broker
// keeps the last value retained for a key, not the one with the highest
// Rev: when two nodes write a key at nearly the same time, the loser's
// Retain can land after the winner's. A put message is published after its
// entries were retained, so when a put loses against an entry this node
// wrote, the broker may now hold the loser: this node retains its entry
// again, after the loser's Retain. (If the winner's writer is gone, the
// broker keeps the loser until a node whose data dir holds the winner
// starts and repairs it.)
func (c *Catalog) retainAgain(keys []string) {
	if c.retain == nil || len(keys) == 0 {
		return
	}
	c.againMu.Lock()
	dropped := 0
	for _, k := range keys {
		if len(c.again) >= maxAgain && !c.again[k] {
			dropped++
			continue
		}
		c.again[k] = true
	}
	c.againMu.Unlock()
	if dropped > 0 {
		c.met.rejected.WithLabelValues(c.cfg.Name, reasonFull).Add(float64(dropped))
	}
	select {
	case c.wakeAgain <- struct{}{}:
	default:
	}
}

// retainAgainLoop retains the queued keys' entries while this node still
// holds its own write as their winner.
func (c *Catalog) retainAgainLoop(ctx context.Context) {
	defer c.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.wakeAgain:
		}
		c.againMu.Lock()
		keys := make([]string, 0, len(c.again))
		for k := range c.again {
			keys = append(keys, k)
		}
		c.again = map[string]bool{}
		c.againMu.Unlock()
		for i, k := range keys {
			e, ok := c.entry(k)
			if !ok || e.Rev.Node != c.cfg.NodeID {
				continue
			}
			if err := c.retainEntry(ctx, cloneEntry(e)); err != nil {
				if ctx.Err() != nil {
					return
				}
				// The broker is failing: keep this key and the rest for
				// the next round, a second from now.
				c.log.Warn("catalog: retaining entries again after concurrent writes failed; retrying in a second", "keys", len(keys)-i, "err", err)
				c.retainAgain(keys[i:])
				select {
				case <-ctx.Done():
					return
				case <-c.clock.After(time.Second):
				}
				break
			}
			c.met.retainedAgain.Inc()
		}
	}
}
