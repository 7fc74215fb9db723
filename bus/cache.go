package bus

import (
	"context"
	"fmt"
	"sync"
)

// OnInvalidate registers fn for region. It runs on every node (the sender
// included) for each invalidation of the region: keys are the keys to drop,
// or nil to drop the whole region (sent that way, or because this node may
// have missed an invalidation). fn runs on the node's receive goroutine and
// must be quick.
func (n *Node) OnInvalidate(region string, fn func(keys []string)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.regions[region] = append(n.regions[region], fn)
}

// Invalidate tells every node to drop keys of region (the whole region if
// no keys are given). The local handlers run before it returns; the others
// run when the broadcast reaches them. An error means the broadcast may not
// have been sent: nodes that miss it see a sequence gap at the next
// heartbeat and clear the region — if the publish never reached the broker
// they do not, so retry on error.
func (n *Node) Invalidate(ctx context.Context, region string, keys ...string) error {
	if region == "" {
		return fmt.Errorf("bus: invalidate: empty region")
	}
	n.runRegion(region, keys)
	n.pubMu.Lock()
	defer n.pubMu.Unlock()
	n.mu.Lock()
	n.cseq++
	inv := invalidation{ID: n.cfg.NodeID, Inc: n.inc, CSeq: n.cseq, Region: region, Keys: keys, Sent: n.clock.Now().UnixNano()}
	n.mu.Unlock()
	msg, err := encode(kindInvalidate, n.cfg.Cluster, n.cfg.NodeID, inv)
	if err == nil {
		err = n.b.Publish(ctx, n.topic, msg)
	}
	n.mu.Lock()
	// Even a failed publish advances the published sequence: receivers
	// that missed it then see a gap and clear everything.
	n.cseqPub = inv.CSeq
	n.mu.Unlock()
	if err != nil {
		n.m.publishErrors.Inc()
		return fmt.Errorf("bus: invalidate %q: %w", region, err)
	}
	n.m.invalidations.WithLabelValues("sent").Inc()
	return nil
}

func (n *Node) runRegion(region string, keys []string) {
	n.mu.Lock()
	fns := append([]func([]string){}, n.regions[region]...)
	n.mu.Unlock()
	for _, f := range fns {
		f(keys)
	}
}

// clearAll clears every registered region.
func (n *Node) clearAll(why string) {
	n.mu.Lock()
	var fns []func([]string)
	for _, fs := range n.regions {
		fns = append(fns, fs...)
	}
	n.mu.Unlock()
	if len(fns) == 0 {
		return
	}
	n.m.invalidations.WithLabelValues("gap").Inc()
	n.log.Info("clearing every cache region", "why", why)
	for _, f := range fns {
		f(nil)
	}
}

func (n *Node) handleInvalidation(inv invalidation) {
	if inv.Inc == n.inc {
		return // ran locally already
	}
	n.mu.Lock()
	s := n.senders[inv.Inc]
	var gap, apply bool
	switch {
	case s == nil:
		n.senders[inv.Inc] = &sender{last: inv.CSeq}
		gap = inv.CSeq > 1
		apply = !gap
	case inv.CSeq == s.last+1:
		s.last, apply = inv.CSeq, true
	case inv.CSeq > s.last+1:
		s.last, gap = inv.CSeq, true
	}
	n.mu.Unlock()
	switch {
	case gap:
		n.clearAll(fmt.Sprintf("invalidation sequence gap from %s", inv.ID))
	case apply:
		n.m.invalidations.WithLabelValues("received").Inc()
		n.runRegion(inv.Region, inv.Keys)
	default:
		n.reject(rejectStale, inv.ID, fmt.Errorf("invalidation seq %d already seen", inv.CSeq))
	}
}

// Cache is a small local cache of one region whose entries are dropped on
// every node when any node calls Invalidate for the region (or Cache.Invalidate).
// It never serves a value loaded before an invalidation that reached this
// node: a Load that overlaps an invalidation is not stored.
type Cache[V any] struct {
	node   *Node
	region string
	mu     sync.Mutex
	gen    uint64
	items  map[string]V
}

// NewCache returns an empty cache for region, wired to n's invalidations.
func NewCache[V any](n *Node, region string) *Cache[V] {
	c := &Cache[V]{node: n, region: region, items: map[string]V{}}
	n.OnInvalidate(region, c.drop)
	return c
}

func (c *Cache[V]) drop(keys []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	if keys == nil {
		clear(c.items)
		return
	}
	for _, k := range keys {
		delete(c.items, k)
	}
}

// Get returns the cached value of key. While the node is degraded (it has
// lost its broker, so invalidations cannot reach it) every read misses.
func (c *Cache[V]) Get(key string) (V, bool) {
	if c.node.Degraded() {
		var zero V
		return zero, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.items[key]
	return v, ok
}

// Len is the number of cached entries.
func (c *Cache[V]) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.items)
}

// Load returns the cached value of key or calls load and caches its result
// unless an invalidation of the region arrived meanwhile. While the node is
// degraded it always calls load and caches nothing.
func (c *Cache[V]) Load(key string, load func() (V, error)) (V, error) {
	if c.node.Degraded() {
		return load()
	}
	c.mu.Lock()
	if v, ok := c.items[key]; ok {
		c.mu.Unlock()
		return v, nil
	}
	gen := c.gen
	c.mu.Unlock()
	v, err := load()
	if err != nil {
		return v, err
	}
	c.mu.Lock()
	if c.gen == gen {
		c.items[key] = v
	}
	c.mu.Unlock()
	return v, nil
}

// Invalidate drops keys (all if none) here and on every node.
func (c *Cache[V]) Invalidate(ctx context.Context, keys ...string) error {
	return c.node.Invalidate(ctx, c.region, keys...)
}
