package flows

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/catalog"
)

// Execution states (Status.State).
const (
	StateRunning      = "running"
	StateCompleted    = "completed"
	StateFailed       = "failed"
	StateDeadLettered = "dead_lettered"
	StateCancelled    = "cancelled"
	// StateAwaiting: parked at an await step until a signal or its timeout.
	StateAwaiting = "awaiting"
)

// ended reports whether no step of an execution in state will run again by
// itself (a failed or dead-lettered one can be retried).
func ended(state string) bool {
	switch state {
	case StateCompleted, StateFailed, StateDeadLettered, StateCancelled:
		return true
	}
	return false
}

// StepRecord is one attempt of one step in an execution's history.
type StepRecord struct {
	Step    string `json:"step"`
	Seq     int    `json:"seq"`
	Attempt int    `json:"attempt,omitempty"`
	Node    string `json:"node,omitempty"`
	// Outcome: done, retried, failed, dead_lettered, cancelled, awaiting.
	Outcome  string        `json:"outcome"`
	Started  time.Time     `json:"started,omitzero"`
	Ended    time.Time     `json:"ended,omitzero"`
	Duration time.Duration `json:"duration"`
	Error    string        `json:"error,omitempty"`
}

// maxStepRecords bounds the step history kept per execution (the latest).
const maxStepRecords = 100

// AwaitStatus is where a parked execution waits.
type AwaitStatus struct {
	Step     string    `json:"step"`
	Signal   string    `json:"signal"`
	Deadline time.Time `json:"deadline,omitzero"`
}

// Status is an execution's record: where it is and its step history, as
// the executions catalog holds it (the same on every node once the write
// has reached it).
type Status struct {
	Execution string `json:"execution"`
	Flow      string `json:"flow"`
	Version   int    `json:"version"`
	State     string `json:"state"`
	// Step is the next step to run (running), the await step (awaiting), or
	// the step that ended the execution.
	Step string `json:"step,omitempty"`
	// Seq: every step below this sequence number has recorded its
	// continuation; for an ended execution, the sequence number of the
	// step that ended it.
	Seq     int       `json:"seq"`
	Attempt int       `json:"attempt,omitempty"`
	Node    string    `json:"node,omitempty"`
	Started time.Time `json:"started,omitzero"`
	Updated time.Time `json:"updated"`
	Ended   time.Time `json:"ended,omitzero"`
	Error   string    `json:"error,omitempty"`
	// Reason is a cancellation's reason.
	Reason string         `json:"reason,omitempty"`
	Output map[string]any `json:"output,omitempty"`
	// Retries counts Engine.Retry calls (the retry generation).
	Retries int          `json:"retries,omitempty"`
	Await   *AwaitStatus `json:"await,omitempty"`
	// Steps are the step attempts, oldest first (the latest 100).
	Steps []StepRecord `json:"steps,omitempty"`
}

// record is an execution's value in the executions catalog.
type record struct {
	Status
	// Resume is the item a failed or dead-lettered execution resumes from
	// (Engine.Retry).
	Resume *item `json:"resume,omitempty"`

	rev catalog.Rev // the catalog's revision of this copy, if this node wrote it
}

// newer reports whether a's summary should win over b's: the higher retry
// generation, then the higher sequence, then an ended state over a running
// one, then the later update.
func (a *record) newer(b *record) bool {
	if a.Retries != b.Retries {
		return a.Retries > b.Retries
	}
	if a.Seq != b.Seq {
		return a.Seq > b.Seq
	}
	if ea, eb := ended(a.State), ended(b.State); ea != eb {
		return ea
	}
	return a.Updated.After(b.Updated)
}

// merge returns the union of two copies of an execution's record: the
// summary of the newer (see newer), the steps of both. The catalog keeps
// the last write of a key; writers merge what they read with what they
// wrote (see recorder), so that the record with the highest sequence and
// every step survives concurrent writes.
func merge(a, b *record) *record {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	base, other := a, b
	if b.newer(a) {
		base, other = b, a
	}
	out := *base
	out.Steps = unionSteps(base.Steps, other.Steps)
	if out.Started.IsZero() || (!other.Started.IsZero() && other.Started.Before(out.Started)) {
		out.Started = other.Started
	}
	return &out
}

