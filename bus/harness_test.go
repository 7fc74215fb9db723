package bus

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
)

// Test timing on the fake clock: heartbeat 100ms, failure timeout 350ms.
const (
	testHB = 100 * time.Millisecond
	testFT = 350 * time.Millisecond
)

func testConfig(cluster string) Config {
	c := DefaultConfig()
	c.Cluster = cluster
	c.HeartbeatInterval = testHB
	c.FailureTimeout = testFT
	c.ClockSkewThreshold = time.Second
	c.Host, c.IP = "testhost", "127.0.0.1"
	return c
}

// tlog sends slog lines to t.Log until the test ends.
type tlog struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *tlog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Helper()
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	w := &tlog{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// fakeCluster is a set of nodes on one mem server driven by one fake clock.
type fakeCluster struct {
	t     *testing.T
	srv   *mem.Server
	clock *clockwork.FakeClock
	cfg   Config
	nodes map[string]*fakeNode
	// wrap, if set, wraps each node's mem client (to hide capabilities).
	wrap func(*mem.Broker) adapters.Broker
	// decorate, if set, wraps each node's broker last, knowing the node
	// ID (adapters/signed in signed_test.go).
	decorate func(id string, b adapters.Broker) adapters.Broker
}

// noDedupe hides the mem broker's dedupe, so scheduled duties run in
// heartbeat mode.
type noDedupe struct{ *mem.Broker }

func (b noDedupe) Capabilities() adapters.Capabilities {
	c := b.Broker.Capabilities()
	c.Dedupe = adapters.Unsupported
	return c
}

type fakeNode struct {
	*Node
	b       *mem.Broker
	crashed bool
}

// skewedClock is a clock whose Now is off by a fixed amount.
type skewedClock struct {
	clockwork.Clock
	off time.Duration
}

func (c skewedClock) Now() time.Time { return c.Clock.Now().Add(c.off) }
func (c skewedClock) Until(t time.Time) time.Duration {
	return t.Sub(c.Now())
}
func (c skewedClock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }

func newFakeCluster(t *testing.T, cfg Config) *fakeCluster {
	fc := clockwork.NewFakeClockAt(time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC))
	c := &fakeCluster{t: t, srv: mem.NewServer(mem.WithClock(fc)), clock: fc, cfg: cfg, nodes: map[string]*fakeNode{}}
	t.Cleanup(func() {
		for _, n := range c.nodes {
			if !n.crashed {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				n.halt()
				cancel()
				_ = ctx
			}
			_ = n.b.Close()
		}
	})
	return c
}

// add starts a node with id (optionally with a clock offset and a config
// tweak).
func (c *fakeCluster) add(id string, tweak ...func(*Config, *[]Option)) *fakeNode {
	c.t.Helper()
	cfg := c.cfg
	cfg.NodeID = id
	opts := []Option{WithClock(c.clock), WithLogger(testLogger(c.t))}
	for _, f := range tweak {
		f(&cfg, &opts)
	}
	b := c.srv.Client()
	var ab adapters.Broker = b
	if c.wrap != nil {
		ab = c.wrap(b)
	}
	if c.decorate != nil {
		ab = c.decorate(id, ab)
	}
	n, err := New(ab, cfg, opts...)
	if err != nil {
		c.t.Fatalf("New(%s): %v", id, err)
	}
	if err := n.Start(context.Background()); err != nil {
		c.t.Fatalf("Start(%s): %v", id, err)
	}
	fn := &fakeNode{Node: n, b: b}
	c.nodes[id] = fn
	c.settle(nil)
	return fn
}

func withSkew(d time.Duration) func(*Config, *[]Option) {
	return func(_ *Config, o *[]Option) {
		*o = append(*o, func(op *options) { op.clock = skewedClock{op.clock, d} })
	}
}

// crash stops a node without a leave and cuts its connection, like kill -9.
func (c *fakeCluster) crash(id string) {
	n := c.nodes[id]
	n.crashed = true
	n.b.Disconnect()
	n.halt()
	_ = n.b.Close()
}

func (c *fakeCluster) running() []*fakeNode {
	var out []*fakeNode
	for _, n := range c.nodes {
		if !n.crashed {
			n.mu.Lock()
			stopped := n.stopped
			n.mu.Unlock()
			if !stopped {
				out = append(out, n)
			}
		}
	}
	return out
}

// settle waits until every running node has finished the tick for the
// current fake time (when before is given) and message handling has gone
// quiet.
func (c *fakeCluster) settle(before map[*fakeNode]uint64) {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for n, t0 := range before {
		for n.ticks.Load() <= t0 {
			if time.Now().After(deadline) {
				c.t.Fatalf("node %s did not tick", n.ID())
			}
			time.Sleep(200 * time.Microsecond)
		}
	}
	sum := func() uint64 {
		var s uint64
		for _, n := range c.running() {
			s += n.handled.Load()
		}
		return s
	}
	last, quiet := sum(), 0
	for quiet < 4 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
		if s := sum(); s == last {
			quiet++
		} else {
			last, quiet = s, 0
		}
	}
}

// step advances the fake clock by one heartbeat interval and settles.
func (c *fakeCluster) step() {
	c.t.Helper()
	before := map[*fakeNode]uint64{}
	for _, n := range c.running() {
		before[n] = n.ticks.Load()
	}
	c.clock.Advance(testHB)
	c.settle(before)
}

// run advances the fake clock by d in heartbeat steps.
func (c *fakeCluster) run(d time.Duration) {
	c.t.Helper()
	for i := time.Duration(0); i < d; i += testHB {
		c.step()
	}
}

// until steps until cond holds, failing after max of fake time. It returns
// the fake time it took.
func (c *fakeCluster) until(max time.Duration, what string, cond func() bool) time.Duration {
	c.t.Helper()
	start := c.clock.Now()
	for !cond() {
		if c.clock.Since(start) > max {
			c.t.Fatalf("%s: not within %s of fake time; %s", what, max, c.describe())
		}
		c.step()
	}
	return c.clock.Since(start)
}

// agreeOn reports whether every running node serves and sees lead as the
// lead.
func (c *fakeCluster) agreeOn(lead string) bool {
	for _, n := range c.running() {
		if n.Lead() != lead || !n.Serving() {
			return false
		}
	}
	return true
}

func (c *fakeCluster) describe() string {
	var parts []string
	for _, n := range c.running() {
		st := n.Status()
		lead, term := n.IsLead()
		parts = append(parts, fmt.Sprintf("%s{state=%s lead=%s leading=%v term=%d members=%d reason=%q}",
			n.ID(), st.State, st.Lead, lead, term, len(st.Members), st.Reason))
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}
