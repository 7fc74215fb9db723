package integration

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// margin is added to the failure timeout in deadlines: process scheduling
// on a loaded machine, the 20ms polling and the HTTP round trips.
const margin = 3 * time.Second

// TestKillLeadFailsOverAndGracefulStopHandsOver runs three nodes on each
// broker: kill -9 of the lead moves the lead to the next oldest within the
// failure timeout plus a margin, the killed node rejoins as a non-lead, and
// SIGTERM of the lead hands over within the failure timeout and exits 0.
func TestKillLeadFailsOverAndGracefulStopHandsOver(t *testing.T) {
	needBinary(t)
	forEachBroker(t, testKillLeadFailsOverAndGracefulStopHandsOver)
}

func testKillLeadFailsOverAndGracefulStopHandsOver(t *testing.T, b testBroker) {
	brokerURL := b.url
	cluster := fmt.Sprintf("it-failover-%d", time.Now().UnixNano()%1e6)

	// Started one after the other: n1 is the oldest, then n2, then n3.
	n1 := startNode(t, brokerURL, cluster, "n1")
	n2 := startNode(t, brokerURL, cluster, "n2")
	n3 := startNode(t, brokerURL, cluster, "n3")
	waitUntil(t, 30*time.Second, "3 nodes agree on n1", func() bool {
		return n1.sees("n1", "n1", "n2", "n3") && n2.sees("n1", "n1", "n2", "n3") && n3.sees("n1", "n1", "n2", "n3")
	})
	c, _ := n2.cluster()
	term1 := c.Term

	// kill -9 the lead: the others agree on the next oldest, n2.
	n1.kill()
	took := waitUntil(t, failureTimeout+margin, "after kill -9 of n1, n2 and n3 agree on n2", func() bool {
		return n2.sees("n2", "n2", "n3") && n3.sees("n2", "n2", "n3")
	})
	t.Logf("%s: kill -9 of the lead -> survivors agree on the next oldest in %s (failure timeout %s)", b.kind, took, failureTimeout)
	// n3 learns n2's new term from n2's next heartbeat, which may come a
	// heartbeat after n3 itself sees n2 as the lead.
	waitUntil(t, 2*time.Second, "n3 reports a higher term than before the failover", func() bool {
		c, _ = n3.cluster()
		return c.Term > term1
	})

	// Restart n1 with the same ID: it rejoins as a non-lead.
	n1 = startNode(t, brokerURL, cluster, "n1")
	waitUntil(t, 30*time.Second, "n1 rejoins and n2 stays the lead", func() bool {
		return n1.sees("n2", "n1", "n2", "n3") && n2.sees("n2", "n1", "n2", "n3") && n3.sees("n2", "n1", "n2", "n3")
	})

	// SIGTERM the lead: it hands over at once (well within the failure
	// timeout) and exits 0. The next oldest is now n3.
	start := time.Now()
	done := make(chan int, 1)
	go func() { done <- n2.term(30 * time.Second) }()
	took = waitUntil(t, failureTimeout, "after SIGTERM of n2, n1 and n3 agree on n3 within the failure timeout", func() bool {
		return n3.sees("n3", "n1", "n3") && n1.sees("n3", "n1", "n3")
	})
	t.Logf("%s: SIGTERM of the lead -> survivors agree on n3 in %s", b.kind, took)
	if code := <-done; code != 0 {
		t.Fatalf("n2 exited %d after SIGTERM, want 0\n%s", code, n2.log())
	}
	t.Logf("n2 exited 0 %s after SIGTERM", time.Since(start).Round(time.Millisecond))
}

// TestHealthTurns503WhenBrokerLinkCut runs, on each broker, a node whose
// broker link goes through a TCP proxy and another that connects directly:
// cutting the proxy turns the first one's HEAD /ha/health to 503 within the
// failure timeout plus a margin, the other drops it, and restoring the link
// brings it back to 200. Kafka skips: see viaProxy.
func TestHealthTurns503WhenBrokerLinkCut(t *testing.T) {
	needBinary(t)
	forEachBroker(t, testHealthTurns503WhenBrokerLinkCut)
}

func testHealthTurns503WhenBrokerLinkCut(t *testing.T, b testBroker) {
	target, _ := viaProxy(t, b, "127.0.0.1:1")
	brokerURL := b.url
	px := newProxy(t, target)
	_, proxied := viaProxy(t, b, px.Addr())
	cluster := fmt.Sprintf("it-link-%d", time.Now().UnixNano()%1e6)

	other := startNode(t, brokerURL, cluster, "direct")
	cutoff := startNode(t, proxied, cluster, "proxied")
	waitUntil(t, 30*time.Second, "both nodes healthy", func() bool {
		return cutoff.health() == http.StatusOK && other.sees("direct", "direct", "proxied")
	})
	if code := cutoff.health(); code != http.StatusOK {
		t.Fatalf("HEAD /ha/health on a healthy node = %d", code)
	}

	px.Cut()
	took := waitUntil(t, failureTimeout+margin, "HEAD /ha/health turns 503 after the link is cut", func() bool {
		return cutoff.health() == http.StatusServiceUnavailable
	})
	t.Logf("%s: health 503 %s after the broker link was cut (failure timeout %s)", b.kind, took, failureTimeout)
	resp, err := client.Get(cutoff.addr + "/ha/health")
	if err == nil {
		buf := make([]byte, 200)
		n, _ := resp.Body.Read(buf)
		resp.Body.Close()
		t.Logf("GET /ha/health: %d %q", resp.StatusCode, buf[:n])
	}
	waitUntil(t, failureTimeout+margin, "the other node drops the cut-off one", func() bool {
		return other.sees("direct", "direct")
	})

	px.Restore()
	took = waitUntil(t, 60*time.Second, "health back to 200 after the link is restored", func() bool {
		return cutoff.health() == http.StatusOK
	})
	t.Logf("%s: health 200 again %s after the link was restored (client reconnect backoff included)", b.kind, took)
}
