package catalog

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/fnv"
	"strings"
	"sync"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// Message kinds, in the header HeaderKind.
const (
	HeaderKind  = "catalog-kind"
	kindPut     = "put"
	kindSyncReq = "sync-request"
	kindSyncRep = "sync-reply"
	kindDigest  = "digest"
)

// Bounds of the wire.
const (
	msgOverhead   = 2048 // headers and a decorator's envelope
	entryOverhead = 512  // key, rev, time and JSON around a value
	maxParts      = 100000
	maxIDLen      = 64
	nBuckets      = 256
	maxAnswered   = 1024
	// settleTime is how recent a write (by its Rev clock against the
	// node's clock) is left out of answers to background sync requests.
	settleTime = 2 * time.Second
	// maxAnswersPerSecond bounds the sync requests a node answers.
	maxAnswersPerSecond = 10
)

// wireMsg is every message on the topic; the kind says which fields matter.
type wireMsg struct {
	From    string      `json:"f"`
	Entries []Entry     `json:"e,omitempty"`  // put, sync-reply
	ID      string      `json:"id,omitempty"` // sync-request, sync-reply
	To      string      `json:"to,omitempty"` // sync-reply: the requester
	Part    int         `json:"p,omitempty"`  // sync-reply: 1..Parts
	Parts   int         `json:"ps,omitempty"`
	Same    bool        `json:"same,omitempty"` // sync-reply: the responder's digest equals the request's
	Digest  *wireDigest `json:"dg,omitempty"`   // sync-request, sync-reply, digest
	Buckets []uint64    `json:"b,omitempty"`    // sync-request: the requester's bucket hashes
	// Background marks a sync request sent because digests differed or
	// messages were missed: answers leave out the writes of the last
	// settleTime, which are still on their way, and say nothing if that
	// leaves nothing.
	Background bool `json:"bg,omitempty"`
}

// wireOut is wireMsg with entries already encoded, for splitting.
type wireOut struct {
	From       string            `json:"f"`
	Entries    []json.RawMessage `json:"e,omitempty"`
	ID         string            `json:"id,omitempty"`
	To         string            `json:"to,omitempty"`
	Part       int               `json:"p,omitempty"`
	Parts      int               `json:"ps,omitempty"`
	Same       bool              `json:"same,omitempty"`
	Digest     *wireDigest       `json:"dg,omitempty"`
	Buckets    []uint64          `json:"b,omitempty"`
	Background bool              `json:"bg,omitempty"`
}

type wireDigest struct {
	N int    `json:"n"`
	H uint64 `json:"h"`
}

// digest is the entry count and an XOR of per-entry hashes over key and
// rev, overall and per bucket (by key), maintained incrementally.
type digest struct {
	n int
	h uint64
	b [nBuckets]uint64
}

func entryHash(e Entry) (int, uint64) {
	kh := fnv.New64a()
	kh.Write([]byte(e.Key))
	bucket := int(kh.Sum64() % nBuckets)
	h := fnv.New64a()
	h.Write([]byte(e.Key))
	var buf [9]byte
	binary.BigEndian.PutUint64(buf[1:], e.Rev.Clock)
	h.Write(buf[:])
	h.Write([]byte(e.Rev.Node))
	if e.Deleted {
		h.Write([]byte{1})
	}
	return bucket, h.Sum64()
}

func (d *digest) add(e Entry) {
	b, h := entryHash(e)
	d.n++
	d.h ^= h
	d.b[b] ^= h
}

func (d *digest) remove(e Entry) {
	b, h := entryHash(e)
	d.n--
	d.h ^= h
	d.b[b] ^= h
}

func (d *digest) wire() *wireDigest { return &wireDigest{N: d.n, H: d.h} }

func sameDigest(a, b *wireDigest) bool { return a != nil && b != nil && *a == *b }

// Rejection reasons, the reason label of clusterbus_catalog_rejected_total.
const (
	reasonMalformed = "malformed" // not JSON, unknown kind, bad fields
	reasonKey       = "key"       // key does not match KeyPattern
	reasonSize      = "size"      // value above MaxValueSize, too many entries
	reasonRev       = "rev"       // rev without node or clock
	reasonClock     = "clock"     // clock more than MaxClockSkew ahead
	reasonFull      = "full"      // a new key beyond MaxEntries
)

var reasons = []string{reasonMalformed, reasonKey, reasonSize, reasonRev, reasonClock, reasonFull}

