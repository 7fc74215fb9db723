package flows

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

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
