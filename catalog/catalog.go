package catalog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterbus/clusterbus/adapters"
)

// Rev orders the writes of one key: a Lamport clock, ties broken by node ID.
type Rev struct {
	Clock uint64 `json:"c"`
	Node  string `json:"n"`
}

// Less reports whether r orders before o: a lower clock, or the same clock
// and a lower node ID.
func (r Rev) Less(o Rev) bool {
	if r.Clock != o.Clock {
		return r.Clock < o.Clock
	}
	return r.Node < o.Node
}

func (r Rev) String() string { return fmt.Sprintf("%d@%s", r.Clock, r.Node) }

// Entry is one key's current value.
type Entry struct {
	Key     string    `json:"k"`
	Value   []byte    `json:"v,omitempty"`
	Rev     Rev       `json:"r"`
	Deleted bool      `json:"d,omitempty"` // a tombstone
	At      time.Time `json:"at"`          // the writer's wall clock, for display and expiry
}

// Defaults and limits.
const (
	DefaultMaxEntries     = 100000
	DefaultMaxValueSize   = 256 << 10
	DefaultDigestInterval = 10 * time.Second
	// MaxClockSkew is how far ahead of the receiver's wall clock a Rev's
	// clock (in milliseconds) may be; a write further ahead is rejected
	// (reason "clock"), so that no peer can push every clock to its end.
	MaxClockSkew = time.Hour
	// KeyPattern is what keys must match: 1-256 bytes of letters, digits
	// and _ - . : / @ = +, starting with a letter, digit or '_'.
	KeyPattern = `^[A-Za-z0-9_][A-Za-z0-9_.:/@=+-]{0,255}$`
	// NamePattern is what Config.Name must match.
	NamePattern = `^[a-z0-9][a-z0-9_-]{0,31}$`
	maxNodeID   = 128
)

var (
	keyRE  = regexp.MustCompile(KeyPattern)
	nameRE = regexp.MustCompile(NamePattern)
)

// ErrConflict: Put on a FirstWriteWins key that holds another value (or a
// tombstone).
var ErrConflict = errors.New("catalog: conflict")

// ErrFull: a Put of a new key on a catalog that holds Config.MaxEntries
// entries (tombstones included).
var ErrFull = errors.New("catalog: full")

// ValidateKey checks a key against KeyPattern.
func ValidateKey(key string) error {
	if !keyRE.MatchString(key) {
		return adapters.Errorf(adapters.ErrInvalidArgument, "catalog: key", "%q: want %s", key, KeyPattern)
	}
	return nil
}

// Config configures a Catalog.
type Config struct {
	Cluster, NodeID string
	// Name is the catalog's name (NamePattern); topic "<Cluster>-catalog-<Name>".
	Name string
	// Dir is the node's data dir: the catalog persists its copy in
	// Dir/catalog-<Name>.json (and .log); "" keeps it in memory only.
	Dir string
	// MaxEntries bounds the entries, tombstones included (default 100000).
	MaxEntries int
	// MaxValueSize bounds a value (default 256 KiB, and at most what fits
	// in one broker message).
	MaxValueSize int
	// FirstWriteWins reports keys that are immutable once written (flow
	// versions): for them the LOWEST Rev wins a conflict (and a tombstone
	// beats a value), so every node keeps the same first write; Put on such
	// a key that already holds a different value returns an error matching
	// ErrConflict.
	FirstWriteWins func(key string) bool
	// Expire, if set, drops entries (locally, no tombstone) for which it
	// returns true; called every DigestInterval and on every entry received
	// or loaded. Must be deterministic on the entry so all nodes drop the
	// same ones.
	Expire func(e Entry, now time.Time) bool
	// DigestInterval is how often the node publishes its digest (jittered
	// ±20%) and runs Expire. Zero means DefaultDigestInterval.
	DigestInterval time.Duration
	// Registerer receives the catalog's collectors; nil registers none.
	// Several catalogs may share one (the series differ by catalog label).
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	Clock      clockwork.Clock
}

