package bus

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/adapters/signed"
)

// Benchmarks run in one process on the mem broker with the real clock
// (and, where named, on an embedded NATS server). They report figures with
// b.ReportMetric; nothing is asserted about time.
//
//	go test -run '^$' -bench BenchmarkFailover -benchtime 20x ./bus
//	go test -run '^$' -bench BenchmarkCacheClearFanout -benchtime 200x ./bus
//	go test -run '^$' -bench BenchmarkHeartbeatLoad -benchtime 1x ./bus
//	go test -run '^$' -bench BenchmarkHeartbeatObserver -benchtime 1x ./bus

func percentiles(d []time.Duration) (p50, p99 time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	idx := func(p float64) int { return min(len(s)-1, int(p*float64(len(s)-1)+0.5)) }
	return s[idx(0.50)], s[idx(0.99)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

type realNode struct {
	*Node
	b *mem.Broker
}

func startRealNode(b testing.TB, srv *mem.Server, cfg Config, id string) *realNode {
	cl := srv.Client()
	cfg.NodeID = id
	n, err := New(cl, cfg)
	if err != nil {
		b.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	return &realNode{Node: n, b: cl}
}

func (n *realNode) crash() {
	n.b.Disconnect()
	n.halt()
	n.b.Close()
}

func pollUntil(b testing.TB, max time.Duration, what string, cond func() bool) {
	deadline := time.Now().Add(max)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("%s: not within %s", what, max)
		}
		time.Sleep(500 * time.Microsecond)
	}
}

// BenchmarkFailover: kill the lead of a 3-node cluster (no leave, its
// connection cut, like kill -9) and time until every survivor reports the
// new lead; then restart the killed node under the same ID and wait until
// the cluster is whole again. One iteration is one kill. Default timing
// (heartbeat 500ms, failure timeout 1.5s), mem broker, real clock.
func BenchmarkFailover(b *testing.B) {
	srv := mem.NewServer()
	cfg := DefaultConfig()
	cfg.Cluster = "bench-failover"
	ids := []string{"n1", "n2", "n3"}
	nodes := map[string]*realNode{}
	for _, id := range ids {
		nodes[id] = startRealNode(b, srv, cfg, id)
		time.Sleep(2 * time.Millisecond)
	}
	b.Cleanup(func() {
		for _, n := range nodes {
			n.halt()
			n.b.Close()
		}
	})
	oldest := func() []string { // ids by start time
		out := slices.Clone(ids)
		slices.SortFunc(out, func(a, c string) int {
			return nodes[a].start.Compare(nodes[c].start)
		})
		return out
	}
	whole := func() bool {
		want := oldest()[0]
		for _, n := range nodes {
			if n.Lead() != want || !n.Serving() || len(n.Status().Members) != 3 {
				return false
			}
		}
		return true
	}
	pollUntil(b, 30*time.Second, "cluster forms", whole)
	var took []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		order := oldest()
		lead, next := order[0], order[1]
		nodes[lead].crash()
		t0 := time.Now()
		pollUntil(b, 30*time.Second, "survivors agree", func() bool {
			for _, id := range order[1:] {
				if nodes[id].Lead() != next {
					return false
				}
			}
			return true
		})
		took = append(took, time.Since(t0))
		b.StopTimer()
		nodes[lead] = startRealNode(b, srv, cfg, lead)
		pollUntil(b, 30*time.Second, "cluster whole again", whole)
		b.StartTimer()
	}
	p50, p99 := percentiles(took)
	b.ReportMetric(ms(p50), "failover-p50-ms")
	b.ReportMetric(ms(p99), "failover-p99-ms")
	b.ReportMetric(float64(len(took)), "kills")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkCacheClearFanout: one node invalidates a key; time until the
// region handlers of all 10 nodes (the sender's included) have run.
func BenchmarkCacheClearFanout(b *testing.B) {
	for _, brokerName := range []string{"mem", "nats"} {
		b.Run(brokerName, func(b *testing.B) {
			var open func() adapters.Broker
			switch brokerName {
			case "mem":
				srv := mem.NewServer()
				open = func() adapters.Broker { return srv.Client() }
			case "nats":
				url := startNATS(b)
				open = func() adapters.Broker {
					nn := startNATSNodeBroker(b, url)
					return nn
				}
			}
			cfg := DefaultConfig()
			cfg.Cluster = "bench-cache"
			var hits atomic.Int64
			var nodes []*Node
			for i := range 10 {
				br := open()
				c := cfg
				c.NodeID = fmt.Sprintf("c%02d", i)
				n, err := New(br, c)
				if err != nil {
					b.Fatal(err)
				}
				n.OnInvalidate("r", func(keys []string) { hits.Add(1) })
				if err := n.Start(context.Background()); err != nil {
					b.Fatal(err)
				}
				nodes = append(nodes, n)
				b.Cleanup(func() { n.halt(); br.Close() })
			}
			pollUntil(b, 30*time.Second, "10 nodes serve", func() bool {
				for _, n := range nodes {
					if !n.Serving() || len(n.Status().Members) != 10 {
						return false
					}
				}
				return true
			})
			hits.Store(0)
			var took []time.Duration
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				want := hits.Load() + 10
				t0 := time.Now()
				if err := nodes[i%10].Invalidate(ctx, "r", fmt.Sprintf("k%d", i)); err != nil {
					b.Fatal(err)
				}
				for hits.Load() < want {
					if time.Since(t0) > 10*time.Second {
						b.Fatalf("invalidation %d reached %d of 10 handlers", i, 10-(want-hits.Load()))
					}
					time.Sleep(20 * time.Microsecond)
				}
				took = append(took, time.Since(t0))
			}
			p50, p99 := percentiles(took)
			b.ReportMetric(float64(p50.Microseconds()), "fanout-p50-us")
			b.ReportMetric(float64(p99.Microseconds()), "fanout-p99-us")
		})
	}
}

