package bus

import (
	"context"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// leaders lists the running nodes that hold the lead and serve.
func (c *fakeCluster) leaders() []string {
	var out []string
	for _, n := range c.running() {
		if l, _ := n.IsLead(); l && n.Serving() {
			out = append(out, n.ID())
		}
	}
	return out
}

// TestFencedMinorityStaysFencedThenRejoinsWhenDowned: a side that may not
// serve never un-fences by a timeout (ForgetAfter) alone; the serving side
// downs it after ForgetAfter; when the partition heals, the downed node
// learns it was downed and rejoins as a new, younger incarnation, so the
// lead stays where it is.
func TestFencedMinorityStaysFencedThenRejoinsWhenDowned(t *testing.T) {
	cfg := testConfig("downing")
	cfg.ForgetAfter = 4 * testFT
	c := newFakeCluster(t, cfg)
	a := c.add("a")
	c.step()
	b := c.add("b")
	c.step()
	c.add("c")
	c.until(testFT+3*testHB, "all agree on a", func() bool { return c.agreeOn("a") })
	startA := a.Status().Members[0].StartedAt

	c.srv.Partition(a.b)
	c.until(testFT+4*testHB, "b leads the majority", func() bool { l, _ := b.IsLead(); return l })
	for i := time.Duration(0); i < 3*cfg.ForgetAfter; i += testHB {
		c.step()
		if a.Serving() {
			t.Fatalf("the cut-off minority a serves again %s into the cut: %s", i, c.describe())
		}
		if ls := c.leaders(); len(ls) != 1 || ls[0] != "b" {
			t.Fatalf("leads during the cut: %v", ls)
		}
	}
	for _, m := range b.Status().Members {
		if m.ID == "a" {
			t.Fatalf("b still lists a after forget-after: %+v", m)
		}
	}

	c.srv.Heal()
	c.until(2*testFT+6*testHB, "a rejoins and serves; b keeps the lead", func() bool {
		ls := c.leaders()
		if len(ls) > 1 || (len(ls) == 1 && ls[0] != "b") {
			t.Fatalf("leads after the heal: %v; %s", ls, c.describe())
		}
		return a.Serving() && c.agreeOn("b")
	})
	st := a.Status()
	for _, m := range st.Members {
		if m.Local && !m.StartedAt.After(startA) {
			t.Fatalf("a rejoined with its old start time %s (was %s)", m.StartedAt, startA)
		}
	}
}

// TestCrashLoopingStartersDoNotFence: nodes that die while starting (a crash
// loop with a new ID each time) never count toward the majority, so a
// healthy two-node cluster keeps serving and keeps its lead.
func TestCrashLoopingStartersDoNotFence(t *testing.T) {
	c := newFakeCluster(t, testConfig("crashloop"))
	a := c.add("a")
	c.step()
	b := c.add("b")
	c.until(testFT+3*testHB, "a and b agree on a", func() bool { return c.agreeOn("a") })
	for _, id := range []string{"x1", "x2", "x3"} {
		c.add(id)
		c.step()
		c.step()
		c.crash(id)
	}
	for i := time.Duration(0); i < c.cfg.forgetAfter()/2; i += testHB {
		c.step()
		if !a.Serving() || !b.Serving() || a.Lead() != "a" {
			t.Fatalf("crash-looping starters fenced the cluster: %s", c.describe())
		}
	}
}

// TestOutageLeadStaysOldest: a broker outage under three nodes. At its
// start no node takes a new term (losing its own link is decided before
// expiring the others); after it the younger nodes, back first, wait one
// failure timeout for the oldest, which leads again; no younger node leads
// in between.
func TestOutageLeadStaysOldest(t *testing.T) {
	c := newFakeCluster(t, testConfig("outage"))
	a := c.add("a")
	c.step()
	b := c.add("b")
	c.step()
	cn := c.add("c")
	c.until(testFT+3*testHB, "all agree on a", func() bool { return c.agreeOn("a") })
	_, term := a.IsLead()

	check := func(when string) {
		t.Helper()
		for _, n := range []*fakeNode{b, cn} {
			if l, tm := n.IsLead(); l {
				t.Fatalf("%s: younger node %s leads (term %d): %s", when, n.ID(), tm, c.describe())
			}
		}
	}
	for _, n := range []*fakeNode{a, b, cn} {
		n.b.Disconnect()
	}
	for i := time.Duration(0); i < 3*testFT; i += testHB {
		c.step()
		check("during the outage")
	}
	if a.Serving() || b.Serving() || cn.Serving() {
		t.Fatalf("nodes serve without a broker: %s", c.describe())
	}
	// The younger ones come back first.
	b.b.Reconnect()
	cn.b.Reconnect()
	for i := time.Duration(0); i < testFT/2; i += testHB {
		c.step()
		check("before the oldest is back")
	}
	a.b.Reconnect()
	c.until(testFT+4*testHB, "a leads again", func() bool {
		check("recovery")
		return c.agreeOn("a")
	})
	if _, t2 := a.IsLead(); t2 != term+1 {
		t.Errorf("term after the outage %d, before %d: want exactly one new term", t2, term)
	}
}

// publishRaw publishes a hand-made coordination message on the cluster
// topic from a client of its own.
func publishRaw(t *testing.T, c *fakeCluster, kind, from string, hb heartbeat) {
	t.Helper()
	cl := c.srv.Client()
	defer cl.Close()
	msg, err := encode(kind, c.cfg.Cluster, from, hb)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Publish(context.Background(), "clusterbus-"+c.cfg.Cluster, msg); err != nil {
		t.Fatal(err)
	}
}

// TestHostileHeartbeatsChangeNothing: a term of 2^64-1 cannot wrap the
// fencing token, malformed heartbeats add no member, a single heartbeat of
// an unknown older node does not make it the lead, and a replay of a node
// that left does not bring it back.
func TestHostileHeartbeatsChangeNothing(t *testing.T) {
	c := newFakeCluster(t, testConfig("hostile"))
	a := c.add("a")
	c.step()
	b := c.add("b")
	c.until(testFT+3*testHB, "a and b agree on a", func() bool { return c.agreeOn("a") })
	now := c.clock.Now().UnixNano()
	for _, hb := range []heartbeat{
		{ID: "evil", Inc: "e1", Start: 1, Seq: 1, State: StateActive, Term: math.MaxUint64, LeadTerm: math.MaxUint64, Sent: now},
		{ID: "evil", Inc: "e2", Start: 1, Seq: 1, State: "bogus", Sent: now},
		{ID: "evil", Inc: "e3", Start: 1, Seq: 0, State: StateActive, Sent: now},
		{ID: "evil", Inc: "", Start: 1, Seq: 1, State: StateActive, Sent: now},
		{ID: "evil", Inc: "e4", Start: -5, Seq: 1, State: StateActive, Sent: now},
	} {
		publishRaw(t, c, kindHeartbeat, "evil", hb)
	}
	// One well-formed heartbeat of an older node: not enough to lead.
	publishRaw(t, c, kindHeartbeat, "old", heartbeat{ID: "old", Inc: "o1", Start: 1, Seq: 1, State: StateActive, Term: 3, Sent: now})
	for range 3 {
		c.step()
		for _, n := range []*fakeNode{a, b} {
			st := n.Status()
			if st.Term > 1000 {
				t.Fatalf("%s: term %d after a hostile heartbeat", n.ID(), st.Term)
			}
			for _, m := range st.Members {
				if m.ID == "evil" {
					t.Fatalf("%s lists a malformed member: %+v", n.ID(), m)
				}
			}
			if n.Lead() != "a" || !n.Serving() {
				t.Fatalf("%s: lead %q serving %v after one heartbeat of an older node", n.ID(), n.Lead(), n.Serving())
			}
		}
	}

	// a leaves; a replay of its heartbeat does not bring it back.
	aHB := func() heartbeat {
		a.mu.Lock()
		defer a.mu.Unlock()
		hb := a.selfHeartbeatLocked()
		hb.Seq += 100
		hb.State = StateActive
		return hb
	}()
	if err := a.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.until(2*testHB, "b leads", func() bool { l, _ := b.IsLead(); return l })
	for i := range 3 {
		hb := aHB
		hb.Seq += uint64(i)
		publishRaw(t, c, kindHeartbeat, "a", hb)
		c.step()
		if b.Lead() != "b" {
			t.Fatalf("a replayed heartbeat of the departed a moved the lead to %q", b.Lead())
		}
	}
}

// TestManualDown: an operator downs unreachable members by hand so that
// the survivors serve again without waiting for a restart; a live member
// cannot be downed.
func TestManualDown(t *testing.T) {
	c := newFakeCluster(t, testConfig("manual-down"))
	a := c.add("a")
	c.step()
	c.add("b")
	c.step()
	c.add("c")
	c.until(testFT+3*testHB, "all agree on a", func() bool { return c.agreeOn("a") })
	if err := a.Down("b"); !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Fatalf("Down of a live member: %v, want ErrInvalidArgument", err)
	}
	if err := a.Down("nobody"); !errors.Is(err, adapters.ErrNotFound) {
		t.Fatalf("Down of an unknown member: %v, want ErrNotFound", err)
	}
	c.crash("b")
	c.crash("c")
	c.until(testFT+3*testHB, "a alone is fenced", func() bool { return !a.Serving() })
	c.run(3 * testFT)
	if a.Serving() {
		t.Fatalf("a serves alone before any down: %s", c.describe())
	}
	for _, id := range []string{"b", "c"} {
		if err := a.Down(id); err != nil {
			t.Fatalf("Down(%s): %v", id, err)
		}
	}
	c.until(2*testHB, "a serves after downing b and c", func() bool { return a.Serving() && a.Lead() == "a" })
}