// Catalog is one node's copy of a replicated catalog. Its methods are safe
// for concurrent use.
type Catalog struct {
	b       adapters.Broker
	cfg     Config
	topic   string
	log     *slog.Logger
	clock   clockwork.Clock
	met     *metrics
	maxMsg  int // budget for one message body
	store   *store
	retain  adapters.Retainer // nil if the broker keeps nothing
	rejects rejectLog

	mu       sync.Mutex
	state    int // 0 new, 1 started, 2 stopped
	entries  map[string]Entry
	lamport  uint64
	dig      digest
	watchers map[*watcher]struct{}
	syncs    map[string]*syncWait // own sync requests by ID
	answered map[string]string    // request ID -> digest of a reply already seen (bounded)
	answerQ  []string             // answered keys, oldest first
	pending  map[string]bool      // request IDs this node will answer
	lastReq  time.Time            // last sync request sent
	// answerWindow starts the second in which answersInWindow requests
	// were answered.
	answerWindow    time.Time
	answersInWindow int

	// again holds the keys whose retained value this node must write once
	// more (see retainAgainLoop); wakeAgain wakes that loop.
	againMu   sync.Mutex
	again     map[string]bool
	wakeAgain chan struct{}

	sub    adapters.Subscription
	cancel context.CancelFunc
	wg     sync.WaitGroup
	rng    *rand.Rand
	rngMu  sync.Mutex
}

// Open validates cfg and returns a Catalog on b; Start starts it.
func Open(b adapters.Broker, cfg Config) (*Catalog, error) {
	const op = "catalog: open"
	if b == nil {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "nil broker")
	}
	if cfg.Cluster == "" || cfg.NodeID == "" {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "Config.Cluster and Config.NodeID are required")
	}
	if len(cfg.NodeID) > maxNodeID || strings.ContainsAny(cfg.NodeID, "\r\n\x00") {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "Config.NodeID %q: at most %d bytes, no CR, LF or NUL", cfg.NodeID, maxNodeID)
	}
	if !nameRE.MatchString(cfg.Name) {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "Config.Name %q: want %s", cfg.Name, NamePattern)
	}
	topic := cfg.Cluster + "-catalog-" + cfg.Name
	if err := adapters.ValidateName("topic", topic); err != nil {
		return nil, adapters.Wrap(adapters.ErrInvalidArgument, op+": Config.Cluster and Config.Name make the topic", err)
	}
	if cfg.MaxEntries < 0 || cfg.MaxValueSize < 0 || cfg.DigestInterval < 0 {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "Config.MaxEntries, MaxValueSize and DigestInterval must not be negative")
	}
	if cfg.MaxEntries == 0 {
		cfg.MaxEntries = DefaultMaxEntries
	}
	if cfg.MaxValueSize == 0 {
		cfg.MaxValueSize = DefaultMaxValueSize
	}
	if cfg.DigestInterval == 0 {
		cfg.DigestInterval = DefaultDigestInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	if cfg.FirstWriteWins == nil {
		cfg.FirstWriteWins = func(string) bool { return false }
	}
	caps := b.Capabilities()
	maxMsg := 1 << 20
	if caps.MaxMessageSize > 0 {
		maxMsg = caps.MaxMessageSize
	}
	maxMsg -= msgOverhead
	// A value travels base64-encoded in JSON, with its key and rev.
	fit := (maxMsg - entryOverhead) * 3 / 4
	cfg.MaxValueSize = min(cfg.MaxValueSize, fit)
	if fit < 1024 {
		return nil, adapters.Errorf(adapters.ErrInvalidArgument, op, "%s carries messages of at most %d bytes: too small for a catalog", caps.Name, caps.MaxMessageSize)
	}
	c := &Catalog{
		b:        b,
		cfg:      cfg,
		topic:    topic,
		log:      cfg.Logger.With("catalog", cfg.Name),
		clock:    cfg.Clock,
		met:      newMetrics(cfg.Registerer, cfg.Name),
		maxMsg:   maxMsg,
		entries:  map[string]Entry{},
		watchers: map[*watcher]struct{}{},
		syncs:    map[string]*syncWait{},
		answered: map[string]string{},
		pending:  map[string]bool{},
		again:    map[string]bool{},
		rng:      rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
	}
	if r, ok := adapters.RetainerOf(b); ok {
		c.retain = r
	}
	if cfg.Dir != "" {
		c.store = newStore(cfg.Dir, cfg.Name)
	}
	return c, nil
}

// Name is the catalog's name.
func (c *Catalog) Name() string { return c.cfg.Name }

// MaxValueSize is the largest value Put accepts (Config.MaxValueSize,
// lowered to what fits in one broker message).
func (c *Catalog) MaxValueSize() int { return c.cfg.MaxValueSize }

// retainedLog is the name of the catalog's log in an adapters.Retainer.
func (c *Catalog) retainedLog() string { return c.topic }

