package flows

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/catalog"
)

func TestExpireDropsEndedRecordsByAgeAndCutoff(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	var cutoff atomic.Int64
	exp := expireFunc(24*time.Hour, &cutoff)
	rec := func(state string, endedAgo time.Duration) catalog.Entry {
		b, _ := json.Marshal(record{Status: Status{Execution: "e", State: state, Ended: now.Add(-endedAgo)}})
		return catalog.Entry{Key: "x/e", Value: b, At: now.Add(-endedAgo)}
	}
	for _, tc := range []struct {
		name string
		e    catalog.Entry
		cut  time.Time
		want bool
	}{
		{"recent completed kept", rec(StateCompleted, time.Hour), time.Time{}, false},
		{"old completed dropped", rec(StateCompleted, 25*time.Hour), time.Time{}, true},
		{"old running kept", rec(StateRunning, 25*time.Hour), time.Time{}, false},
		{"old awaiting kept", rec(StateAwaiting, 25*time.Hour), time.Time{}, false},
		{"completed before the cutoff dropped", rec(StateCompleted, time.Hour), now.Add(-time.Minute), true},
		{"running before the cutoff kept", rec(StateRunning, time.Hour), now.Add(-time.Minute), false},
		{"recent tombstone kept", catalog.Entry{Key: "x/e", Deleted: true, At: now.Add(-time.Minute)}, time.Time{}, false},
		{"tombstone dropped after an hour", catalog.Entry{Key: "x/e", Deleted: true, At: now.Add(-2 * time.Hour)}, time.Time{}, true},
		{"recent cancel request kept", catalog.Entry{Key: "c/e", Value: []byte(`{}`), At: now.Add(-time.Hour)}, time.Time{}, false},
		{"old cancel request dropped", catalog.Entry{Key: "c/e", Value: []byte(`{}`), At: now.Add(-25 * time.Hour)}, time.Time{}, true},
		{"old unresolved park kept", catalog.Entry{Key: "a/e", Value: []byte(`{"next":{}}`), At: now.Add(-25 * time.Hour)}, time.Time{}, false},
		{"old resolved park dropped", catalog.Entry{Key: "a/e", Value: []byte(`{"winner":"signal"}`), At: now.Add(-25 * time.Hour)}, time.Time{}, true},
	} {
		cutoff.Store(0)
		if !tc.cut.IsZero() {
			cutoff.Store(tc.cut.UnixNano())
		}
		if got := exp(tc.e, now); got != tc.want {
			t.Errorf("%s: expire %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestRecordsStayBelowMaxRecords: with MaxRecords 20, forty executions
// leave at most 20 entries; the newest keep their records.
func TestRecordsStayBelowMaxRecords(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := mem.New()
	defer b.Close()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	e, err := New(b, Config{Queue: "prune", MaxRecords: 20, Concurrency: 1}, Options{NodeID: "n1", Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	// The engine's own catalog, with a short expiry pass.
	cat, err := catalog.Open(b, catalog.Config{Cluster: "prune", NodeID: "n1", Name: "executions", MaxEntries: 20,
		DigestInterval: 50 * time.Millisecond, Expire: expireFunc(time.Hour, &e.rec.cutoff)})
	if err != nil {
		t.Fatal(err)
	}
	e.cat, e.rec.cat = cat, cat
	if err := e.Register(&Flow{Name: "one", Version: 1, Steps: []Step{{Name: "s",
		Run: func(context.Context, *StepContext) (Outcome, error) { return Outcome{}, nil }}}}); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer e.Stop(context.Background())
	var ids []string
	for i := range 40 {
		id := fmt.Sprintf("p%02d", i)
		if _, err := e.Submit(ctx, "one", nil, WithExecutionID(id)); err != nil {
			t.Fatal(err)
		}
		for {
			if r := e.rec.get(id); r != nil && r.State == StateCompleted {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("execution %s did not complete (entries %d)", id, cat.Len())
			}
			time.Sleep(2 * time.Millisecond)
		}
		ids = append(ids, id)
	}
	if n := cat.Len(); n > 20 {
		t.Fatalf("%d entries, MaxRecords 20", n)
	}
	for _, id := range ids[len(ids)-5:] {
		if e.rec.get(id) == nil {
			t.Errorf("the record of %s, among the newest, is gone", id)
		}
	}
	if e.rec.get(ids[0]) != nil {
		t.Errorf("the record of the oldest execution %s is still there", ids[0])
	}
}

func TestKeyOfEveryExecutionIDIsAValidCatalogKey(t *testing.T) {
	seen := map[string]string{}
	for _, id := range []string{"a", "order-17", "x.y@z=1", "with space", "ünïcode", "+plus", "slash/es", "1234567890123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890"} {
		k := keyOf(prefixRecord, id)
		if err := catalog.ValidateKey(k); err != nil {
			t.Errorf("%q: key %q: %v", id, k, err)
		}
		if other, dup := seen[k]; dup {
			t.Errorf("%q and %q share key %q", id, other, k)
		}
		seen[k] = id
	}
}

// startEngine starts an engine on b (closed at the end of the test) with
// no flows; it is stopped at the end of the test.
func startEngine(ctx context.Context, t *testing.T, b adapters.Broker, queue, id string) *Engine {
	t.Helper()
	t.Cleanup(func() { b.Close() })
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	e, err := New(b, Config{Queue: queue}, Options{NodeID: id, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Stop(context.Background()) })
	return e
}

// waitUntil polls cond until it holds (true) or ctx ends (false).
func waitUntil(ctx context.Context, cond func() bool) bool {
	for !cond() {
		if ctx.Err() != nil {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

// TestALateLowerRecordIsRepaired: the catalog keeps the last write of a
// key; when another node's late write of a record with a lower sequence
// (a step write delayed past the next step's) replaces this node's, this
// node writes the union again: every node ends with the highest sequence
// and both writes' steps.
func TestALateLowerRecordIsRepaired(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv := mem.NewServer()
	t.Cleanup(srv.Close)
	es := []*Engine{startEngine(ctx, t, srv.Client(), "repair", "n1"), startEngine(ctx, t, srv.Client(), "repair", "n2")}
	n1, n2 := es[0], es[1]
	now := time.Now()
	if _, err := n1.rec.updateNow(ctx, "x1", func(r *record) {
		r.Flow, r.State, r.Step, r.Seq = "f", StateRunning, "s5", 5
		r.Steps = []StepRecord{{Step: "s4", Seq: 4, Node: "n1", Outcome: StepDone, Started: now}}
	}); err != nil {
		t.Fatal(err)
	}
	waitFor := func(what string, ok func(*record) bool) {
		t.Helper()
		if !waitUntil(ctx, func() bool {
			r1, r2 := n1.rec.get("x1"), n2.rec.get("x1")
			return r1 != nil && r2 != nil && ok(r1) && ok(r2)
		}) {
			t.Fatalf("%s: n1 %+v, n2 %+v", what, n1.rec.get("x1"), n2.rec.get("x1"))
		}
	}
	waitFor("both have seq 5", func(r *record) bool { return r.Seq == 5 })
	// n2's late write of an older state wins the catalog's merge (a later
	// revision) ...
	late, _ := json.Marshal(record{Status: Status{Execution: "x1", Flow: "f", State: StateRunning, Step: "s3", Seq: 3,
		Steps: []StepRecord{{Step: "s2", Seq: 2, Node: "n2", Outcome: StepDone, Started: now.Add(-time.Second)}}}})
	if _, err := n2.cat.Put(ctx, keyOf(prefixRecord, "x1"), late); err != nil {
		t.Fatal(err)
	}
	// ... and n1 writes the union back.
	waitFor("both have seq 5 with both writes' steps", func(r *record) bool {
		return r.Seq == 5 && r.Step == "s5" && len(r.Steps) == 2 && r.Steps[0].Step == "s2" && r.Steps[1].Step == "s4"
	})
}

// heldRetain holds the first Retain of key until release is closed.
type heldRetain struct {
	*mem.Broker
	key     string
	once    sync.Once
	held    chan struct{} // closed when that Retain waits
	release chan struct{}
}

func (h *heldRetain) Retain(ctx context.Context, log, key string, value []byte) error {
	if key == h.key {
		h.once.Do(func() {
			close(h.held)
			<-h.release
		})
	}
	return h.Broker.Retain(ctx, log, key, value)
}

// A write of a lower record by another node that replaces this node's
// write while it is still being retained and published (so before the
// recorder knows it as its own) is repaired too: the recorder checks, once
// its write returns, whether the local copy is still its write.
func TestARecordReplacedWhileItsWriteIsInFlightIsRepaired(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv := mem.NewServer()
	t.Cleanup(srv.Close)
	held := &heldRetain{Broker: srv.Client(), key: keyOf(prefixRecord, "x1"), held: make(chan struct{}), release: make(chan struct{})}
	n1, n2 := startEngine(ctx, t, held, "inflight", "n1"), startEngine(ctx, t, srv.Client(), "inflight", "n2")
	wrote := make(chan error, 1)
	go func() {
		_, err := n1.rec.updateNow(ctx, "x1", func(r *record) {
			r.Flow, r.State, r.Step, r.Seq, r.Ended = "f", StateDeadLettered, "s5", 5, time.Now()
		})
		wrote <- err
	}()
	<-held.held // n1's write is applied on n1, not yet retained nor published
	// n2's write comes later: its Rev is at least n1's, and n2 > n1 breaks
	// a tie.
	late, _ := json.Marshal(record{Status: Status{Execution: "x1", Flow: "f", State: StateRunning, Step: "s3", Seq: 3}})
	if _, err := n2.cat.Put(ctx, keyOf(prefixRecord, "x1"), late); err != nil {
		t.Fatal(err)
	}
	if !waitUntil(ctx, func() bool {
		en, ok := n1.cat.Get(keyOf(prefixRecord, "x1"))
		return ok && en.Rev.Node == "n2" // n2's later revision replaced n1's write on n1
	}) {
		t.Fatal("n2's write never reached n1")
	}
	close(held.release)
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if !waitUntil(ctx, func() bool {
		r1, r2 := n1.rec.get("x1"), n2.rec.get("x1")
		return r1 != nil && r2 != nil && r1.Seq == 5 && r2.Seq == 5 && r1.State == StateDeadLettered && r2.State == StateDeadLettered
	}) {
		t.Fatalf("n1's dead-lettered record was lost to n2's lower write: n1 %+v, n2 %+v", n1.rec.get("x1"), n2.rec.get("x1"))
	}
}

// Another node's write that lands between a write's read and its put is
// not replaced by the record built on the older read (whose Rev is later):
// the put finds the copy changed and the write reads and merges again. The
// other node stops right after its write, so nobody repairs the record
// afterwards: the write itself must not lose it.
func TestAWriteLandingBetweenReadAndPutIsMerged(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv := mem.NewServer()
	t.Cleanup(srv.Close)
	es := []*Engine{startEngine(ctx, t, srv.Client(), "readput", "n1"), startEngine(ctx, t, srv.Client(), "readput", "n2")}
	n1, n2 := es[0], es[1]
	var once sync.Once
	n1.beforePut = func(string) {
		once.Do(func() {
			if _, err := n2.rec.updateNow(ctx, "x1", func(r *record) {
				r.Flow, r.State, r.Step, r.Seq, r.Ended = "f", StateCompleted, "s3", 3, time.Now()
			}); err != nil {
				t.Error(err)
			}
			if !waitUntil(ctx, func() bool {
				en, ok := n1.cat.Get(keyOf(prefixRecord, "x1"))
				return ok && en.Rev.Node == "n2"
			}) {
				t.Error("n2's write never reached n1")
				return
			}
			if err := n2.Stop(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	// What Submit records: fills in an empty record, keeps what is there.
	if _, err := n1.rec.updateNow(ctx, "x1", func(r *record) {
		if r.Flow == "" {
			r.Flow, r.Step, r.Node = "f", "s0", "n1"
		}
	}); err != nil {
		t.Fatal(err)
	}
	// Right after the write: no repair may be needed (n2, which could
	// repair, is stopped).
	if r := n1.rec.get("x1"); r == nil || r.State != StateCompleted || r.Seq != 3 {
		t.Fatalf("n1 holds %+v: the completed record n2 wrote between n1's read and put was replaced", r)
	}
}

// A signal that lands between a timeout claim's read of the park and its
// put wins: the claim reads the park again, finds it resolved and gives
// way, instead of overwriting the signal's resolution with its later Rev
// (which would run both paths of the await).
func TestASignalLandingBetweenAClaimsReadAndPutWins(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	srv := mem.NewServer()
	t.Cleanup(srv.Close)
	es := []*Engine{startEngine(ctx, t, srv.Client(), "claim", "n1"), startEngine(ctx, t, srv.Client(), "claim", "n2")}
	n1, n2 := es[0], es[1]
	next := &item{V: 1, Exec: "x1", Flow: "f", Version: 1, Step: "after", Seq: 2}
	if err := n1.putJSON(ctx, keyOf(prefixAwait, "x1"), park{Seq: 2, Step: "wait", Signal: "go", SaveAs: "wait", Next: next}); err != nil {
		t.Fatal(err)
	}
	if !waitUntil(ctx, func() bool { return n2.getPark("x1") != nil }) {
		t.Fatal("the park never reached n2")
	}
	var once sync.Once
	n1.beforePut = func(key string) {
		if key != keyOf(prefixAwait, "x1") {
			return
		}
		once.Do(func() {
			if _, err := n2.Signal(ctx, "x1", "go", "data"); err != nil {
				t.Errorf("signal: %v", err)
			}
			if !waitUntil(ctx, func() bool { p := n1.getPark("x1"); return p != nil && p.Winner == awaitSignal }) {
				t.Error("the signal's resolution never reached n1")
			}
		})
	}
	timeout := *next
	timeout.Await = awaitTimeout
	winner, err := n1.claimTimeout(ctx, &timeout)
	if err != nil {
		t.Fatal(err)
	}
	if winner != awaitSignal {
		t.Fatalf("claimTimeout = %q, want %q: the timeout overwrote the signal that resolved the await first", winner, awaitSignal)
	}
	// n1 wrote nothing: its copy is n2's write, resolved by the signal.
	if en, ok := n1.cat.Get(keyOf(prefixAwait, "x1")); !ok || en.Rev.Node != "n2" {
		t.Fatalf("n1's park entry %+v, want n2's write and nothing of n1's after it", en)
	}
	for _, e := range es {
		if p := e.getPark("x1"); p == nil || p.Winner != awaitSignal {
			t.Fatalf("%s's park %+v, want resolved by the signal", e.opts.NodeID, p)
		}
	}
}

func TestMergeKeepsTheHighestGenerationThenSequence(t *testing.T) {
	at := time.Unix(100, 0)
	mk := func(name string, gen, seq int, state string, updated int) *record {
		return &record{Status: Status{Execution: "e", Retries: gen, Seq: seq, State: state, Error: name,
			Updated: at.Add(time.Duration(updated) * time.Second),
			Steps:   []StepRecord{{Step: "s", Seq: seq, Node: name, Outcome: StepDone}}}}
	}
	for _, tc := range []struct {
		name string
		a, b *record
	}{
		{"higher seq", mk("win", 0, 5, StateRunning, 0), mk("lose", 0, 3, StateRunning, 9)},
		{"higher generation", mk("win", 1, 2, StateRunning, 0), mk("lose", 0, 7, StateDeadLettered, 9)},
		{"ended over running at the same seq", mk("win", 0, 4, StateCancelled, 0), mk("lose", 0, 4, StateRunning, 9)},
		{"later update otherwise", mk("win", 0, 4, StateAwaiting, 2), mk("lose", 0, 4, StateRunning, 1)},
	} {
		for _, order := range [][2]*record{{tc.a, tc.b}, {tc.b, tc.a}} {
			u := merge(order[0], order[1])
			if u.Error != "win" || len(u.Steps) != 2 {
				t.Errorf("%s: merge gave %+v, want the winner's summary with both steps", tc.name, u.Status)
			}
		}
	}
}

// A record a write returns (what Status gives while updates are queued)
// equals the record as it reads back from the catalog on any node: no
// monotonic clock readings that the catalog's copy cannot have.
func TestAWrittenRecordEqualsItsCatalogCopy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv := mem.NewServer()
	t.Cleanup(srv.Close)
	n1 := startEngine(ctx, t, srv.Client(), "wall", "n1")
	start := time.Now()
	rec, err := n1.rec.updateNow(ctx, "x1", func(r *record) {
		r.Flow, r.Step, r.Started = "f", "s1", start
		r.Steps = []StepRecord{{Step: "s0", Node: "n1", Outcome: StepDone, Started: start, Ended: time.Now()}}
	})
	if err != nil {
		t.Fatal(err)
	}
	got := n1.rec.get("x1")
	if got == nil || fmt.Sprintf("%+v", got.Status) != fmt.Sprintf("%+v", rec.Status) {
		t.Fatalf("written  %+v\nread back %+v", rec.Status, got)
	}
}
