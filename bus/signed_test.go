package bus

import (
	"context"
	"math"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/signed"
)

const (
	testKey    = "test-cluster-key-0123456789"
	foreignKey = "foreign-cluster-key-0123456789"
)

func ring(t testing.TB, key string) *signed.KeyRing {
	r, err := signed.NewKeyRing([]byte(key))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// signedCluster wraps every node's broker with adapters/signed under key,
// the node ID as the sender (as clusterbus node does), on the cluster's
// fake clock. It returns the signed brokers by node ID (the latest).
func signedCluster(c *fakeCluster, key string) map[string]*signed.Broker {
	out := map[string]*signed.Broker{}
	c.decorate = func(id string, b adapters.Broker) adapters.Broker {
		sb, err := signed.Wrap(b, signed.Config{Cluster: c.cfg.Cluster, Sender: id, Keys: ring(c.t, key),
			MaxAge: 10 * testFT, Clock: c.clock})
		if err != nil {
			c.t.Fatal(err)
		}
		out[id] = sb
		return sb
	}
	return out
}

// attack is one hostile or buggy message, sent by a broker client.
type attack struct {
	name string
	send func(ctx context.Context) error
}

// TestSignedClusterIgnoresForgedMessages: every message in the Goal of
// issue 10 that latched a signed cluster in panic, made up members, wrapped
// the term or cleared caches, sent by a client of the broker, now changes
// nothing: the nodes keep serving with the same lead and term.
func TestSignedClusterIgnoresForgedMessages(t *testing.T) {
	cfg := testConfig("signed")
	c := newFakeCluster(t, cfg)
	brokers := signedCluster(c, testKey)
	a, b, x := c.add("a"), c.add("b"), c.add("x")
	c.until(testFT+5*testHB, "a leads, signed", func() bool { return c.agreeOn("a") })
	_, term := a.IsLead()
	ctx := context.Background()
	var cleared atomic.Int64
	for _, n := range []*fakeNode{a, b, x} {
		n.OnInvalidate("users", func([]string) { cleared.Add(1) })
	}
	raw := c.srv.Client()
	t.Cleanup(func() { raw.Close() })
	foreign, err := signed.Wrap(c.srv.Client(), signed.Config{Cluster: cfg.Cluster, Sender: "a", Keys: ring(t, foreignKey), Clock: c.clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { foreign.Close() })

	// Capture a genuine signed heartbeat of b, to replay it.
	capSub, _ := raw.Subscribe(ctx, a.Topic())
	var captured adapters.Message
	for captured.Body == nil {
		c.step()
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		m, err := capSub.Receive(rctx)
		cancel()
		if err == nil && m.ID == "" && strings.Contains(string(m.Body), `"id":"b"`) {
			captured = m
		}
	}
	_ = capSub.Close()
	if err := a.b.DeclareQueue(ctx, a.dutyQueueConfig()); err != nil {
		t.Fatal(err)
	}

	hb := func(id, inc string, term uint64) adapters.Message {
		m, _ := encode(kindHeartbeat, cfg.Cluster, id, heartbeat{ID: id, Inc: inc, Seq: 1 << 40, State: StateActive,
			Start: c.clock.Now().Add(-time.Hour).UnixNano(), Term: term, LeadTerm: term, Sent: c.clock.Now().UnixNano()})
		return m
	}
	inv, _ := encode(kindInvalidate, cfg.Cluster, "b", invalidation{ID: "b", Inc: "evil", CSeq: 99, Region: "users"})
	duty, _ := encode("duty", cfg.Cluster, "a", dutyItem{Name: "d", Slot: 1, Term: math.MaxUint64})
	attacks := []attack{
		{"unsigned heartbeat with a's ID (duplicate-ID panic before)", func(ctx context.Context) error {
			return raw.Publish(ctx, a.Topic(), hb("a", "evil-inc", 1))
		}},
		{"unsigned heartbeat of an older, made-up lead with term 2^64-1", func(ctx context.Context) error {
			return raw.Publish(ctx, a.Topic(), hb("evil", "evil-inc", math.MaxUint64))
		}},
		{"heartbeat signed with another key", func(ctx context.Context) error {
			return foreign.Publish(ctx, a.Topic(), hb("a", "evil-inc2", math.MaxUint64))
		}},
		{"unsigned cache-clear naming b", func(ctx context.Context) error { return raw.Publish(ctx, a.Topic(), inv) }},
		{"cache-clear signed with another key", func(ctx context.Context) error { return foreign.Publish(ctx, a.Topic(), inv) }},
		{"replayed signed heartbeat of b", func(ctx context.Context) error { return raw.Publish(ctx, a.Topic(), captured) }},
		{"oversized unsigned message", func(ctx context.Context) error {
			return raw.Publish(ctx, a.Topic(), adapters.Message{Body: make([]byte, raw.Capabilities().MaxMessageSize-100)})
		}},
		{"garbage signed-looking body", func(ctx context.Context) error {
			return raw.Publish(ctx, a.Topic(), adapters.Message{Body: []byte("CBS1 not really")})
		}},
		{"unsigned duty item", func(ctx context.Context) error { return raw.Enqueue(ctx, a.dutyQueueName(), duty) }},
		{"duty item signed with another key", func(ctx context.Context) error { return foreign.Enqueue(ctx, a.dutyQueueName(), duty) }},
	}
	for _, at := range attacks {
		if err := at.send(ctx); err != nil {
			t.Fatalf("%s: %v", at.name, err)
		}
		c.step()
	}
	// A node started without the key joins the same topic.
	nokey, err := New(c.srv.Client(), func() Config { k := cfg; k.NodeID = "nokey"; return k }(), WithClock(c.clock), WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := nokey.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nokey.halt)
	c.run(testFT + 3*testHB)
	// The stale replay: the captured heartbeat, long after.
	c.run(10 * testFT)
	if err := raw.Publish(ctx, a.Topic(), captured); err != nil {
		t.Fatal(err)
	}
	c.run(2 * testHB)

	for _, n := range []*fakeNode{a, b, x} {
		st := n.Status()
		if st.State != StateActive || !n.Serving() || st.Lead != "a" || st.Term != term {
			t.Errorf("%s after the attacks: state %s serving %v lead %q term %d (want active, serving, a, %d)",
				n.ID(), st.State, n.Serving(), st.Lead, st.Term, term)
		}
		if len(st.Members) != 3 {
			t.Errorf("%s sees %d members, want 3: %+v", n.ID(), len(st.Members), st.Members)
		}
	}
	if _, tm := a.IsLead(); tm != term {
		t.Errorf("term %d, want %d", tm, term)
	}
	if n := cleared.Load(); n != 0 {
		t.Errorf("forged cache-clears cleared %d regions", n)
	}
	// A duty consumer (as the lead runs it) never sees the forged items:
	// they become dead letters, marked unauthenticated.
	con, err := brokers["a"].Consume(ctx, a.dutyQueueName(), adapters.ConsumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	if d, err := con.Receive(rctx); err == nil {
		t.Errorf("a forged duty item reached the consumer: %q", d.Message().Body)
	}
	cancel()
	_ = con.Close()
	dl, err := raw.Consume(ctx, a.dutyQueueName(), adapters.ConsumeOptions{DeadLetters: true})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		d, err := dl.Receive(rctx)
		cancel()
		if err != nil {
			t.Fatalf("forged duty item not dead-lettered: %v", err)
		}
		if r := d.Message().Headers[adapters.HeaderDeadLetterReason]; !strings.HasPrefix(r, "unauthenticated") {
			t.Errorf("dead-letter reason %q", r)
		}
	}
	t.Logf("after the attacks: %s", c.describe())
}

// TestSignedRestartIgnoresPreviousRunReplay: a captured heartbeat of a
// node's previous run, replayed at it after its restart, does not put it in
// cluster panic.
func TestSignedRestartIgnoresPreviousRunReplay(t *testing.T) {
	cfg := testConfig("signed-restart")
	c := newFakeCluster(t, cfg)
	signedCluster(c, testKey)
	c.add("a")
	c.add("x")
	c.until(testFT+5*testHB, "a leads", func() bool { return c.agreeOn("a") })
	ctx := context.Background()
	raw := c.srv.Client()
	t.Cleanup(func() { raw.Close() })
	sub, _ := raw.Subscribe(ctx, c.nodes["x"].Topic())
	var prev adapters.Message
	for prev.Body == nil {
		c.step()
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		m, err := sub.Receive(rctx)
		cancel()
		if err == nil && strings.Contains(string(m.Body), `"id":"x"`) {
			prev = m
		}
	}
	c.crash("x")
	time.Sleep(2 * time.Millisecond) // a later incarnation (wall clock)
	delete(c.nodes, "x")
	x2 := c.add("x")
	c.until(testFT+5*testHB, "x serves again", x2.Serving)
	for range 3 {
		if err := raw.Publish(ctx, x2.Topic(), prev); err != nil {
			t.Fatal(err)
		}
		c.step()
	}
	if st := x2.Status(); st.State == StatePanic || !x2.Serving() {
		t.Fatalf("x after a replay of its previous run: %s", c.describe())
	}
}

// startSignedNATSNode is startNATSNode with the broker wrapped by
// adapters/signed (the node ID as the sender, freshness maxAge).
func startSignedNATSNode(t *testing.T, url, cluster, id, key string, maxAge time.Duration) *natsNode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, err := openNATS(ctx, url)
	if err != nil {
		t.Fatalf("nats open: %v", err)
	}
	sb, err := signed.Wrap(raw, signed.Config{Cluster: cluster, Sender: id, Keys: ring(t, key), MaxAge: maxAge})
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(cluster)
	cfg.NodeID = id
	cfg.FailureTimeout = 400 * time.Millisecond
	n, err := New(sb, cfg, WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	nn := &natsNode{Node: n, b: sb}
	t.Cleanup(func() { nn.halt(); nn.b.Close() })
	return nn
}

// TestNATSSignedClusterIgnoresForgedMessages is the forged-message test on
// an embedded NATS server, real clock, with a plain NATS client as the
// attacker: the three nodes keep serving with the same lead and term.
func TestNATSSignedClusterIgnoresForgedMessages(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an embedded NATS server; skipped with -short")
	}
	url := startNATS(t)
	const cluster = "nats-signed"
	const maxAge = 2 * time.Second
	a := startSignedNATSNode(t, url, cluster, "a", testKey, maxAge)
	time.Sleep(20 * time.Millisecond)
	b := startSignedNATSNode(t, url, cluster, "b", testKey, maxAge)
	time.Sleep(20 * time.Millisecond)
	x := startSignedNATSNode(t, url, cluster, "x", testKey, maxAge)
	all := []*natsNode{a, b, x}
	waitFor(t, 10*time.Second, "all agree on a", func() bool { return agree(all, "a") })
	_, term := a.IsLead()
	ctx := context.Background()
	raw, err := openNATS(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	foreignRaw, _ := openNATS(ctx, url)
	foreign, err := signed.Wrap(foreignRaw, signed.Config{Cluster: cluster, Sender: "a", Keys: ring(t, foreignKey)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { foreign.Close() })
	var cleared atomic.Int64
	for _, n := range all {
		n.OnInvalidate("users", func([]string) { cleared.Add(1) })
	}
	capSub, err := raw.Subscribe(ctx, a.Topic())
	if err != nil {
		t.Fatal(err)
	}
	var captured adapters.Message
	for captured.Body == nil {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		m, err := capSub.Receive(rctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(m.Body), `"id":"b"`) {
			captured = m
		}
	}
	_ = capSub.Close()
	if err := a.b.DeclareQueue(ctx, a.dutyQueueConfig()); err != nil {
		t.Fatal(err)
	}
	hb := func(id string, term uint64) adapters.Message {
		m, _ := encode(kindHeartbeat, cluster, id, heartbeat{ID: id, Inc: "evil", Seq: 1 << 40, State: StateActive,
			Start: time.Now().Add(-time.Hour).UnixNano(), Term: term, LeadTerm: term, Sent: time.Now().UnixNano()})
		return m
	}
	inv, _ := encode(kindInvalidate, cluster, "b", invalidation{ID: "b", Inc: "evil", CSeq: 99, Region: "users"})
	duty, _ := encode("duty", cluster, "a", dutyItem{Name: "d", Slot: 1, Term: math.MaxUint64})
	attacks := []attack{
		{"unsigned heartbeat with a's ID", func(ctx context.Context) error { return raw.Publish(ctx, a.Topic(), hb("a", 1)) }},
		{"unsigned heartbeat, term 2^64-1", func(ctx context.Context) error {
			return raw.Publish(ctx, a.Topic(), hb("evil", math.MaxUint64))
		}},
		{"heartbeat signed with another key", func(ctx context.Context) error {
			return foreign.Publish(ctx, a.Topic(), hb("a", math.MaxUint64))
		}},
		{"unsigned cache-clear", func(ctx context.Context) error { return raw.Publish(ctx, a.Topic(), inv) }},
		{"replayed heartbeat of b", func(ctx context.Context) error { return raw.Publish(ctx, a.Topic(), captured) }},
		{"oversized unsigned message", func(ctx context.Context) error {
			return raw.Publish(ctx, a.Topic(), adapters.Message{Body: make([]byte, raw.Capabilities().MaxMessageSize-1024)})
		}},
		{"unsigned duty item", func(ctx context.Context) error { return raw.Enqueue(ctx, a.dutyQueueName(), duty) }},
		{"duty item signed with another key", func(ctx context.Context) error { return foreign.Enqueue(ctx, a.dutyQueueName(), duty) }},
	}
	for _, at := range attacks {
		if err := at.send(ctx); err != nil {
			t.Fatalf("%s: %v", at.name, err)
		}
	}
	time.Sleep(maxAge + 500*time.Millisecond)
	if err := raw.Publish(ctx, a.Topic(), captured); err != nil { // now stale
		t.Fatal(err)
	}
	// Watch for three failure timeouts: nothing changes.
	end := time.Now().Add(3 * 400 * time.Millisecond)
	for time.Now().Before(end) {
		for _, n := range all {
			st := n.Status()
			if st.State != StateActive || !n.Serving() || st.Lead != "a" || st.Term != term || len(st.Members) != 3 {
				t.Fatalf("%s after the attacks: state %s serving %v lead %q term %d members %d (want active, a, %d, 3)",
					n.ID(), st.State, n.Serving(), st.Lead, st.Term, len(st.Members), term)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := cleared.Load(); n != 0 {
		t.Errorf("forged cache-clears cleared %d regions", n)
	}
	sa := a.b.(*signed.Broker).Stats()
	for _, r := range []string{signed.ReasonUnsigned, signed.ReasonForged, signed.ReasonReplay, signed.ReasonStale} {
		if sa.ByReason[r] == 0 {
			t.Errorf("a counted no %s rejection: %+v", r, sa.ByReason)
		}
	}
}