// startNATSNodeBroker opens one NATS client for a benchmark node.
func startNATSNodeBroker(b testing.TB, url string) adapters.Broker {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	br, err := openNATS(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	return br
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkHeartbeatLoad: N simulated nodes in one process on one mem
// server, default failure timeout rules, measured over a 5s window once
// they have formed the cluster: CPU (cores busy), heartbeats published and
// delivered per second, bytes per second, and whether every node still saw
// all N members. Every heartbeat goes to every node, so deliveries grow as
// N² / interval: 1,000 nodes at the default 500ms would be 2,000,000
// deliveries a second, more than one process on a small machine decodes,
// so 1,000 nodes run at a 5s interval (200,000 deliveries a second).
func BenchmarkHeartbeatLoad(b *testing.B) {
	for _, tc := range []struct {
		n  int
		hb time.Duration
	}{{100, 500 * time.Millisecond}, {1000, 5 * time.Second}} {
		b.Run(fmt.Sprintf("nodes=%d/hb=%s", tc.n, tc.hb), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				heartbeatLoad(b, tc.n, tc.hb, "")
			}
		})
	}
}

// BenchmarkHeartbeatLoadSigning is the CPU cost of a cluster key for
// heartbeats: 100 nodes at the default 500ms, without a key and with every
// heartbeat signed and verified by adapters/signed, in one run.
//
//	go test -run '^$' -bench HeartbeatLoadSigning -benchtime 1x ./bus/
func BenchmarkHeartbeatLoadSigning(b *testing.B) {
	for _, key := range []string{"", "bench-cluster-key-0123456789"} {
		b.Run(fmt.Sprintf("key=%v", key != ""), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				heartbeatLoad(b, 100, 500*time.Millisecond, key)
			}
		})
	}
}

func heartbeatLoad(b *testing.B, n int, hb time.Duration, key string) {
	// A small buffer per subscription bounds memory (N subscriptions each
	// hold copies); a node that falls behind sees a gap, which is counted.
	srv := mem.NewServer(mem.WithSubscriptionBuffer(256))
	cfg := DefaultConfig()
	cfg.Cluster = "bench-load"
	cfg.HeartbeatInterval = hb
	cfg.FailureTimeout = 3 * hb
	cfg.SplitBrain = SplitBrainOff
	nodes := make([]*Node, 0, n)
	for i := range n {
		c := cfg
		c.NodeID = fmt.Sprintf("sim%04d", i)
		var br adapters.Broker = srv.Client()
		if key != "" {
			ring, _ := signed.NewKeyRing([]byte(key))
			sb, err := signed.Wrap(br, signed.Config{Cluster: c.Cluster, Sender: c.NodeID, Keys: ring})
			if err != nil {
				b.Fatal(err)
			}
			br = sb
		}
		nd, err := New(br, c)
		if err != nil {
			b.Fatal(err)
		}
		if err := nd.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		nodes = append(nodes, nd)
	}
	defer func() {
		for _, nd := range nodes {
			nd.halt()
		}
	}()
	// Let the cluster form (up to 4 failure timeouts).
	formed := false
	deadline := time.Now().Add(4 * cfg.FailureTimeout)
	for time.Now().Before(deadline) && !formed {
		time.Sleep(100 * time.Millisecond)
		formed = true
		for _, nd := range []*Node{nodes[0], nodes[n/2], nodes[n-1]} {
			if len(nd.Status().Members) != n {
				formed = false
			}
		}
	}
	count := func() (sent, recv, gaps float64) {
		for _, nd := range nodes {
			sent += testCounter(nd.m.hbSent)
			recv += testCounter(nd.m.hbReceived)
			gaps += testCounter(nd.m.subscriptionGaps)
		}
		return
	}
	hbSize := func() int {
		msg, _ := nodes[0].heartbeatMessage(kindHeartbeat)
		return adapters.Size(msg)
	}()
	window := 5 * time.Second
	s0, r0, g0 := count()
	c0, t0 := cpuTime(), time.Now()
	minLive := n
	for time.Since(t0) < window {
		time.Sleep(250 * time.Millisecond)
		for _, nd := range []*Node{nodes[0], nodes[n/2], nodes[n-1]} {
			live := 0
			for _, m := range nd.Status().Members {
				if m.Live {
					live++
				}
			}
			minLive = min(minLive, live)
		}
	}
	el := time.Since(t0)
	cpu := cpuTime() - c0
	s1, r1, g1 := count()
	sec := el.Seconds()
	b.ReportMetric(cpu.Seconds()/sec, "cores")
	b.ReportMetric((s1-s0)/sec, "hb-sent/s")
	b.ReportMetric((r1-r0)/sec, "hb-delivered/s")
	b.ReportMetric(float64(hbSize), "hb-bytes")
	b.ReportMetric((s1-s0)/sec*float64(hbSize)/1024, "sent-KiB/s")
	b.ReportMetric((r1-r0)/sec*float64(hbSize)/1024/1024, "delivered-MiB/s")
	b.ReportMetric(float64(minLive), "min-live-seen")
	b.ReportMetric(g1-g0, "sub-gaps")
	if r1 > r0 {
		b.ReportMetric(float64(cpu.Microseconds())/(r1-r0), "cpu-us/delivery")
	}
	b.ReportMetric(b2f(formed), "formed")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkHeartbeatObserver measures what one node pays for the size of
// its cluster at the default timing (500ms heartbeats): n-1 simulated
// members only publish heartbeats (their subscriptions deliver nothing, so
// they cost the process little), then k full nodes join and must see all n
// members. The CPU of the process before and after the k nodes joined gives
// one node's cost: cores/node. hb-in/s/node is what each full node
// receives, and cluster-hb/s the traffic on the heartbeat topic. This is
// how 1,000 nodes can be measured in one process: the N² deliveries of a
// full simulation are not needed to know what one node of N does.
func BenchmarkHeartbeatObserver(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				heartbeatObserver(b, n, 10)
			}
		})
	}
}