// Start loads Dir's copy, then the broker-retained copy if the broker keeps
// one (adapters.Retainer), subscribes to the topic and asks the other nodes
// for their entries (replies merge in as they come). It retries nothing
// itself: it returns adapters errors.
func (c *Catalog) Start(ctx context.Context) error {
	c.mu.Lock()
	if c.state != 0 {
		c.mu.Unlock()
		return adapters.Errorf(adapters.ErrInvalidArgument, "catalog: start "+c.cfg.Name, "already started")
	}
	c.mu.Unlock()
	now := c.clock.Now()
	if c.store != nil {
		loaded, err := c.store.load(c.log)
		if err != nil {
			return err
		}
		var good []Entry
		for _, e := range loaded {
			if c.validEntry(e, now) == "" && (c.cfg.Expire == nil || !c.cfg.Expire(e, now)) {
				good = append(good, e)
			}
		}
		c.mergeLocal(good, false)
		c.log.Debug("catalog loaded from data dir", "entries", len(good))
	}
	var rc retainedCopy
	var stale []Entry
	if c.retain != nil {
		var err error
		rc, err = c.loadRetained(ctx)
		if errors.Is(err, adapters.ErrUnsupported) {
			c.log.Warn("catalog: the broker keeps nothing (JetStream off?); entries survive in data dirs only", "err", err)
			c.retain = nil
		} else if err != nil {
			return err
		} else {
			stale = c.staleRetained(rc)
		}
	}
	sub, err := c.b.Subscribe(ctx, c.topic)
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	c.sub, c.cancel, c.state = sub, cancel, 1
	c.mu.Unlock()
	c.wg.Add(2)
	go c.receiveLoop(runCtx, sub)
	go c.tickLoop(runCtx)
	if c.retain != nil {
		c.wakeAgain = make(chan struct{}, 1)
		c.wg.Add(2)
		go c.repairRetained(runCtx, rc.forget, stale)
		go c.retainAgainLoop(runCtx)
	}
	if _, err := c.sendSyncRequest(ctx, false, false); err != nil {
		c.log.Warn("catalog: asking the other nodes for their entries failed; the digest exchange will retry", "err", err)
	}
	return nil
}

// Stop ends replication and folds the journal into the snapshot. Watchers
// are stopped.
func (c *Catalog) Stop(ctx context.Context) error {
	c.mu.Lock()
	if c.state != 1 {
		c.state = 2
		c.mu.Unlock()
		return nil
	}
	c.state = 2
	sub, cancel := c.sub, c.cancel
	ws := make([]*watcher, 0, len(c.watchers))
	for w := range c.watchers {
		ws = append(ws, w)
	}
	for _, s := range c.syncs {
		s.close()
	}
	c.syncs = map[string]*syncWait{}
	c.mu.Unlock()
	cancel()
	_ = sub.Close()
	c.wg.Wait()
	for _, w := range ws {
		w.stop()
	}
	if c.store != nil {
		err := c.store.compact(c.snapshot)
		c.store.close()
		return err
	}
	return nil
}

func (c *Catalog) usable(op string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.state {
	case 0:
		return adapters.Errorf(adapters.ErrInvalidArgument, op, "catalog %q not started", c.cfg.Name)
	case 2:
		return adapters.Errorf(adapters.ErrClosed, op, "catalog %q stopped", c.cfg.Name)
	}
	return nil
}

// Put writes key: applied locally, persisted to Dir, retained in the broker
// where it can, and published to the other nodes before it returns nil. On
// an error from the broker the write stays applied locally and reaches the
// other nodes through the digest exchange.
func (c *Catalog) Put(ctx context.Context, key string, value []byte) (Entry, error) {
	return c.write(ctx, key, value, false, nil)
}

// PutIf is Put if this node's copy of key is still at prev, the Rev of the
// entry a read-modify-write read (Get), or the zero Rev if Get found
// nothing; otherwise it writes nothing and returns ErrChanged with the
// entry that is there now. A write from another node can land between a
// Get and a Put; with Put, the later Rev of the write built on the older
// read would replace it.
func (c *Catalog) PutIf(ctx context.Context, key string, value []byte, prev Rev) (Entry, error) {
	return c.write(ctx, key, value, false, &prev)
}

// ErrChanged: PutIf found key changed since the read it was given.
var ErrChanged = errors.New("catalog: changed since read")

// Delete writes a tombstone for key (whether or not it holds a value).
func (c *Catalog) Delete(ctx context.Context, key string) (Entry, error) {
	return c.write(ctx, key, nil, true, nil)
}