// validEntry returns "" or the reason e is rejected.
func (c *Catalog) validEntry(e Entry, now time.Time) string {
	switch {
	case !keyRE.MatchString(e.Key):
		return reasonKey
	case len(e.Value) > c.cfg.MaxValueSize:
		return reasonSize
	case e.Deleted && len(e.Value) > 0:
		return reasonMalformed
	case e.Rev.Clock == 0 || !validNode(e.Rev.Node):
		return reasonRev
	case e.Rev.Clock > uint64(max(now.UnixMilli(), 0))+uint64(MaxClockSkew/time.Millisecond) && e.Rev.Clock > c.lamportNow():
		return reasonClock
	}
	return ""
}

func (c *Catalog) lamportNow() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lamport
}

func validNode(s string) bool {
	return s != "" && len(s) <= maxNodeID && !strings.ContainsAny(s, "\r\n\x00")
}

// publish sends one message of kind.
func (c *Catalog) publish(ctx context.Context, kind string, m wireMsg) error {
	m.From = c.cfg.NodeID
	body, err := json.Marshal(m)
	if err != nil {
		return adapters.Wrap(adapters.ErrInvalidArgument, "catalog: encode", err)
	}
	return c.send(ctx, kind, body)
}

func (c *Catalog) send(ctx context.Context, kind string, body []byte) error {
	err := c.b.Publish(ctx, c.topic, adapters.Message{Headers: map[string]string{HeaderKind: kind}, Body: body})
	if err != nil {
		c.met.publishErrors.WithLabelValues(c.cfg.Name).Inc()
	}
	return err
}

// sendSyncRequest publishes a sync request with this node's digest and
// bucket hashes. With wait it registers a waiter that completes when one
// responder's full reply has been merged.
func (c *Catalog) sendSyncRequest(ctx context.Context, wait, background bool) (*syncWait, error) {
	id := c.newID()
	c.mu.Lock()
	d := c.dig
	c.lastReq = c.clock.Now()
	var w *syncWait
	if wait {
		w = &syncWait{done: make(chan struct{}), parts: map[string]map[int]bool{}}
		c.syncs[id] = w
	}
	c.mu.Unlock()
	c.met.syncs.WithLabelValues(c.cfg.Name, "requested").Inc()
	err := c.publish(ctx, kindSyncReq, wireMsg{ID: id, Digest: d.wire(), Buckets: d.b[:], Background: background})
	if err != nil && w != nil {
		c.mu.Lock()
		delete(c.syncs, id)
		c.mu.Unlock()
	}
	return w, err
}

// maybeRequestSync sends a sync request unless one went out within the
// last second (or half a digest interval, if shorter).
func (c *Catalog) maybeRequestSync(ctx context.Context) {
	gap := min(time.Second, c.cfg.DigestInterval/2)
	c.mu.Lock()
	recent := c.clock.Since(c.lastReq) < gap
	c.mu.Unlock()
	if recent {
		return
	}
	if _, err := c.sendSyncRequest(ctx, false, true); err != nil {
		c.log.Debug("catalog: sync request failed", "err", err)
	}
}