// TestDegradeOnBrokerLoss: under OnBrokerLoss "degrade" a node that loses
// its broker keeps health 200 with a "degraded" reason, holds no lead,
// takes no work (Serving false), misses on every Cache read and refuses
// submissions (Admit); with its link back it serves and leads again, its
// caches cleared. Under the default it fences (503).
func TestDegradeOnBrokerLoss(t *testing.T) {
	cfg := testConfig("degrade")
	cfg.OnBrokerLoss = DegradeOnBrokerLoss
	c := newFakeCluster(t, cfg)
	a := c.add("a")
	c.until(testFT+3*testHB, "a leads", func() bool { l, _ := a.IsLead(); return l })
	cache := NewCache[string](a.Node, "users")
	if _, err := cache.Load("u1", func() (string, error) { return "v1", nil }); err != nil {
		t.Fatal(err)
	}
	if _, ok := cache.Get("u1"); !ok {
		t.Fatal("cache miss while connected")
	}
	a.b.Disconnect()
	c.until(testFT+3*testHB, "a degrades", func() bool { return a.Degraded() })
	if ok, reason := a.Healthy(); !ok || !strings.HasPrefix(reason, "degraded: ") {
		t.Fatalf("Healthy while degraded = %v %q, want 200 with a degraded reason", ok, reason)
	}
	if l, _ := a.IsLead(); l || a.Serving() {
		t.Fatalf("degraded node: lead %v serving %v, want neither", l, a.Serving())
	}
	if _, ok := cache.Get("u1"); ok {
		t.Fatal("a cache read hit while degraded")
	}
	loads := 0
	for range 2 {
		v, err := cache.Load("u2", func() (string, error) { loads++; return "v2", nil })
		if err != nil || v != "v2" {
			t.Fatalf("Load while degraded = %q, %v", v, err)
		}
	}
	if loads != 2 {
		t.Fatalf("Load while degraded called load %d times, want every time (2)", loads)
	}
	if err := a.Admit(); !errors.Is(err, adapters.ErrUnavailable) {
		t.Fatalf("Admit while degraded = %v, want ErrUnavailable", err)
	}
	a.b.Reconnect()
	c.until(testFT+3*testHB, "a serves and leads again", func() bool { l, _ := a.IsLead(); return l && a.Serving() })
	if _, ok := cache.Get("u1"); ok {
		t.Fatal("a value cached before the outage survived it")
	}
	if err := a.Admit(); err != nil {
		t.Fatalf("Admit after recovery: %v", err)
	}
}