func (c *Catalog) write(ctx context.Context, key string, value []byte, del bool, prev *Rev) (Entry, error) {
	op := "catalog " + c.cfg.Name + ": put " + key
	if del {
		op = "catalog " + c.cfg.Name + ": delete " + key
	}
	if err := ValidateKey(key); err != nil {
		return Entry{}, adapters.Wrap(adapters.ErrInvalidArgument, op, err)
	}
	if len(value) > c.cfg.MaxValueSize {
		return Entry{}, adapters.Errorf(adapters.ErrTooLarge, op, "value of %d bytes, limit %d", len(value), c.cfg.MaxValueSize)
	}
	if err := c.usable(op); err != nil {
		return Entry{}, err
	}
	if err := ctx.Err(); err != nil {
		return Entry{}, err
	}
	now := c.clock.Now()
	c.mu.Lock()
	old, had := c.entries[key]
	if prev != nil {
		var cur Rev
		if had && !old.Deleted {
			cur = old.Rev
		}
		if cur != *prev {
			c.mu.Unlock()
			return cloneEntry(old), fmt.Errorf("%s: %w: rev %s, read at %s", op, ErrChanged, cur, *prev)
		}
	}
	if c.cfg.FirstWriteWins(key) && had {
		switch {
		case del && old.Deleted, !del && !old.Deleted && string(old.Value) == string(value):
			// Already written: retained and published again, so that a
			// retried Put whose first attempt failed at the broker
			// completes.
			c.mu.Unlock()
			return c.spread(ctx, cloneEntry(old))
		case !del:
			c.mu.Unlock()
			what := "a different value"
			if old.Deleted {
				what = "a tombstone"
			}
			return cloneEntry(old), fmt.Errorf("%s: %w: the key is immutable and holds %s (rev %s)", op, ErrConflict, what, old.Rev)
		}
	}
	if !had && len(c.entries) >= c.cfg.MaxEntries {
		c.mu.Unlock()
		return Entry{}, fmt.Errorf("%s: %w: %d entries", op, ErrFull, c.cfg.MaxEntries)
	}
	clk := c.lamport + 1
	if ms := uint64(max(now.UnixMilli(), 0)); ms > clk {
		clk = ms
	}
	if had && old.Rev.Clock >= clk {
		clk = old.Rev.Clock + 1
	}
	c.lamport = clk
	e := Entry{Key: key, Rev: Rev{Clock: clk, Node: c.cfg.NodeID}, Deleted: del, At: now.UTC()}
	if !del {
		e.Value = append([]byte{}, value...)
	}
	c.applyLocked(e, had, old)
	c.mu.Unlock()
	if c.store != nil {
		if err := c.store.append([]Entry{e}, c.snapshot); err != nil {
			return e, adapters.Wrap(adapters.ErrUnavailable, op+": persist", err)
		}
	}
	return c.spread(ctx, e)
}

// spread retains e in the broker (where it retains) and publishes it.
func (c *Catalog) spread(ctx context.Context, e Entry) (Entry, error) {
	if c.retain != nil {
		if err := c.retainEntry(ctx, e); err != nil {
			return e, err
		}
	}
	if err := c.publish(ctx, kindPut, wireMsg{Entries: []Entry{e}}); err != nil {
		return e, err
	}
	return e, nil
}

// Get returns key's entry; false for missing or deleted keys.
func (c *Catalog) Get(key string) (Entry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	if !ok || e.Deleted {
		return Entry{}, false
	}
	return cloneEntry(e), true
}

// entry returns key's entry as this node holds it, tombstones included
// (Get hides them).
func (c *Catalog) entry(key string) (Entry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[key]
	return e, ok
}

