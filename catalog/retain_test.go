package catalog_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/kafka"
	"github.com/clusterbus/clusterbus/adapters/kafka/kafkatest"
	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
	"github.com/clusterbus/clusterbus/adapters/signed"
	"github.com/clusterbus/clusterbus/catalog"
)

// Every catalog stops and the NATS server restarts; new catalogs without
// data dirs get every entry from the broker's retained copy at Start.
func TestWholeClusterRestartNATS(t *testing.T) {
	dataDir := t.TempDir()
	srv, err := natsserver.Start(natsserver.Config{Listen: "127.0.0.1:0", DataDir: dataDir})
	if err != nil {
		t.Fatalf("embedded NATS server: %v", err)
	}
	var ns []*node
	var brokers []adapters.Broker
	for i := range 3 {
		b := openNATS(t, srv.ClientURL())
		brokers = append(brokers, b)
		ns = append(ns, start(t, b, fmt.Sprintf("n%d", i), nil))
	}
	for i := range 60 {
		put(t, ns[i%3], fmt.Sprintf("k%02d", i), fmt.Sprint("v", i))
	}
	put(t, ns[1], "k00", "rewritten")
	if _, err := ns[2].Delete(context.Background(), "k01"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the three catalogs to converge", 10*time.Second, func() bool { return converged(ns...) })
	want := dump(ns[0])
	for i, n := range ns {
		if err := n.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
		_ = brokers[i].Close()
	}
	srv.Shutdown()
	srv.WaitForShutdown()

	srv, err = natsserver.Start(natsserver.Config{Listen: "127.0.0.1:0", DataDir: dataDir})
	if err != nil {
		t.Fatalf("restart the embedded NATS server: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	for i := range 3 {
		n := start(t, openNATS(t, srv.ClientURL()), fmt.Sprintf("n%d", i), func(cfg *catalog.Config) { cfg.DigestInterval = time.Hour })
		if got := dump(n); got != want {
			t.Fatalf("node %d after the restart holds\n%s\nwant\n%s", i, got, want)
		}
		if _, ok := n.Get("k01"); ok {
			t.Fatal("the delete of k01 was lost")
		}
	}
}

// Through the signed decorator, retained entries are signed; a value put
// in the broker without the key is dropped at Start.
func TestRetainedThroughSignedDecorator(t *testing.T) {
	srv := mem.NewServer()
	ring, err := signed.NewKeyRing([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	wrap := func(id string) adapters.Broker {
		b, err := signed.Wrap(srv.Client(), signed.Config{Cluster: cluster, Sender: id, Keys: ring})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a := start(t, wrap("a"), "a", nil)
	put(t, a, "one", "1")
	put(t, a, "two", "2")
	_ = a.Stop(context.Background())
	// A forged entry written straight into the broker.
	raw := srv.Client()
	if err := raw.Retain(context.Background(), cluster+"-catalog-settings", "evil", []byte(`{"k":"evil","v":"eA==","r":{"c":1,"n":"x"}}`)); err != nil {
		t.Fatal(err)
	}
	b := start(t, wrap("b"), "b", func(cfg *catalog.Config) { cfg.DigestInterval = time.Hour })
	if !hasValue(b, "one", "1") || !hasValue(b, "two", "2") {
		t.Fatalf("b after start: %s", dump(b))
	}
	if _, ok := b.Get("evil"); ok {
		t.Fatal("an unsigned retained entry was merged")
	}
}

// The same on Kafka (kfake): the catalog's compacted topic outlives every
// node and a broker restart.
func TestWholeClusterRestartKafka(t *testing.T) {
	fake, err := kafkatest.Start(kafkatest.Options{DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(fake.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	open := func() adapters.Broker {
		cfg, err := kafka.ParseURL(fake.URL())
		if err != nil {
			t.Fatal(err)
		}
		b, err := kafka.Open(ctx, cfg)
		if err != nil {
			t.Fatalf("kafka open: %v", err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return b
	}
	a := start(t, open(), "a", nil)
	b := start(t, open(), "b", nil)
	for i := range 20 {
		put(t, []*node{a, b}[i%2], fmt.Sprintf("k%02d", i), fmt.Sprint("v", i))
	}
	if _, err := b.Delete(ctx, "k00"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a and b to converge", 20*time.Second, func() bool { return converged(a, b) })
	want := dump(a)
	_ = a.Stop(ctx)
	_ = b.Stop(ctx)
	if err := fake.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	c := start(t, open(), "c", func(cfg *catalog.Config) { cfg.DigestInterval = time.Hour })
	if got := dump(c); got != want {
		t.Fatalf("a new node after the restart holds\n%s\nwant\n%s", got, want)
	}
}

// A node whose data dir holds entries the broker never kept retains them
// after Start, so a node without a data dir gets them from the broker; the
// writer of an expired entry forgets it in the broker.
func TestRetainedCopyRepairedAndExpiredForgotten(t *testing.T) {
	dir := t.TempDir()
	// First on a broker that keeps nothing: only the data dir has them.
	a := start(t, struct{ adapters.Broker }{mem.New()}, "a", func(cfg *catalog.Config) { cfg.Dir = dir })
	put(t, a, "one", "1")
	put(t, a, "two", "2")
	_ = a.Stop(context.Background())

	srv := mem.NewServer()
	log := cluster + "-catalog-settings"
	exp := func(cfg *catalog.Config) {
		cfg.Dir = dir
		cfg.Expire = func(e catalog.Entry, now time.Time) bool { return string(e.Value) == "tmp" }
	}
	a2 := start(t, srv.Client(), "a", exp)
	raw := srv.Client()
	waitFor(t, "a's entries retained", 5*time.Second, func() bool {
		m, _ := raw.Retained(context.Background(), log)
		return len(m) == 2
	})
	b := start(t, srv.Client(), "b", func(cfg *catalog.Config) { cfg.DigestInterval = time.Hour })
	if !hasValue(b, "one", "1") || !hasValue(b, "two", "2") {
		t.Fatalf("b after start: %s", dump(b))
	}
	put(t, a2, "scratch", "tmp")
	if m, _ := raw.Retained(context.Background(), log); m["scratch"] == nil {
		t.Fatal("scratch was not retained")
	}
	waitFor(t, "the expired entry forgotten in the broker", 5*time.Second, func() bool {
		m, _ := raw.Retained(context.Background(), log)
		return m["scratch"] == nil && len(m) == 2
	})
	// A value in the broker that is garbage is forgotten by the next node
	// that starts.
	if err := raw.Retain(context.Background(), log, "junk", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	start(t, srv.Client(), "c", func(cfg *catalog.Config) { cfg.DigestInterval = time.Hour })
	waitFor(t, "the junk forgotten", 5*time.Second, func() bool {
		m, _ := raw.Retained(context.Background(), log)
		return m["junk"] == nil
	})
}

// On a signed cluster, a sync request, a put and a digest published by a
// client without the key (or with another key) are dropped: no node
// answers with its catalog, and nothing is merged. The same request from a
// node with the key is answered, which shows that an answer would be seen.
func TestSignedCatalogIgnoresForgedSyncRequestsAndPuts(t *testing.T) {
	srv := mem.NewServer()
	ring, err := signed.NewKeyRing([]byte("0123456789abcdef0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := signed.NewKeyRing([]byte("another-key-entirely-0123456789"))
	wrap := func(id string, keys *signed.KeyRing) adapters.Broker {
		b, err := signed.Wrap(srv.Client(), signed.Config{Cluster: cluster, Sender: id, Keys: keys})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	slow := func(cfg *catalog.Config) { cfg.DigestInterval = time.Hour }
	a := start(t, wrap("a", ring), "a", slow)
	b := start(t, wrap("b", ring), "b", slow)
	put(t, a, "secret.setting", "only for members")
	waitFor(t, "b to get the setting", 5*time.Second, func() bool { return hasValue(b, "secret.setting", "only for members") })

	ctx := t.Context()
	sub, err := srv.Client().Subscribe(ctx, cluster+"-catalog-settings")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	// Answers (kind sync-reply, inside the envelope) name the request's ID.
	forged, control := make(chan struct{}, 100), make(chan struct{}, 100)
	go func() {
		for {
			m, err := sub.Receive(ctx)
			if err != nil {
				return
			}
			body := string(m.Body)
			if !strings.Contains(body, "sync-reply") { // the requests themselves, digests
				continue
			}
			switch {
			case strings.Contains(body, `"id":"req-1"`), strings.Contains(body, `"id":"req-2"`):
				forged <- struct{}{}
			case strings.Contains(body, `"id":"req-3"`) && strings.Contains(body, "secret.setting"):
				control <- struct{}{}
			}
		}
	}()
	req := map[string]any{"f": "evil", "id": "req-1", "dg": map[string]any{"n": 0, "h": 0}}
	evilPut := map[string]any{"f": "evil", "e": []catalog.Entry{{Key: "evil.key", Value: []byte("x"), Rev: catalog.Rev{Clock: 1, Node: "evil"}, At: time.Now()}}}
	publishRaw(t, srv.Client(), "sync-request", req)
	publishRaw(t, srv.Client(), "put", evilPut)
	publishRaw(t, wrap("evil", other), "sync-request", map[string]any{"f": "evil", "id": "req-2", "dg": map[string]any{"n": 0, "h": 0}})
	publishRaw(t, wrap("evil", other), "put", evilPut)
	select {
	case <-forged:
		t.Fatal("a node answered a forged sync request with its catalog")
	case <-time.After(1500 * time.Millisecond):
	}
	for _, n := range []*node{a, b} {
		if _, ok := n.Get("evil.key"); ok {
			t.Fatalf("%s merged a forged put", n.id)
		}
	}
	// The control: the same request signed with the cluster's key.
	publishRaw(t, wrap("c", ring), "sync-request", map[string]any{"f": "c", "id": "req-3", "dg": map[string]any{"n": 0, "h": 0}})
	select {
	case <-control:
	case <-time.After(5 * time.Second):
		t.Fatal("no answer to a signed sync request: the check above proves nothing")
	}
}

// slowRetain holds the first Retain of key until release is closed.
type slowRetain struct {
	*mem.Broker
	key     string
	once    sync.Once
	held    chan struct{} // closed when that Retain waits
	release chan struct{}
}

func (s *slowRetain) Retain(ctx context.Context, log, key string, value []byte) error {
	if key == s.key {
		s.once.Do(func() {
			close(s.held)
			<-s.release
		})
	}
	return s.Broker.Retain(ctx, log, key, value)
}

// Two nodes write one key at nearly the same time and the losing write's
// Retain reaches the broker last: the winner's writer retains its entry
// again, so a whole-cluster restart with empty data dirs gets the winner,
// not the value every live node had already replaced.
func TestConcurrentWriteRetainedLastDoesNotWin(t *testing.T) {
	srv := mem.NewServer()
	log := cluster + "-catalog-settings"
	slow := &slowRetain{Broker: srv.Client(), key: "k", held: make(chan struct{}), release: make(chan struct{})}
	a := start(t, srv.Client(), "a", nil)
	b := start(t, slow, "b", nil)
	done := make(chan catalog.Entry)
	go func() { done <- put(t, b, "k", "old") }()
	<-slow.held
	time.Sleep(5 * time.Millisecond) // a's clock passes b's
	won := put(t, a, "k", "new")
	close(slow.release)
	lost := <-done
	if !lost.Rev.Less(won.Rev) {
		t.Fatalf("b's write %s should lose to a's %s", lost.Rev, won.Rev)
	}
	waitFor(t, "both nodes to hold a's value", 5*time.Second, func() bool { return hasValue(a, "k", "new") && hasValue(b, "k", "new") })
	raw := srv.Client()
	waitFor(t, "the broker to hold a's value again", 5*time.Second, func() bool {
		m, _ := raw.Retained(context.Background(), log)
		return strings.Contains(string(m["k"]), won.Rev.Node) && strings.Contains(string(m["k"]), fmt.Sprint(won.Rev.Clock))
	})
	if got := metricValue(a.reg, "clusterbus_catalog_retained_again_total", "catalog", "settings"); got != 1 {
		t.Errorf("a retained again %v times, want 1", got)
	}
	_ = a.Stop(context.Background())
	_ = b.Stop(context.Background())
	c := start(t, srv.Client(), "c", func(cfg *catalog.Config) { cfg.DigestInterval = time.Hour })
	if !hasValue(c, "k", "new") {
		t.Fatalf("a new node after every node stopped holds %s", dump(c))
	}
}

// heldForget holds the first Forget until release is closed.
type heldForget struct {
	*mem.Broker
	once    sync.Once
	held    chan struct{}
	release chan struct{}
}

func (h *heldForget) Forget(ctx context.Context, log, key string) error {
	h.once.Do(func() {
		close(h.held)
		<-h.release
	})
	return h.Broker.Forget(ctx, log, key)
}

// The start-up repair retains an entry from the data dir only while it is
// still the node's entry for its key: a node that writes the key before
// the repair gets to it keeps its newer write in the broker, instead of
// the repair retaining the older one over it (which a whole-cluster
// restart with empty data dirs would then read back).
func TestRepairSkipsAnEntryWrittenAgainSinceStart(t *testing.T) {
	dir := t.TempDir()
	a := start(t, struct{ adapters.Broker }{mem.New()}, "a", func(cfg *catalog.Config) { cfg.Dir = dir })
	put(t, a, "k", "old") // only in the data dir
	_ = a.Stop(context.Background())

	srv := mem.NewServer()
	t.Cleanup(srv.Close)
	log := cluster + "-catalog-settings"
	raw := srv.Client()
	if err := raw.Retain(context.Background(), log, "junk", []byte("not json")); err != nil {
		t.Fatal(err) // gives the repair a Forget to wait in
	}
	held := &heldForget{Broker: srv.Client(), held: make(chan struct{}), release: make(chan struct{})}
	a2 := start(t, held, "a", func(cfg *catalog.Config) { cfg.Dir = dir; cfg.DigestInterval = time.Hour })
	<-held.held // the repair has its list (k: old) and waits
	newer := put(t, a2, "k", "new")
	close(held.release)
	waitFor(t, "the junk forgotten (the repair ran)", 5*time.Second, func() bool {
		m, _ := raw.Retained(context.Background(), log)
		return m["junk"] == nil
	})
	_ = a2.Stop(context.Background()) // waits for the repair's goroutine
	m, _ := raw.Retained(context.Background(), log)
	if !strings.Contains(string(m["k"]), fmt.Sprint(newer.Rev.Clock)) {
		t.Fatalf("the broker holds %s for k, want the newer write %s", m["k"], newer.Rev)
	}
	// Skipped, not retained and then put right again: the older entry never
	// reached the broker after the newer one.
	if got := metricValue(a2.reg, "clusterbus_catalog_retained_again_total", "catalog", "settings"); got != 0 {
		t.Errorf("a retained again %v times, want 0: the repair retained the older entry over the newer one", got)
	}
}