func unionSteps(a, b []StepRecord) []StepRecord {
	type key struct {
		seq, attempt   int
		node, outcome  string
		started, ended int64
	}
	seen := map[key]bool{}
	var out []StepRecord
	for _, s := range slices.Concat(a, b) {
		k := key{s.Seq, s.Attempt, s.Node, s.Outcome, s.Started.UnixNano(), s.Ended.UnixNano()}
		if !seen[k] {
			seen[k] = true
			out = append(out, s)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Seq != out[j].Seq {
			return out[i].Seq < out[j].Seq
		}
		return out[i].Started.Before(out[j].Started)
	})
	if len(out) > maxStepRecords {
		out = out[len(out)-maxStepRecords:]
	}
	return out
}

// Keys of the executions catalog: the record, the cancel request and the
// await park of each execution.
const (
	prefixRecord = "x/"
	prefixCancel = "c/"
	prefixAwait  = "a/"
)

// rawKey reports whether an ID is used as it is in keys: 1-100 of
// [A-Za-z0-9_.@=-]; others are base64url-encoded behind a '+' (which raw
// IDs cannot hold, so the two never collide).
func rawKey(id string) bool {
	if id == "" || len(id) > 100 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '@' || c == '=' || c == '-') {
			return false
		}
	}
	return true
}

func keyOf(prefix, id string) string {
	if rawKey(id) {
		return prefix + id
	}
	return prefix + "+" + base64.RawURLEncoding.EncodeToString([]byte(id))
}

// cancelRequest is the value of a cancel request ("c/<id>").
type cancelRequest struct {
	Execution string    `json:"execution"`
	Reason    string    `json:"reason,omitempty"`
	Node      string    `json:"node,omitempty"`
	At        time.Time `json:"at"`
}

// park is the value of an await park ("a/<id>"): the continuation a
// signal releases, and which path won.
type park struct {
	Seq      int       `json:"seq"`
	Gen      int       `json:"gen,omitempty"`
	Step     string    `json:"step"`
	Signal   string    `json:"signal"`
	SaveAs   string    `json:"save_as"`
	Deadline time.Time `json:"deadline,omitzero"`
	Next     *item     `json:"next"`
	// Winner: "signal", "timeout" or "cancel" once resolved.
	Winner string    `json:"winner,omitempty"`
	At     time.Time `json:"at"`
}

// tombstoneAge is how long a pruned record's tombstone is kept.
const tombstoneAge = time.Hour

// recordExpired is the expiry rule of a record: ended, and either ended
// (and last written: old) more than retention ago, or ended before the
// cutoff (Unix ns, 0 for none).
func recordExpired(state string, end time.Time, old bool, now time.Time, retention time.Duration, cutoff int64) bool {
	return ended(state) && (old && now.Sub(end) > retention || cutoff > 0 && end.UnixNano() < cutoff)
}

// expireFunc drops, on every node alike, records of executions that ended
// more than retention ago or before the cutoff (see prune), and cancel
// requests and resolved parks older than retention.
func expireFunc(retention time.Duration, cutoff *atomic.Int64) func(catalog.Entry, time.Time) bool {
	return func(e catalog.Entry, now time.Time) bool {
		if e.Deleted {
			// Tombstones of pruned records (see prune) go sooner, so that
			// pruning frees room.
			return now.Sub(e.At) > min(retention, tombstoneAge)
		}
		old := now.Sub(e.At) > retention // every kind of entry is written at or after what it tells of
		switch {
		case strings.HasPrefix(e.Key, prefixRecord):
			c := cutoff.Load()
			if !old && c == 0 {
				return false
			}
			var r struct {
				State string    `json:"state"`
				Ended time.Time `json:"ended"`
			}
			if json.Unmarshal(e.Value, &r) != nil {
				return true
			}
			return recordExpired(r.State, r.Ended, old, now, retention, c)
		case !old:
			return false
		case strings.HasPrefix(e.Key, prefixAwait):
			var p park
			return json.Unmarshal(e.Value, &p) != nil || p.Winner != ""
		}
		return true
	}
}

// recorder writes execution records to the executions catalog. Updates at
// step boundaries are queued and written by one goroutine, so a step does
// not wait for them (update); the ends of executions, parks and failures are
// written before the item is acknowledged (updateNow). Each write reads the
// local copy, merges what this node wrote last (see merge) and applies the
// updates; when another node's write replaces one of this node's with less
// (an older sequence, fewer steps), the recorder writes the union again.
type recorder struct {
	e   *Engine
	cat *catalog.Catalog

	mu      sync.Mutex
	pending map[string][]func(*record) // by execution
	queue   []string
	wake    chan struct{}
	stopped bool

	// wmu serializes the writers (read, merge, write of a record); it is
	// held across the write to the broker, so readers never take it.
	wmu sync.Mutex
	// mmu guards mine and lru.
	mmu  sync.Mutex
	mine map[string]*record // what this node wrote last, by execution (bounded)
	lru  []string

	// cutoff: records of executions that ended before it (Unix ns) expire
	// (see prune).
	cutoff atomic.Int64

	// sums are the records' summaries (no steps, no output) by key, kept
	// from the catalog's watch, so that List and the metrics do not
	// decode every record.
	sumMu sync.Mutex
	sums  map[string]summaryEntry
}