// List returns the live entries whose key starts with prefix, sorted by key.
func (c *Catalog) List(prefix string) []Entry {
	c.mu.Lock()
	out := make([]Entry, 0, 16)
	for k, e := range c.entries {
		if !e.Deleted && strings.HasPrefix(k, prefix) {
			out = append(out, cloneEntry(e))
		}
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// Len is the number of entries, tombstones included.
func (c *Catalog) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

func cloneEntry(e Entry) Entry {
	if e.Value != nil {
		e.Value = append([]byte{}, e.Value...)
	}
	return e
}

// snapshot copies every entry, tombstones included.
func (c *Catalog) snapshot() []Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]Entry, 0, len(c.entries))
	for _, e := range c.entries {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// wins reports whether e replaces old (both for the same key).
func (c *Catalog) wins(e, old Entry) bool {
	if e.Rev == old.Rev {
		return false
	}
	if c.cfg.FirstWriteWins(e.Key) {
		if e.Deleted != old.Deleted {
			return e.Deleted
		}
		return e.Rev.Less(old.Rev)
	}
	return old.Rev.Less(e.Rev)
}

// applyLocked stores e (which wins over old, if had), updates the digest
// and notifies the watchers. Caller holds c.mu.
func (c *Catalog) applyLocked(e Entry, had bool, old Entry) {
	if had {
		c.dig.remove(old)
	}
	c.entries[e.Key] = e
	c.dig.add(e)
	c.met.entries.Set(float64(len(c.entries)))
	for w := range c.watchers {
		w.push(cloneEntry(e))
	}
}

// mergeLocal merges validated entries from a peer, the data dir or the
// broker's retained copy; it returns those that changed the local copy and,
// if persist, journals them, and the keys of the entries this node wrote
// that beat an incoming one (outranked). Entries past MaxEntries are
// rejected (full).
func (c *Catalog) mergeLocal(es []Entry, persist bool) (changed []Entry, outranked []string) {
	full := 0
	c.mu.Lock()
	for _, e := range es {
		if e.Rev.Clock > c.lamport {
			c.lamport = e.Rev.Clock
		}
		old, had := c.entries[e.Key]
		if had && !c.wins(e, old) {
			if old.Rev != e.Rev && old.Rev.Node == c.cfg.NodeID {
				outranked = append(outranked, e.Key)
			}
			continue
		}
		if !had && len(c.entries) >= c.cfg.MaxEntries {
			full++
			continue
		}
		e = cloneEntry(e)
		c.applyLocked(e, had, old)
		changed = append(changed, e)
	}
	c.mu.Unlock()
	if full > 0 {
		c.met.rejected.WithLabelValues(c.cfg.Name, reasonFull).Add(float64(full))
		c.log.Warn("catalog: full, entries dropped", "dropped", full, "max_entries", c.cfg.MaxEntries)
	}
	if persist && c.store != nil && len(changed) > 0 {
		if err := c.store.append(changed, c.snapshot); err != nil {
			c.log.Warn("catalog: persisting merged entries failed", "err", err)
		}
	}
	return changed, outranked
}

// expire drops the entries Expire returns true for.
func (c *Catalog) expire(ctx context.Context, now time.Time) {
	if c.cfg.Expire == nil {
		return
	}
	c.mu.Lock()
	n := 0
	var gone []Entry
	for k, e := range c.entries {
		if c.cfg.Expire(e, now) {
			c.dig.remove(e)
			delete(c.entries, k)
			n++
			if c.retain != nil && e.Rev.Node == c.cfg.NodeID {
				gone = append(gone, e)
			}
		}
	}
	c.met.entries.Set(float64(len(c.entries)))
	c.mu.Unlock()
	if n > 0 {
		c.log.Debug("catalog: entries expired", "n", n)
		if c.store != nil {
			if err := c.store.compact(c.snapshot); err != nil {
				c.log.Warn("catalog: persisting after expiry failed", "err", err)
			}
		}
		if len(gone) > 0 {
			c.forgetExpired(ctx, gone)
		}
	}
}

func (c *Catalog) jitter(d time.Duration) time.Duration {
	c.rngMu.Lock()
	defer c.rngMu.Unlock()
	return time.Duration(float64(d) * (0.8 + 0.4*c.rng.Float64()))
}

func (c *Catalog) randDur(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	c.rngMu.Lock()
	defer c.rngMu.Unlock()
	return time.Duration(c.rng.Int64N(int64(d)))
}

func (c *Catalog) newID() string {
	c.rngMu.Lock()
	defer c.rngMu.Unlock()
	return fmt.Sprintf("%016x", c.rng.Uint64())
}

// Watch calls fn (from one goroutine, in order) for every entry that
// changes the local copy, local or remote, tombstones included (not for
// expiry). The returned func stops it; it does not wait for a call in
// progress.
func (c *Catalog) Watch(fn func(Entry)) (stop func()) {
	w := &watcher{sig: make(chan struct{}, 1), done: make(chan struct{})}
	c.mu.Lock()
	c.watchers[w] = struct{}{}
	c.mu.Unlock()
	go w.run(fn)
	return func() {
		c.mu.Lock()
		delete(c.watchers, w)
		c.mu.Unlock()
		w.stop()
	}
}

type watcher struct {
	mu       sync.Mutex
	q        []Entry
	sig      chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

func (w *watcher) push(e Entry) {
	w.mu.Lock()
	w.q = append(w.q, e)
	w.mu.Unlock()
	select {
	case w.sig <- struct{}{}:
	default:
	}
}

func (w *watcher) stop() { w.stopOnce.Do(func() { close(w.done) }) }

func (w *watcher) run(fn func(Entry)) {
	for {
		select {
		case <-w.done:
			return
		case <-w.sig:
		}
		for {
			w.mu.Lock()
			q := w.q
			w.q = nil
			w.mu.Unlock()
			if len(q) == 0 {
				break
			}
			for _, e := range q {
				select {
				case <-w.done:
					return
				default:
				}
				fn(e)
			}
		}
	}
}