// Sync asks the other nodes for their entries now and returns nil once one
// responder's full reply (every entry that differs, or "same") has been
// merged, or ctx.Err() when ctx is done first (no other node answered: the
// node may be alone).
func (c *Catalog) Sync(ctx context.Context) error {
	if err := c.usable("catalog " + c.cfg.Name + ": sync"); err != nil {
		return err
	}
	w, err := c.sendSyncRequest(ctx, true, false)
	if err != nil {
		return err
	}
	select {
	case <-w.done:
		if w.closed {
			return adapters.Errorf(adapters.ErrClosed, "catalog "+c.cfg.Name+": sync", "stopped")
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

type syncWait struct {
	once   sync.Once
	done   chan struct{}
	closed bool
	parts  map[string]map[int]bool // responder -> parts received
}

func (w *syncWait) complete() { w.once.Do(func() { close(w.done) }) }

func (w *syncWait) close() {
	w.once.Do(func() { w.closed = true; close(w.done) })
}

func (c *Catalog) receiveLoop(ctx context.Context, sub adapters.Subscription) {
	defer c.wg.Done()
	for {
		m, err := sub.Receive(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, adapters.ErrClosed) {
				return
			}
			if errors.Is(err, adapters.ErrGap) {
				c.log.Debug("catalog: messages may have been missed; asking for a sync")
				c.maybeRequestSync(ctx)
				continue
			}
			c.log.Warn("catalog: receive failed", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		c.handle(ctx, m)
	}
}

func (c *Catalog) reject(from, reason, detail string) {
	c.met.rejected.WithLabelValues(c.cfg.Name, reason).Inc()
	if c.rejects.allow(from, c.clock.Now()) {
		c.log.Warn("catalog: message dropped", "from", from, "reason", reason, "detail", detail)
	}
}

// handle validates and applies one message. It never panics on input.
func (c *Catalog) handle(ctx context.Context, m adapters.Message) {
	kind := m.Headers[HeaderKind]
	switch kind {
	case kindPut, kindSyncReq, kindSyncRep, kindDigest:
	default:
		c.reject("?", reasonMalformed, "unknown kind "+truncate(kind))
		return
	}
	var w wireMsg
	if err := json.Unmarshal(m.Body, &w); err != nil {
		c.reject("?", reasonMalformed, "decode: "+truncate(err.Error()))
		return
	}
	if !validNode(w.From) {
		c.reject("?", reasonMalformed, "no sender")
		return
	}
	if w.From == c.cfg.NodeID {
		return // our own echo
	}
	if len(w.ID) > maxIDLen || (w.Buckets != nil && len(w.Buckets) != nBuckets) || len(w.To) > maxNodeID {
		c.reject(w.From, reasonMalformed, "bad id, to or buckets")
		return
	}
	switch kind {
	case kindPut:
		c.mergeRemote(w.From, w.Entries, true)
	case kindSyncRep:
		if w.ID == "" || w.Parts < 1 || w.Parts > maxParts || w.Part < 1 || w.Part > w.Parts || w.Digest == nil {
			c.reject(w.From, reasonMalformed, "bad sync reply framing")
			return
		}
		c.mergeRemote(w.From, w.Entries, false)
		c.noteReply(w)
	case kindSyncReq:
		if w.ID == "" || w.Digest == nil || len(w.Entries) > 0 {
			c.reject(w.From, reasonMalformed, "bad sync request")
			return
		}
		c.scheduleAnswer(ctx, w)
	case kindDigest:
		if w.Digest == nil || len(w.Entries) > 0 {
			c.reject(w.From, reasonMalformed, "bad digest")
			return
		}
		c.mu.Lock()
		same := sameDigest(c.dig.wire(), w.Digest)
		c.mu.Unlock()
		if !same {
			c.maybeRequestSync(ctx)
		}
	}
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// mergeRemote validates entries from a peer, drops and counts bad ones and
// merges the rest. put says they come in a put message, which its sender
// published after it retained them (see retainAgain).
func (c *Catalog) mergeRemote(from string, es []Entry, put bool) {
	if len(es) == 0 {
		return
	}
	now := c.clock.Now()
	good := es[:0:0]
	for _, e := range es {
		if r := c.validEntry(e, now); r != "" {
			c.reject(from, r, "entry "+truncate(e.Key))
			continue
		}
		if c.cfg.Expire != nil && c.cfg.Expire(e, now) {
			continue
		}
		good = append(good, e)
	}
	if _, outranked := c.mergeLocal(good, true); put {
		c.retainAgain(outranked)
	}
}

// noteReply records a sync reply for suppression and completes the waiting
// Sync when every part from one responder has arrived.
func (c *Catalog) noteReply(w wireMsg) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.answered[w.ID]; !ok {
		c.answered[w.ID] = w.Digest.key()
		c.answerQ = append(c.answerQ, w.ID)
		if len(c.answerQ) > maxAnswered {
			delete(c.answered, c.answerQ[0])
			c.answerQ = c.answerQ[1:]
		}
	}
	sw, ok := c.syncs[w.ID]
	if !ok || w.To != c.cfg.NodeID {
		return
	}
	if w.Same {
		delete(c.syncs, w.ID)
		sw.complete()
		return
	}
	ps := sw.parts[w.From]
	if ps == nil {
		if len(sw.parts) > 64 {
			return
		}
		ps = map[int]bool{}
		sw.parts[w.From] = ps
	}
	ps[w.Part] = true
	if len(ps) >= w.Parts {
		delete(c.syncs, w.ID)
		sw.complete()
	}
}

func (d *wireDigest) key() string {
	b, _ := json.Marshal(d)
	return string(b)
}

// scheduleAnswer answers a sync request after a short random delay, unless
// by then another node has answered it with this node's digest.
func (c *Catalog) scheduleAnswer(ctx context.Context, req wireMsg) {
	c.mu.Lock()
	if c.pending[req.ID] || len(c.pending) > maxAnswered {
		c.mu.Unlock()
		return
	}
	// At most maxAnswersPerSecond answers a second: a flood of requests
	// (a peer in a loop, or anyone on an unsigned broker) must not make
	// every node send its whole catalog again and again.
	now := c.clock.Now()
	if now.Sub(c.answerWindow) >= time.Second {
		c.answerWindow, c.answersInWindow = now, 0
	}
	if c.answersInWindow >= maxAnswersPerSecond {
		c.mu.Unlock()
		c.met.syncs.WithLabelValues(c.cfg.Name, "throttled").Inc()
		return
	}
	c.answersInWindow++
	c.pending[req.ID] = true
	differs := !sameDigest(c.dig.wire(), req.Digest)
	c.mu.Unlock()
	if differs {
		// The requester may hold writes this node lacks.
		c.maybeRequestSync(ctx)
	}
	delay := c.randDur(min(200*time.Millisecond, c.cfg.DigestInterval/20))
	c.wg.Add(1)
	time.AfterFunc(delay, func() {
		defer c.wg.Done()
		c.mu.Lock()
		delete(c.pending, req.ID)
		stopped := c.state != 1
		d := c.dig
		seen, answered := c.answered[req.ID]
		c.mu.Unlock()
		if stopped || (answered && seen == d.wire().key()) {
			return
		}
		if err := c.answer(ctx, req, d); err != nil {
			c.log.Debug("catalog: answering a sync request failed", "to", req.From, "err", err)
		}
	})
}

// answer publishes the entries of every bucket whose hash differs from the
// requester's (every entry if it sent none), split to fit the broker's
// message size; "same" if the digests are equal.
func (c *Catalog) answer(ctx context.Context, req wireMsg, d digest) error {
	base := wireOut{From: c.cfg.NodeID, ID: req.ID, To: req.From, Digest: d.wire()}
	if sameDigest(d.wire(), req.Digest) {
		base.Same, base.Part, base.Parts = true, 1, 1
		body, _ := json.Marshal(base)
		c.met.syncs.WithLabelValues(c.cfg.Name, "answered").Inc()
		return c.send(ctx, kindSyncRep, body)
	}
	var diff [nBuckets]bool
	for i := range diff {
		diff[i] = req.Buckets == nil || req.Buckets[i] != d.b[i]
	}
	var recent uint64 // background: leave out writes with a clock above this
	if req.Background {
		c.mu.Lock()
		top := max(c.lamport, uint64(max(c.clock.Now().UnixMilli(), 0)))
		c.mu.Unlock()
		recent = top - min(top, uint64(settleTime/time.Millisecond))
	}
	var parts [][]json.RawMessage
	var cur []json.RawMessage
	size, n := 0, 0
	budget := c.maxMsg - 256 // the framing fields
	for _, e := range c.snapshot() {
		if b, _ := entryHash(e); !diff[b] {
			continue
		}
		if req.Background && e.Rev.Clock > recent {
			continue
		}
		n++
		raw, err := json.Marshal(e)
		if err != nil {
			continue
		}
		if len(cur) > 0 && size+len(raw)+1 > budget {
			parts = append(parts, cur)
			cur, size = nil, 0
		}
		cur = append(cur, raw)
		size += len(raw) + 1
	}
	if n == 0 && req.Background {
		return nil // nothing settled differs: what differs is on its way
	}
	if len(cur) > 0 || len(parts) == 0 {
		parts = append(parts, cur)
	}
	c.met.syncs.WithLabelValues(c.cfg.Name, "answered").Inc()
	for i, p := range parts {
		out := base
		out.Entries, out.Part, out.Parts = p, i+1, len(parts)
		body, err := json.Marshal(out)
		if err != nil {
			return err
		}
		if err := c.send(ctx, kindSyncRep, body); err != nil {
			return err
		}
	}
	return nil
}

// tickLoop publishes the digest and runs Expire every DigestInterval
// (jittered).
func (c *Catalog) tickLoop(ctx context.Context) {
	defer c.wg.Done()
	for {
		t := c.clock.NewTimer(c.jitter(c.cfg.DigestInterval))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.Chan():
		}
		c.expire(ctx, c.clock.Now())
		c.mu.Lock()
		d := c.dig.wire()
		c.mu.Unlock()
		if err := c.publish(ctx, kindDigest, wireMsg{Digest: d}); err != nil && ctx.Err() == nil {
			c.log.Debug("catalog: publishing the digest failed", "err", err)
		}
	}
}

// rejectLog limits rejection logs to one a minute per sender.
type rejectLog struct {
	mu   sync.Mutex
	last map[string]time.Time
}

func (r *rejectLog) allow(from string, now time.Time) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.last == nil || len(r.last) > 1024 {
		r.last = map[string]time.Time{}
	}
	if t, ok := r.last[from]; ok && now.Sub(t) < time.Minute {
		return false
	}
	r.last[from] = now
	return true
}