// summaryEntry is a record's summary and the catalog revision it is from.
type summaryEntry struct {
	rev catalog.Rev
	at  time.Time
	s   Status
}

// coalesce is how long the recorder gathers updates before it writes them
// (real time: a detail of performance, not of the engine's clock).
const coalesce = 20 * time.Millisecond

// maxMine bounds the records a node remembers writing, for repairs.
const maxMine = 2000

func newRecorder(e *Engine, cat *catalog.Catalog) *recorder {
	return &recorder{e: e, cat: cat, pending: map[string][]func(*record){}, wake: make(chan struct{}, 1), mine: map[string]*record{},
		sums: map[string]summaryEntry{}}
}

// get returns the execution's record from the local copy, nil if none.
func (r *recorder) get(id string) *record {
	en, ok := r.cat.Get(keyOf(prefixRecord, id))
	if !ok {
		return nil
	}
	return decodeRecord(en)
}

// decodeRecord decodes a record entry; nil if it does not decode.
func decodeRecord(en catalog.Entry) *record {
	var rec record
	if err := json.Unmarshal(en.Value, &rec); err != nil {
		return nil
	}
	return &rec
}

// summary is what admit needs of the execution's record, without decoding
// its steps when the local copy is this node's last write.
func (r *recorder) summary(id string) (state string, seq, gen int, ok bool) {
	en, found := r.cat.Get(keyOf(prefixRecord, id))
	if !found {
		return "", 0, 0, false
	}
	r.mmu.Lock()
	m := r.mine[id]
	r.mmu.Unlock()
	if m != nil && m.rev == en.Rev {
		return m.State, m.Seq, m.Retries, true
	}
	var x struct {
		State   string `json:"state"`
		Seq     int    `json:"seq"`
		Retries int    `json:"retries"`
	}
	if json.Unmarshal(en.Value, &x) != nil {
		return "", 0, 0, false
	}
	return x.State, x.Seq, x.Retries, true
}

// index keeps the summary of a record entry (from the catalog's watch, and
// for every record once the catalog has started).
func (r *recorder) index(en catalog.Entry) {
	r.sumMu.Lock()
	old, had := r.sums[en.Key]
	r.sumMu.Unlock()
	if had && old.rev == en.Rev {
		return
	}
	if en.Deleted {
		r.sumMu.Lock()
		delete(r.sums, en.Key)
		r.sumMu.Unlock()
		return
	}
	var rec record
	if json.Unmarshal(en.Value, &rec) != nil || rec.Execution == "" {
		return
	}
	st := rec.Status
	st.Output, st.Steps = nil, nil
	r.sumMu.Lock()
	if cur, ok := r.sums[en.Key]; !ok || cur.rev.Less(en.Rev) {
		r.sums[en.Key] = summaryEntry{rev: en.Rev, at: en.At, s: st}
	}
	r.sumMu.Unlock()
}

// summaries returns the summaries keep accepts, leaving out (and
// forgetting) those the catalog's expiry drops.
func (r *recorder) summaries(keep func(*Status) bool) []Status {
	now := r.e.opts.Clock.Now()
	cutoff := r.cutoff.Load()
	r.sumMu.Lock()
	defer r.sumMu.Unlock()
	var out []Status
	for k, se := range r.sums {
		s := se.s
		if recordExpired(s.State, s.Ended, now.Sub(se.at) > r.e.cfg.Retention, now, r.e.cfg.Retention, cutoff) {
			delete(r.sums, k)
			continue
		}
		if keep(&s) {
			out = append(out, s)
		}
	}
	return out
}

// pending reports whether updates of the execution's record are queued.
func (r *recorder) hasPending(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending[id]) > 0
}

// update queues fn for the execution's record; the recorder's goroutine
// writes it soon.
func (r *recorder) update(id string, fn func(*record)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pending[id]) == 0 {
		r.queue = append(r.queue, id)
	}
	r.pending[id] = append(r.pending[id], fn)
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// updateNow applies the queued updates of the execution and fn, and writes
// the record before it returns. If the write fails, the updates are queued
// again for the recorder's goroutine, which retries them.
func (r *recorder) updateNow(ctx context.Context, id string, fn func(*record)) (*record, error) {
	r.mu.Lock()
	fns := append(r.pending[id], fn)
	delete(r.pending, id)
	r.mu.Unlock()
	rec, err := r.write(ctx, id, fns)
	if err != nil && !errors.Is(err, adapters.ErrInvalidArgument) && !errors.Is(err, adapters.ErrTooLarge) {
		r.requeue(id, fns)
	}
	return rec, err
}

