package bus

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/nats"
	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
)

// Main scenarios again on a real broker: an embedded NATS server, the real
// clock, heartbeat 100ms, failure timeout 400ms.

func startNATS(t testing.TB) string {
	t.Helper()
	srv, err := natsserver.Start(natsserver.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("embedded NATS server: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	return srv.ClientURL()
}

type natsNode struct {
	*Node
	b adapters.Broker
}

func startNATSNode(t testing.TB, url, cluster, id string, tweak func(*Config)) *natsNode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := openNATS(ctx, url)
	if err != nil {
		t.Fatalf("nats open: %v", err)
	}
	cfg := testConfig(cluster)
	cfg.NodeID = id
	cfg.FailureTimeout = 400 * time.Millisecond
	if tweak != nil {
		tweak(&cfg)
	}
	n, err := New(b, cfg, WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(ctx); err != nil {
		t.Fatal(err)
	}
	nn := &natsNode{Node: n, b: b}
	t.Cleanup(func() { nn.halt(); nn.b.Close() })
	return nn
}

// waitFor polls cond every 5ms for up to max of real time and returns how
// long it took.
func waitFor(t testing.TB, max time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > max {
			t.Fatalf("%s: not within %s", what, max)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

func agree(nodes []*natsNode, lead string) bool {
	for _, n := range nodes {
		if n.Lead() != lead || !n.Serving() {
			return false
		}
	}
	return true
}

func TestNATSLeadFailoverHandoverAndCache(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an embedded NATS server and runs for seconds; skipped with -short")
	}
	url := startNATS(t)
	cluster := fmt.Sprintf("nats-%d", time.Now().UnixNano()%1e6)
	a := startNATSNode(t, url, cluster, "a", nil)
	time.Sleep(20 * time.Millisecond) // distinct start times
	b := startNATSNode(t, url, cluster, "b", nil)
	time.Sleep(20 * time.Millisecond)
	c := startNATSNode(t, url, cluster, "c", nil)
	all := []*natsNode{a, b, c}
	waitFor(t, 10*time.Second, "all agree on a", func() bool { return agree(all, "a") })

	// Cache-clear reaches every node.
	caches := []*Cache[int]{NewCache[int](a.Node, "r"), NewCache[int](b.Node, "r"), NewCache[int](c.Node, "r")}
	for _, ca := range caches {
		ca.Load("k", func() (int, error) { return 1, nil })
	}
	if err := c.Invalidate(context.Background(), "r", "k"); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, 5*time.Second, "invalidation reaches every node", func() bool {
		for _, ca := range caches {
			if ca.Len() != 0 {
				return false
			}
		}
		return true
	})
	t.Logf("cache-clear fan-out to 3 nodes on NATS: %s", took)

	// Crash the lead: no leave, connection closed.
	_, term := a.IsLead()
	a.halt()
	a.b.Close()
	took = waitFor(t, 10*time.Second, "b and c agree on b", func() bool { return agree([]*natsNode{b, c}, "b") })
	t.Logf("failover after a crash on NATS: %s (failure timeout 400ms)", took)
	if _, t2 := b.IsLead(); t2 <= term {
		t.Fatalf("term %d after %d", t2, term)
	}

	// Restart a under the same ID: it rejoins as a non-lead.
	a2 := startNATSNode(t, url, cluster, "a", nil)
	waitFor(t, 10*time.Second, "a rejoins", func() bool { return agree([]*natsNode{a2, b, c}, "b") })

	// Graceful stop of the lead: handed over at once.
	start := time.Now()
	if err := b.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	took = waitFor(t, 5*time.Second, "c and a agree on c", func() bool { return agree([]*natsNode{a2, c}, "c") })
	t.Logf("handover after a graceful stop on NATS: %s (stop itself %s)", took, time.Since(start)-took)
	if took > 400*time.Millisecond {
		t.Logf("note: handover took longer than one failure timeout on a loaded machine")
	}
}

func TestNATSHealthTurns503WhenBrokerLinkLost(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an embedded NATS server; skipped with -short")
	}
	url := startNATS(t)
	a := startNATSNode(t, url, "nats-link", "a", nil)
	waitFor(t, 10*time.Second, "a serves", a.Serving)
	// Close the connection under the node: publishes fail, no echo.
	a.b.Close()
	took := waitFor(t, 5*time.Second, "a stops serving", func() bool { return !a.Serving() })
	t.Logf("health 503 %s after the broker link was closed", took)
	if l, _ := a.IsLead(); l {
		t.Fatal("still leads without a broker")
	}
}

func openNATS(ctx context.Context, url string) (adapters.Broker, error) {
	return nats.Open(ctx, nats.Options{Servers: []string{url}})
}
