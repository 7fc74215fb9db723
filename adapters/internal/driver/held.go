package driver

import "sync"

// Held is a consumer's set of deliveries handed out and not yet done, so
// that Close can release them all. The zero value is an empty, open set.
type Held[T comparable] struct {
	mu     sync.Mutex
	m      map[T]struct{}
	closed bool
}

// Add records t; it reports false, recording nothing, once Close was called.
func (h *Held[T]) Add(t T) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	if h.m == nil {
		h.m = map[T]struct{}{}
	}
	h.m[t] = struct{}{}
	return true
}

// Remove forgets t.
func (h *Held[T]) Remove(t T) {
	h.mu.Lock()
	delete(h.m, t)
	h.mu.Unlock()
}

// Close closes the set and returns what it held, for the caller to release.
// Later calls return nothing.
func (h *Held[T]) Close() []T {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	out := make([]T, 0, len(h.m))
	for t := range h.m {
		out = append(out, t)
	}
	h.m = nil
	return out
}