// requeue puts fns back in front of the execution's queued updates.
func (r *recorder) requeue(id string, fns []func(*record)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pending[id]) == 0 {
		r.queue = append(r.queue, id)
	}
	r.pending[id] = append(fns, r.pending[id]...)
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// maxWriteRounds bounds the reads a write makes while other nodes' writes
// keep landing between its read and its put.
const maxWriteRounds = 20

// build reads the local copy of the record, merges what this node wrote
// last and applies fns; it returns the record (its rev the read's, the
// zero Rev if there was none) and its encoding.
func (r *recorder) build(id string, fns []func(*record)) (*record, []byte, error) {
	var rec *record
	r.mmu.Lock()
	m := r.mine[id]
	r.mmu.Unlock()
	en, ok := r.cat.Get(keyOf(prefixRecord, id))
	switch {
	case ok && m != nil && en.Rev == m.rev:
		rec = m // the local copy is this node's last write: no need to decode it
	case ok:
		rec = merge(decodeRecord(en), m)
	default:
		rec = m
	}
	if rec == nil {
		rec = &record{Status: Status{Execution: id, State: StateRunning}}
	} else {
		c := *rec
		c.Steps = slices.Clone(rec.Steps)
		rec = &c
	}
	rec.rev = en.Rev // zero if !ok
	for _, fn := range fns {
		if fn != nil {
			fn(rec)
		}
	}
	rec.Updated = r.e.opts.Clock.Now()
	// Wall clock only, as the record reads back from the catalog: a record
	// this node returns from memory then equals its copy on every node.
	rec.Started, rec.Updated, rec.Ended = rec.Started.Round(0), rec.Updated.Round(0), rec.Ended.Round(0)
	for i := range rec.Steps {
		rec.Steps[i].Started, rec.Steps[i].Ended = rec.Steps[i].Started.Round(0), rec.Steps[i].Ended.Round(0)
	}
	body, err := json.Marshal(rec)
	if err == nil && len(body) > r.cat.MaxValueSize() {
		// Too large to record whole: without the output, the resume
		// state's vars, then older steps.
		rec.Output = nil
		if body, err = json.Marshal(rec); err == nil && len(body) > r.cat.MaxValueSize() && rec.Resume != nil {
			rec.Resume = nil
			body, err = json.Marshal(rec)
		}
		for err == nil && len(body) > r.cat.MaxValueSize() && len(rec.Steps) > 1 {
			rec.Steps = rec.Steps[len(rec.Steps)/2:]
			body, err = json.Marshal(rec)
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("flows: encode the record of %s: %w", id, err)
	}
	return rec, body, nil
}

// write reads, merges, applies fns and puts the record. The put is made
// only if the local copy is still the one read (catalog.PutIf): a write
// from another node that lands in between is read and merged in a new
// round, so a record built on an older read never replaces it.
func (r *recorder) write(ctx context.Context, id string, fns []func(*record)) (*record, error) {
	r.wmu.Lock()
	defer r.wmu.Unlock()
	key := keyOf(prefixRecord, id)
	var rec *record
	var en catalog.Entry
	for round := 1; ; round++ {
		var body []byte
		var err error
		rec, body, err = r.build(id, fns)
		if err != nil {
			return nil, err
		}
		if r.e.beforePut != nil {
			r.e.beforePut(key)
		}
		en, err = r.cat.PutIf(ctx, key, body, rec.rev)
		if errors.Is(err, catalog.ErrChanged) && round < maxWriteRounds {
			continue
		}
		if err != nil {
			if errors.Is(err, catalog.ErrFull) {
				r.prune() // room within the catalog's next expiry pass
			}
			return nil, fmt.Errorf("flows: record execution %s: %w", id, err)
		}
		break
	}
	rec.rev = en.Rev
	r.mmu.Lock()
	if _, ok := r.mine[id]; !ok {
		r.lru = append(r.lru, id)
		for len(r.lru) > maxMine {
			delete(r.mine, r.lru[0])
			r.lru = r.lru[1:]
		}
	}
	r.mine[id] = rec
	r.mmu.Unlock()
	st := rec.Status
	st.Output, st.Steps = nil, nil
	r.sumMu.Lock()
	if cur, ok := r.sums[en.Key]; !ok || cur.rev.Less(en.Rev) {
		r.sums[en.Key] = summaryEntry{rev: en.Rev, at: en.At, s: st} // the watch need not decode it
	}
	r.sumMu.Unlock()
	// The catalog applied this write before it retained and published it;
	// another node's write that replaced it meanwhile reached watched while
	// mine did not hold it yet, so it is checked here.
	if cur, ok := r.cat.Get(en.Key); ok && cur.Rev != en.Rev {
		r.watched(id, cur)
	}
	return rec, nil
}

// run writes queued updates until ctx ends, then what is left.
func (r *recorder) run(ctx context.Context) {
	tick := r.e.opts.Clock.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			r.flush(context.Background(), 5*time.Second)
			return
		case <-tick.Chan():
			r.prune()
			continue
		case <-r.wake:
		}
		// Gather the updates of the next moment: the steps of a fast
		// execution make one write.
		t := time.NewTimer(coalesce)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		r.flush(ctx, 0)
	}
}