// publishOnly is a broker whose subscriptions deliver nothing.
type publishOnly struct{ adapters.Broker }

func (publishOnly) Subscribe(context.Context, string) (adapters.Subscription, error) {
	return &silentSub{done: make(chan struct{})}, nil
}

type silentSub struct {
	once sync.Once
	done chan struct{}
}

func (s *silentSub) Receive(ctx context.Context) (adapters.Message, error) {
	select {
	case <-ctx.Done():
		return adapters.Message{}, ctx.Err()
	case <-s.done:
		return adapters.Message{}, adapters.ErrClosed
	}
}

func (s *silentSub) Close() error {
	s.once.Do(func() { close(s.done) })
	return nil
}

func heartbeatObserver(b *testing.B, n, k int) {
	srv := mem.NewServer(mem.WithSubscriptionBuffer(8192))
	cfg := DefaultConfig()
	cfg.Cluster = "bench-observer"
	cfg.SplitBrain = SplitBrainOff
	var all []*Node
	defer func() {
		for _, nd := range all {
			nd.halt()
		}
	}()
	start := func(id string, br adapters.Broker) *Node {
		c := cfg
		c.NodeID = id
		nd, err := New(br, c)
		if err != nil {
			b.Fatal(err)
		}
		if err := nd.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		all = append(all, nd)
		return nd
	}
	for i := range n - k {
		start(fmt.Sprintf("sim%04d", i), publishOnly{srv.Client()})
	}
	window := 5 * time.Second
	measure := func() (cores float64, el time.Duration) {
		c0, t0 := cpuTime(), time.Now()
		time.Sleep(window)
		el = time.Since(t0)
		return (cpuTime() - c0).Seconds() / el.Seconds(), el
	}
	time.Sleep(time.Second)
	base, _ := measure()
	var full []*Node
	for i := range k {
		full = append(full, start(fmt.Sprintf("full%02d", i), srv.Client()))
	}
	formed := false
	deadline := time.Now().Add(4 * cfg.FailureTimeout)
	for time.Now().Before(deadline) && !formed {
		time.Sleep(100 * time.Millisecond)
		formed = true
		for _, nd := range full {
			if len(nd.Status().Members) != n {
				formed = false
			}
		}
	}
	var r0, g0 float64
	for _, nd := range full {
		r0 += testCounter(nd.m.hbReceived)
		g0 += testCounter(nd.m.subscriptionGaps)
	}
	with, el := measure()
	var r1, g1 float64
	minLive := n
	for _, nd := range full {
		r1 += testCounter(nd.m.hbReceived)
		g1 += testCounter(nd.m.subscriptionGaps)
		live := 0
		for _, m := range nd.Status().Members {
			if m.Live {
				live++
			}
		}
		minLive = min(minLive, live)
	}
	b.ReportMetric((with-base)/float64(k), "cores/node")
	b.ReportMetric((r1-r0)/el.Seconds()/float64(k), "hb-in/s/node")
	b.ReportMetric(float64(n)/cfg.HeartbeatInterval.Seconds(), "cluster-hb/s")
	b.ReportMetric(float64(minLive), "min-live-seen")
	b.ReportMetric(g1-g0, "sub-gaps")
	b.ReportMetric(b2f(formed), "formed")
	b.ReportMetric(0, "ns/op")
}