// TestHTTPDownEndpoint: POST /api/cluster/down answers 404 for an unknown
// member, 409 for a live one, 204 for an unreachable one, which is then
// gone from /api/cluster.
func TestHTTPDownEndpoint(t *testing.T) {
	c := newFakeCluster(t, testConfig("http-down"))
	a := c.add("a")
	c.step()
	c.add("b")
	c.until(testFT+3*testHB, "a and b agree on a", func() bool { return c.agreeOn("a") })
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	post := func(node string) int {
		resp, err := http.Post(srv.URL+"/api/cluster/down", "application/json", strings.NewReader(`{"node":"`+node+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post("nobody"); code != http.StatusNotFound {
		t.Fatalf("down of an unknown member: %d, want 404", code)
	}
	if code := post("b"); code != http.StatusConflict {
		t.Fatalf("down of a live member: %d, want 409", code)
	}
	c.crash("b")
	c.until(testFT+3*testHB, "b unreachable", func() bool {
		for _, m := range a.Status().Members {
			if m.ID == "b" {
				return !m.Live
			}
		}
		return false
	})
	if code := post("b"); code != http.StatusNoContent {
		t.Fatalf("down of an unreachable member: %d, want 204", code)
	}
	for _, m := range a.Status().Members {
		if m.ID == "b" {
			t.Fatalf("b still listed after the down: %+v", m)
		}
	}
}

// TestProbeFailureIsNotConnected: a node whose probe (a queue round trip)
// fails twice in a row counts itself not connected, though its heartbeats
// still echo: it fences and drops the lead; a passing probe brings it
// back.
func TestProbeFailureIsNotConnected(t *testing.T) {
	c := newFakeCluster(t, testConfig("probe"))
	a := c.add("a")
	var fail atomic.Bool
	a.SetProbe(func(context.Context) error {
		if fail.Load() {
			return errors.New("queue unavailable")
		}
		return nil
	})
	c.until(testFT+3*testHB, "a leads", func() bool { l, _ := a.IsLead(); return l && a.Serving() })
	fail.Store(true)
	c.until(4*testFT, "a fences on failed probes", func() bool { return !a.Serving() })
	if _, reason := a.Healthy(); !strings.Contains(reason, "cannot do what this node serves: queue unavailable") {
		t.Fatalf("reason %q", reason)
	}
	if l, _ := a.IsLead(); l {
		t.Fatal("a leads with a failing probe")
	}
	fail.Store(false)
	c.until(4*testFT, "a serves again", func() bool { l, _ := a.IsLead(); return l && a.Serving() })
}

// TestProbeFailingEverywhereKeepsServing: when the probe fails on every
// member (the broker's queues are out for the whole cluster, as during a
// JetStream re-election after a partition heals), the nodes stay in
// service with an alert instead of all fencing; once one member's probe
// passes again, a member whose probe still fails fences.
func TestProbeFailingEverywhereKeepsServing(t *testing.T) {
	c := newFakeCluster(t, testConfig("probe-all"))
	var failA, failB atomic.Bool
	probe := func(fail *atomic.Bool) func(context.Context) error {
		return func(context.Context) error {
			if fail.Load() {
				return errors.New("queue unavailable")
			}
			return nil
		}
	}
	a := c.add("a")
	a.SetProbe(probe(&failA))
	b := c.add("b")
	b.SetProbe(probe(&failB))
	c.until(testFT+3*testHB, "a leads, b serves", func() bool { l, _ := a.IsLead(); return l && a.Serving() && b.Serving() })
	failA.Store(true)
	failB.Store(true)
	c.until(4*testFT, "both see the outage", func() bool { return len(a.Alerts()) > 0 && len(b.Alerts()) > 0 })
	deadline := time.Now().Add(2 * testFT)
	for time.Now().Before(deadline) {
		if l, _ := a.IsLead(); !l || !a.Serving() || !b.Serving() {
			t.Fatalf("a cluster-wide probe failure took a node out: a lead=%v serving=%v, b serving=%v (%s)", l, a.Serving(), b.Serving(), a.Status().Reason)
		}
		time.Sleep(testHB / 4)
	}
	if !strings.Contains(strings.Join(a.Alerts(), "\n"), "queue unavailable") {
		t.Fatalf("alerts %q do not name the probe error", a.Alerts())
	}
	failB.Store(false)
	c.until(4*testFT, "a fences once b's probe passes", func() bool { return !a.Serving() && b.Serving() })
	if _, reason := a.Healthy(); !strings.Contains(reason, "cannot do what this node serves") {
		t.Fatalf("reason %q", reason)
	}
	failA.Store(false)
	c.until(4*testFT, "a serves and leads again", func() bool { l, _ := a.IsLead(); return l && a.Serving() })
}
