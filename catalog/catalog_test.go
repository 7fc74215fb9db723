package catalog_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/adapters/nats"
	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
	"github.com/clusterbus/clusterbus/catalog"
)

const cluster = "test"

type node struct {
	*catalog.Catalog
	id  string
	reg *prometheus.Registry
}

func start(t *testing.T, b adapters.Broker, id string, tweak func(*catalog.Config)) *node {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := catalog.Config{Cluster: cluster, NodeID: id, Name: "settings", DigestInterval: 300 * time.Millisecond, Registerer: reg}
	if tweak != nil {
		tweak(&cfg)
	}
	c, err := catalog.Open(b, cfg)
	if err != nil {
		t.Fatalf("open %s: %v", id, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatalf("start %s: %v", id, err)
	}
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	return &node{Catalog: c, id: id, reg: reg}
}

func put(t *testing.T, n *node, key, value string) catalog.Entry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e, err := n.Put(ctx, key, []byte(value))
	if err != nil {
		t.Fatalf("%s: put %s: %v", n.id, key, err)
	}
	return e
}

func waitFor(t *testing.T, what string, timeout time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func hasValue(n *node, key, value string) bool {
	e, ok := n.Get(key)
	return ok && string(e.Value) == value
}

// dump renders a catalog's live entries, for comparing copies.
func dump(n *node) string {
	var b strings.Builder
	for _, e := range n.List("") {
		fmt.Fprintf(&b, "%s=%s@%s\n", e.Key, e.Value, e.Rev)
	}
	return b.String()
}

func converged(ns ...*node) bool {
	d := dump(ns[0])
	for _, n := range ns[1:] {
		if dump(n) != d || n.Len() != ns[0].Len() {
			return false
		}
	}
	return true
}

func TestTwoCatalogsConverge(t *testing.T) {
	srv := mem.NewServer()
	a := start(t, srv.Client(), "a", nil)
	b := start(t, srv.Client(), "b", nil)

	var mu sync.Mutex
	var seen []string
	stop := b.Watch(func(e catalog.Entry) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, fmt.Sprintf("%s=%s deleted=%v", e.Key, e.Value, e.Deleted))
	})
	defer stop()

	put(t, a, "feature.x", "on")
	waitFor(t, "b to see feature.x", 5*time.Second, func() bool { return hasValue(b, "feature.x", "on") })
	put(t, a, "feature.x", "off")
	waitFor(t, "b to see feature.x=off", 5*time.Second, func() bool { return hasValue(b, "feature.x", "off") })
	if _, err := b.Delete(context.Background(), "feature.x"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to see the delete", 5*time.Second, func() bool { _, ok := a.Get("feature.x"); return !ok })
	if got := a.List(""); len(got) != 0 {
		t.Fatalf("List after delete = %v, want empty", got)
	}
	waitFor(t, "b's watcher to see three changes", 5*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) == 3
	})
	want := []string{"feature.x=on deleted=false", "feature.x=off deleted=false", "feature.x= deleted=true"}
	mu.Lock()
	defer mu.Unlock()
	for i := range want {
		if seen[i] != want[i] {
			t.Fatalf("watch saw %q, want %q", seen, want)
		}
	}
}

func TestListSortedByKeyAndPrefix(t *testing.T) {
	a := start(t, mem.New(), "a", nil)
	for _, k := range []string{"b/2", "a/1", "b/1", "c"} {
		put(t, a, k, k)
	}
	var keys []string
	for _, e := range a.List("b/") {
		keys = append(keys, e.Key)
	}
	if strings.Join(keys, ",") != "b/1,b/2" {
		t.Fatalf("List(b/) = %v", keys)
	}
	if n := len(a.List("")); n != 4 {
		t.Fatalf("List() has %d entries, want 4", n)
	}
}

// Three nodes on embedded NATS write concurrently and end with the same
// copy.
func TestThreeCatalogsConvergeNATS(t *testing.T) {
	srv, err := natsserver.Start(natsserver.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("embedded NATS server: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	var ns []*node
	for i := range 3 {
		b := openNATS(t, srv.ClientURL())
		ns = append(ns, start(t, b, fmt.Sprintf("n%d", i), nil))
	}
	var wg sync.WaitGroup
	for i, n := range ns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 30 {
				put(t, n, fmt.Sprintf("k%02d", k), fmt.Sprintf("from-%d", i))
			}
		}()
	}
	wg.Wait()
	waitFor(t, "three NATS catalogs to converge", 10*time.Second, func() bool { return converged(ns...) })
	if n := len(ns[0].List("")); n != 30 {
		t.Fatalf("%d keys, want 30", n)
	}
}