// flush writes every queued update; within a time budget if one is given.
func (r *recorder) flush(ctx context.Context, budget time.Duration) {
	if budget > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, budget)
		defer cancel()
	}
	for {
		r.mu.Lock()
		if len(r.queue) == 0 {
			r.mu.Unlock()
			return
		}
		id := r.queue[0]
		r.queue = r.queue[1:]
		fns := r.pending[id]
		delete(r.pending, id)
		r.mu.Unlock()
		if len(fns) == 0 {
			continue
		}
		_, err := r.write(ctx, id, fns)
		switch {
		case err == nil:
		case ctx.Err() != nil:
			r.e.log.Warn("flows: execution record not written before stopping", "execution", id, "err", err)
		case errors.Is(err, adapters.ErrInvalidArgument), errors.Is(err, adapters.ErrTooLarge):
			r.e.log.Warn("flows: execution record dropped", "execution", id, "err", err)
		default:
			r.e.log.Warn("flows: writing an execution record; retrying", "execution", id, "err", err)
			r.requeue(id, fns)
			t := r.e.opts.Clock.NewTimer(time.Second)
			select {
			case <-ctx.Done():
			case <-t.Chan():
			}
			t.Stop()
		}
	}
}

// prune keeps the executions catalog below Config.MaxRecords: when it
// holds more than nine tenths of it, it moves the expiry cutoff (see
// expireFunc) past the records of the executions that ended longest ago,
// down to eight tenths; the catalog drops them at its next expiry pass (on
// every node: their copies converge, so they pick the same cutoff, and a
// dropped record that a node sends again is dropped on arrival). It returns
// how many records the cutoff passes.
func (r *recorder) prune() int {
	limit := r.e.cfg.MaxRecords
	n := r.cat.Len()
	if n <= limit*9/10 {
		return 0
	}
	var ends []time.Time
	for _, en := range r.cat.List(prefixRecord) {
		var x struct {
			State string    `json:"state"`
			Ended time.Time `json:"ended"`
		}
		if json.Unmarshal(en.Value, &x) == nil && ended(x.State) {
			ends = append(ends, x.Ended)
		}
	}
	sort.Slice(ends, func(i, j int) bool { return ends[i].Before(ends[j]) })
	drop := min(n-limit*8/10, len(ends))
	if drop <= 0 {
		return 0
	}
	cutoff := ends[drop-1].UnixNano() + 1
	for {
		old := r.cutoff.Load()
		if old >= cutoff || r.cutoff.CompareAndSwap(old, cutoff) {
			break
		}
	}
	r.e.log.Info("flows: the executions catalog is nearly full; dropping the records of the executions that ended longest ago",
		"records", drop, "entries", n, "max_records", limit, "ended_before", time.Unix(0, cutoff).UTC())
	return drop
}

// watched is called for every change of a record (and by write, for a
// change while its write was in flight): if it lost something this node
// wrote, the recorder writes the union again.
func (r *recorder) watched(id string, en catalog.Entry) {
	if en.Deleted || en.Rev.Node == r.e.opts.NodeID {
		return
	}
	r.mmu.Lock()
	m := r.mine[id]
	r.mmu.Unlock()
	if m == nil {
		return
	}
	var in record
	if json.Unmarshal(en.Value, &in) != nil {
		return
	}
	if u := merge(&in, m); u.Seq == in.Seq && u.State == in.State && u.Retries == in.Retries && len(u.Steps) == len(in.Steps) {
		return // nothing of ours was lost
	}
	r.update(id, nil) // writes merge(local, mine)
}

// errNoRecord: the execution has no record on this node.
var errNoRecord = errors.New("no record")