func openNATS(t testing.TB, url string) adapters.Broker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := nats.Open(ctx, nats.Options{Servers: []string{url}})
	if err != nil {
		t.Fatalf("nats open: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// A node that starts after the others wrote gets every entry, in sync
// replies split to fit a small broker message size.
func TestLateJoinerGetsEverything(t *testing.T) {
	srv := mem.NewServer(mem.WithMaxMessageSize(16 << 10))
	a := start(t, srv.Client(), "a", nil)
	b := start(t, srv.Client(), "b", nil)
	val := strings.Repeat("v", 300)
	for i := range 200 {
		put(t, a, fmt.Sprintf("key-%03d", i), val)
		put(t, b, fmt.Sprintf("other-%03d", i), val)
	}
	if _, err := a.Delete(context.Background(), "key-000"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a and b to converge", 10*time.Second, func() bool { return converged(a, b) })

	c := start(t, srv.Client(), "c", func(cfg *catalog.Config) { cfg.DigestInterval = time.Hour })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Sync(ctx); err != nil {
		t.Fatalf("sync: %v", err)
	}
	// Sync returns once one responder's reply is complete: everything
	// (c's digest interval is an hour, so no anti-entropy helps).
	if !converged(a, c) {
		t.Fatalf("after Sync c has %d entries, a %d", c.Len(), a.Len())
	}
	if _, ok := c.Get("key-000"); ok {
		t.Fatal("c has the deleted key-000")
	}
	if c.Len() != 400 {
		t.Fatalf("c holds %d entries with tombstones, want 400", c.Len())
	}
	if answered := metricValue(a.reg, "clusterbus_catalog_syncs_total", "kind", "answered") + metricValue(b.reg, "clusterbus_catalog_syncs_total", "kind", "answered"); answered < 1 {
		t.Fatalf("no sync answered")
	}
}

// Sync on a node alone returns ctx's error: nobody answered.
func TestSyncAloneReturnsContextError(t *testing.T) {
	a := start(t, mem.New(), "a", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := a.Sync(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Sync alone = %v, want DeadlineExceeded", err)
	}
}

// Writes made on both sides of a partition resolve the same way on every
// node: higher Rev for ordinary keys, lowest Rev (and tombstones first) for
// FirstWriteWins keys.
func TestConflictRules(t *testing.T) {
	srv := mem.NewServer()
	fww := func(cfg *catalog.Config) {
		cfg.FirstWriteWins = func(k string) bool { return strings.HasPrefix(k, "flow/") }
	}
	ca, cb := srv.Client(), srv.Client()
	a := start(t, ca, "a", fww)
	b := start(t, cb, "b", fww)

	srv.Partition(ca)
	ea := put(t, a, "setting", "from-a")
	eb := put(t, b, "setting", "from-b")
	fa := put(t, a, "flow/x/1", "def-a")
	time.Sleep(5 * time.Millisecond)
	fb := put(t, b, "flow/x/1", "def-b")
	put(t, a, "flow/x/2", "v2")
	srv.Heal()

	waitFor(t, "a and b to converge after the partition", 10*time.Second, func() bool { return converged(a, b) })
	wantSetting := "from-b"
	if eb.Rev.Less(ea.Rev) {
		wantSetting = "from-a"
	}
	wantFlow := "def-a"
	if fb.Rev.Less(fa.Rev) {
		wantFlow = "def-b"
	}
	if !hasValue(a, "setting", wantSetting) || !hasValue(a, "flow/x/1", wantFlow) {
		t.Fatalf("after heal a holds %s; want setting=%s (higher rev) and flow/x/1=%s (lower rev)", dump(a), wantSetting, wantFlow)
	}

	// Immutable keys: another value is a conflict; the same one a no-op.
	ctx := context.Background()
	if _, err := a.Put(ctx, "flow/x/1", []byte("changed")); !errors.Is(err, catalog.ErrConflict) {
		t.Fatalf("Put of another value on a FirstWriteWins key = %v, want ErrConflict", err)
	}
	if e, err := b.Put(ctx, "flow/x/1", []byte(wantFlow)); err != nil || string(e.Value) != wantFlow {
		t.Fatalf("Put of the same value = %v, %v; want the entry, nil", e, err)
	}
	// A tombstone beats the value, even with a higher rev, and is final.
	if _, err := b.Delete(ctx, "flow/x/2"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to see the flow version deleted", 5*time.Second, func() bool { _, ok := a.Get("flow/x/2"); return !ok })
	if _, err := a.Put(ctx, "flow/x/2", []byte("v2")); !errors.Is(err, catalog.ErrConflict) {
		t.Fatalf("Put on a deleted FirstWriteWins key = %v, want ErrConflict", err)
	}
	// Ordinary keys: the later write wins everywhere.
	put(t, a, "setting", "again")
	waitFor(t, "b to see the later write", 5*time.Second, func() bool { return hasValue(b, "setting", "again") })
}

func TestRevLess(t *testing.T) {
	cases := []struct {
		a, b catalog.Rev
		less bool
	}{
		{catalog.Rev{Clock: 1, Node: "z"}, catalog.Rev{Clock: 2, Node: "a"}, true},
		{catalog.Rev{Clock: 2, Node: "a"}, catalog.Rev{Clock: 2, Node: "b"}, true},
		{catalog.Rev{Clock: 2, Node: "b"}, catalog.Rev{Clock: 2, Node: "b"}, false},
		{catalog.Rev{Clock: 3, Node: "a"}, catalog.Rev{Clock: 2, Node: "b"}, false},
	}
	for _, c := range cases {
		if got := c.a.Less(c.b); got != c.less {
			t.Errorf("%v.Less(%v) = %v, want %v", c.a, c.b, got, c.less)
		}
	}
}

// A node's Put wins over every write it has seen, even one whose clock is
// ahead of its own wall clock.
func TestPutWinsOverSeenWrites(t *testing.T) {
	srv := mem.NewServer()
	a := start(t, srv.Client(), "a", nil)
	b := start(t, srv.Client(), "b", nil)
	raw := srv.Client()
	ahead := uint64(time.Now().Add(30 * time.Minute).UnixMilli())
	publishRaw(t, raw, "put", map[string]any{"f": "zz-ahead", "e": []catalog.Entry{{Key: "k", Value: []byte("future"), Rev: catalog.Rev{Clock: ahead, Node: "zz-ahead"}, At: time.Now()}}})
	waitFor(t, "a to merge the write from ahead", 5*time.Second, func() bool { return hasValue(a, "k", "future") })
	e := put(t, a, "k", "mine")
	if e.Rev.Clock <= ahead {
		t.Fatalf("Put's rev %v is not above the seen clock %d", e.Rev, ahead)
	}
	waitFor(t, "b to take a's write", 5*time.Second, func() bool { return hasValue(b, "k", "mine") })
	// And a key a never saw written gets a clock past everything a saw.
	if e2 := put(t, a, "other", "x"); e2.Rev.Clock <= e.Rev.Clock {
		t.Fatalf("clock went back: %v after %v", e2.Rev, e.Rev)
	}
}

func publishRaw(t *testing.T, b adapters.Broker, kind string, body any) {
	t.Helper()
	var raw []byte
	switch v := body.(type) {
	case []byte:
		raw = v
	default:
		var err error
		if raw, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
	}
	m := adapters.Message{Body: raw}
	if kind != "" {
		m.Headers = map[string]string{catalog.HeaderKind: kind}
	}
	if err := b.Publish(context.Background(), cluster+"-catalog-settings", m); err != nil {
		t.Fatalf("publish: %v", err)
	}
}

func rejected(n *node, reason string) float64 {
	return metricValue(n.reg, "clusterbus_catalog_rejected_total", "reason", reason)
}

// metricValue reads the counter name{label=value} of reg; -1 if absent.
func metricValue(reg *prometheus.Registry, name, label, value string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return -1
}

// Garbage and hostile messages on the topic are dropped, counted by reason
// and never crash or corrupt the catalog.
func TestHostileMessagesDroppedAndCounted(t *testing.T) {
	srv := mem.NewServer()
	a := start(t, srv.Client(), "a", func(cfg *catalog.Config) { cfg.MaxValueSize = 2048; cfg.MaxEntries = 50 })
	raw := srv.Client()
	now := time.Now()
	ent := func(k string, v []byte, rev catalog.Rev) []catalog.Entry {
		return []catalog.Entry{{Key: k, Value: v, Rev: rev, At: now}}
	}
	good := catalog.Rev{Clock: 5, Node: "evil"}
	cases := []struct {
		kind   string
		body   any
		reason string
	}{
		{"put", []byte("not json"), "malformed"},
		{"", map[string]any{"f": "evil"}, "malformed"},
		{"bogus", map[string]any{"f": "evil"}, "malformed"},
		{"put", map[string]any{"e": ent("k", nil, good)}, "malformed"}, // no sender
		{"put", map[string]any{"f": "evil", "e": ent("../../etc/passwd ", []byte("x"), good)}, "key"},
		{"put", map[string]any{"f": "evil", "e": ent("", []byte("x"), good)}, "key"},
		{"put", map[string]any{"f": "evil", "e": ent("big", bytes.Repeat([]byte("x"), 4096), good)}, "size"},
		{"put", map[string]any{"f": "evil", "e": ent("norev", []byte("x"), catalog.Rev{Clock: 5})}, "rev"},
		{"put", map[string]any{"f": "evil", "e": ent("zero", []byte("x"), catalog.Rev{Node: "evil"})}, "rev"},
		{"put", map[string]any{"f": "evil", "e": ent("far", []byte("x"), catalog.Rev{Clock: 1 << 62, Node: "evil"})}, "clock"},
		{"put", map[string]any{"f": "evil", "e": []catalog.Entry{{Key: "tomb", Value: []byte("x"), Deleted: true, Rev: good}}}, "malformed"},
		{"sync-reply", map[string]any{"f": "evil", "id": "1", "p": 3, "ps": 2, "dg": map[string]any{"n": 1, "h": 1}}, "malformed"},
		{"sync-reply", map[string]any{"f": "evil", "id": "1", "p": 1, "ps": 1 << 40, "dg": map[string]any{"n": 1, "h": 1}}, "malformed"},
		{"sync-request", map[string]any{"f": "evil", "id": "1", "dg": map[string]any{"n": 1, "h": 1}, "b": []int{1, 2}}, "malformed"},
		{"sync-request", map[string]any{"f": "evil", "id": strings.Repeat("i", 100), "dg": map[string]any{"n": 1, "h": 1}}, "malformed"},
		{"digest", map[string]any{"f": "evil"}, "malformed"},
		{"put", map[string]any{"f": "evil", "e": "not a list"}, "malformed"},
		{"put", map[string]any{"f": "evil", "e": []any{map[string]any{"k": "x", "r": map[string]any{"c": -1, "n": "e"}}}}, "malformed"},
	}
	for i, tc := range cases {
		before := rejected(a, tc.reason)
		publishRaw(t, raw, tc.kind, tc.body)
		waitFor(t, fmt.Sprintf("case %d (%s) counted as %s", i, tc.kind, tc.reason), 5*time.Second, func() bool { return rejected(a, tc.reason) > before })
	}
	if n := a.Len(); n != 0 {
		t.Fatalf("hostile messages left %d entries: %s", n, dump(a))
	}
	// Beyond MaxEntries: counted as full.
	var many []catalog.Entry
	for i := range 60 {
		many = append(many, catalog.Entry{Key: fmt.Sprintf("m%02d", i), Value: []byte("x"), Rev: good, At: now})
	}
	publishRaw(t, raw, "put", map[string]any{"f": "evil", "e": many})
	waitFor(t, "entries beyond MaxEntries counted", 5*time.Second, func() bool { return rejected(a, "full") >= 10 })
	if a.Len() != 50 {
		t.Fatalf("catalog holds %d entries, want MaxEntries 50", a.Len())
	}
	if _, err := a.Put(context.Background(), "one-more", []byte("x")); !errors.Is(err, catalog.ErrFull) {
		t.Fatalf("Put beyond MaxEntries = %v, want ErrFull", err)
	}
	// Random bytes under every kind: no crash, and the catalog still works.
	rng := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		body := make([]byte, rng.IntN(300))
		for j := range body {
			body[j] = byte(rng.IntN(256))
		}
		if rng.IntN(2) == 0 {
			body = []byte(`{"f":"evil","e":[{"k":"` + string(body[:min(len(body), 20)]) + `"}]}`)
		}
		publishRaw(t, raw, []string{"put", "sync-request", "sync-reply", "digest"}[rng.IntN(4)], body)
	}
	b := start(t, srv.Client(), "b", nil)
	put(t, b, "m00", "real")
	waitFor(t, "a to still merge real writes", 5*time.Second, func() bool { return hasValue(a, "m00", "real") })
}

func TestOpenValidatesConfig(t *testing.T) {
	b := mem.New()
	for _, cfg := range []catalog.Config{
		{NodeID: "a", Name: "x"},
		{Cluster: "c", Name: "x"},
		{Cluster: "c", NodeID: "a", Name: "Bad Name"},
		{Cluster: "c", NodeID: "a", Name: ""},
		{Cluster: strings.Repeat("c", 60), NodeID: "a", Name: "settings"},
		{Cluster: "c", NodeID: "a", Name: "x", MaxEntries: -1},
	} {
		if _, err := catalog.Open(b, cfg); !errors.Is(err, adapters.ErrInvalidArgument) {
			t.Errorf("Open(%+v) = %v, want ErrInvalidArgument", cfg, err)
		}
	}
	a := start(t, b, "a", func(cfg *catalog.Config) { cfg.MaxValueSize = 100 })
	ctx := context.Background()
	if _, err := a.Put(ctx, "bad key", nil); !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Errorf("Put with a bad key = %v", err)
	}
	if _, err := a.Put(ctx, "k", make([]byte, 101)); !errors.Is(err, adapters.ErrTooLarge) {
		t.Errorf("Put of a value above MaxValueSize = %v", err)
	}
	_ = a.Stop(ctx)
	if _, err := a.Put(ctx, "k", nil); !errors.Is(err, adapters.ErrClosed) {
		t.Errorf("Put after Stop = %v, want ErrClosed", err)
	}
}

// A node restarted with its data dir keeps its entries, tombstones
// included, with nobody else to ask; the journal is folded into the
// snapshot; a torn journal line is skipped.
func TestRestartWithDirKeepsEntries(t *testing.T) {
	dir := t.TempDir()
	cfg := func(c *catalog.Config) { c.Dir = dir }
	a := start(t, mem.New(), "a", cfg)
	for i := range 1500 { // past the journal's compaction threshold
		put(t, a, fmt.Sprintf("k%04d", i), fmt.Sprint(i))
	}
	if _, err := a.Delete(context.Background(), "k0000"); err != nil {
		t.Fatal(err)
	}
	last := put(t, a, "last", "x")
	if err := a.Stop(context.Background()); err != nil {
		t.Fatalf("stop: %v", err)
	}

	a2 := start(t, mem.New(), "a", cfg)
	if a2.Len() != 1501 || !hasValue(a2, "k1499", "1499") || !hasValue(a2, "last", "x") {
		t.Fatalf("after restart: %d entries", a2.Len())
	}
	if _, ok := a2.Get("k0000"); ok {
		t.Fatal("the tombstone of k0000 was lost")
	}
	if e := put(t, a2, "last", "y"); !last.Rev.Less(e.Rev) {
		t.Fatalf("a write after restart got rev %v, not above %v", e.Rev, last.Rev)
	}
	// Crash: no Stop, so the write is only in the journal, plus a torn line.
	put(t, a2, "journal-only", "j")
	journal := filepath.Join(dir, "catalog-settings.log")
	f, err := os.OpenFile(journal, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = f.WriteString(`{"k":"torn","v":"eA`)
	_ = f.Close()
	a3 := start(t, mem.New(), "a", cfg)
	if !hasValue(a3, "journal-only", "j") || !hasValue(a3, "last", "y") || a3.Len() != 1502 {
		t.Fatalf("after a crash: %d entries, journal-only %v", a3.Len(), hasValue(a3, "journal-only", "j"))
	}
	if _, err := os.Stat(filepath.Join(dir, "catalog-settings.json")); err != nil {
		t.Fatalf("no snapshot: %v", err)
	}
	_ = a2.Stop(context.Background())
}

// Expire drops entries on every node, and a peer's copy of an expired
// entry is not merged back.
func TestExpire(t *testing.T) {
	srv := mem.NewServer()
	exp := func(cfg *catalog.Config) {
		cfg.Expire = func(e catalog.Entry, now time.Time) bool { return strings.HasPrefix(string(e.Value), "tmp") }
	}
	a := start(t, srv.Client(), "a", exp)
	b := start(t, srv.Client(), "b", func(cfg *catalog.Config) { cfg.DigestInterval = time.Hour })
	put(t, a, "keep", "x")
	put(t, a, "drop", "tmp")
	waitFor(t, "a to expire drop", 5*time.Second, func() bool { _, ok := a.Get("drop"); return !ok })
	waitFor(t, "b to have drop (b does not expire it)", 5*time.Second, func() bool { return hasValue(b, "drop", "tmp") })
	// b answers a's sync requests with "drop": a must not take it back.
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = a.Sync(ctx)
		cancel()
	}
	if _, ok := a.Get("drop"); ok || !hasValue(a, "keep", "x") {
		t.Fatalf("a after sync: %s", dump(a))
	}
}

// A flood of sync requests is answered at most ten times a second.
func TestSyncRequestFloodIsThrottled(t *testing.T) {
	srv := mem.NewServer()
	a := start(t, srv.Client(), "a", func(cfg *catalog.Config) { cfg.DigestInterval = time.Hour })
	put(t, a, "k", "v")
	raw := srv.Client()
	began := time.Now()
	for i := range 200 {
		publishRaw(t, raw, "sync-request", map[string]any{"f": "flooder", "id": fmt.Sprint("req", i), "dg": map[string]any{"n": 0, "h": 0}})
	}
	waitFor(t, "the flood to be throttled", 5*time.Second, func() bool {
		return metricValue(a.reg, "clusterbus_catalog_syncs_total", "kind", "throttled") > 0
	})
	time.Sleep(300 * time.Millisecond)
	// 10 a second, in every second window the flood spanned.
	limit := 10 * (int(time.Since(began)/time.Second) + 2)
	if n := metricValue(a.reg, "clusterbus_catalog_syncs_total", "kind", "answered"); n > float64(limit) {
		t.Fatalf("answered %v of 200 flooded requests, limit %d", n, limit)
	}
}

// Answers to background sync requests (digest mismatch) leave out writes
// of the last two seconds; explicit ones (Sync, Start) carry everything.
func TestBackgroundSyncLeavesOutRecentWrites(t *testing.T) {
	srv := mem.NewServer()
	a := start(t, srv.Client(), "a", func(cfg *catalog.Config) { cfg.DigestInterval = time.Hour })
	put(t, a, "fresh", "v")
	raw := srv.Client()
	sub, err := raw.Subscribe(context.Background(), cluster+"-catalog-settings")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	replies := func(within time.Duration) int {
		n := 0
		ctx, cancel := context.WithTimeout(context.Background(), within)
		defer cancel()
		for {
			m, err := sub.Receive(ctx)
			if err != nil {
				return n
			}
			if m.Headers[catalog.HeaderKind] == "sync-reply" && bytes.Contains(m.Body, []byte(`"fresh"`)) {
				n++
			}
		}
	}
	publishRaw(t, raw, "sync-request", map[string]any{"f": "x", "id": "bg1", "bg": true, "dg": map[string]any{"n": 0, "h": 0}})
	if n := replies(time.Second); n != 0 {
		t.Fatalf("a background request got %d replies carrying a write made just now", n)
	}
	publishRaw(t, raw, "sync-request", map[string]any{"f": "x", "id": "fg1", "dg": map[string]any{"n": 0, "h": 0}})
	if n := replies(time.Second); n != 1 {
		t.Fatalf("an explicit request got %d replies with the write, want 1", n)
	}
	time.Sleep(time.Second) // 2 s after the write, with the waits above
	publishRaw(t, raw, "sync-request", map[string]any{"f": "x", "id": "bg2", "bg": true, "dg": map[string]any{"n": 0, "h": 0}})
	if n := replies(time.Second); n != 1 {
		t.Fatalf("a background request 2 s later got %d replies with the write, want 1", n)
	}
}

// A put lost on the way to one node reaches it through the digest
// exchange.
func TestLostPutRepairedByDigests(t *testing.T) {
	srv := mem.NewServer()
	slow := func(cfg *catalog.Config) { cfg.DigestInterval = time.Second }
	a := start(t, srv.Client(), "a", slow)
	cb := srv.Client()
	b := start(t, cb, "b", slow)
	time.Sleep(200 * time.Millisecond) // the answers to the start's sync requests are in
	cb.DropNext(cluster+"-catalog-settings", 1)
	began := time.Now()
	put(t, a, "lost", "v")
	time.Sleep(100 * time.Millisecond)
	if _, ok := b.Get("lost"); ok {
		t.Fatal("the put was not dropped")
	}
	waitFor(t, "b to get the lost put", 10*time.Second, func() bool { return hasValue(b, "lost", "v") })
	t.Logf("repaired after %s (digest interval 1s, settle 2s)", time.Since(began).Round(10*time.Millisecond))
}

// A node whose subscription reports a gap (adapters.ErrGap: here the mem
// broker's, after a disconnect during which a put went by) asks for a sync
// at once and gets what it missed, with digests an hour apart so the
// digest exchange cannot be what repairs it.
func TestGapTriggersSync(t *testing.T) {
	srv := mem.NewServer()
	hourly := func(cfg *catalog.Config) { cfg.DigestInterval = time.Hour }
	a := start(t, srv.Client(), "a", hourly)
	cb := srv.Client()
	b := start(t, cb, "b", hourly)
	put(t, a, "before", "v")
	waitFor(t, "b to see the put before the gap", 5*time.Second, func() bool { return hasValue(b, "before", "v") })

	cb.Disconnect()
	put(t, a, "lost", "v")
	// Background sync answers leave out the writes of the last 2 s (still
	// on their way); wait them out so the answer to the gap carries it.
	time.Sleep(2200 * time.Millisecond)
	if _, ok := b.Get("lost"); ok {
		t.Fatal("b got the put made while it was disconnected")
	}
	began := time.Now()
	srv.Reconnect(cb) // b's subscription now reports ErrGap once
	waitFor(t, "b to get the put missed in the gap", 3*time.Second, func() bool { return hasValue(b, "lost", "v") })
	t.Logf("repaired %s after the gap (digest interval 1h)", time.Since(began).Round(10*time.Millisecond))
}

// PutIf writes only over the entry its read saw: after another node's write
// lands, it returns ErrChanged with that entry and leaves it in place; the
// zero Rev stands for "no entry" (absent or deleted).
func TestPutIfWritesOnlyOverWhatWasRead(t *testing.T) {
	srv := mem.NewServer()
	t.Cleanup(srv.Close)
	a := start(t, srv.Client(), "a", nil)
	b := start(t, srv.Client(), "b", nil)
	ctx := context.Background()
	first, err := a.PutIf(ctx, "k", []byte("1"), catalog.Rev{})
	if err != nil {
		t.Fatalf("PutIf on a missing key with the zero Rev: %v", err)
	}
	if _, err := a.PutIf(ctx, "k", []byte("x"), catalog.Rev{}); !errors.Is(err, catalog.ErrChanged) {
		t.Fatalf("PutIf with the zero Rev on a key that holds a value = %v, want ErrChanged", err)
	}
	waitFor(t, "b to hold a's write", 5*time.Second, func() bool { return hasValue(b, "k", "1") })
	other := put(t, b, "k", "2")
	waitFor(t, "a to hold b's write", 5*time.Second, func() bool { return hasValue(a, "k", "2") })
	cur, err := a.PutIf(ctx, "k", []byte("built on 1"), first.Rev)
	if !errors.Is(err, catalog.ErrChanged) || cur.Rev != other.Rev {
		t.Fatalf("PutIf over a stale read = %v, %v; want ErrChanged and b's entry %v", cur, err, other.Rev)
	}
	if !hasValue(a, "k", "2") {
		t.Fatalf("a's failed PutIf changed the entry: %s", dump(a))
	}
	if e, err := a.PutIf(ctx, "k", []byte("built on 2"), other.Rev); err != nil || !other.Rev.Less(e.Rev) {
		t.Fatalf("PutIf over the current entry = %v, %v", e, err)
	}
	if _, err := a.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.PutIf(ctx, "k", []byte("after delete"), catalog.Rev{}); err != nil {
		t.Fatalf("PutIf with the zero Rev on a deleted key: %v", err)
	}
}
