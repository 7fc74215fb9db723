package integration

import (
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters/nats/natsserver"
	"github.com/clusterbus/clusterbus/internal/tcpproxy"
)

// partitionCut is how long TestBrokerPartitionOneLeadServes keeps the
// minority server cut off: well past forget-after (30 s at defaults), so
// the test sees that the minority never un-fences by a timeout.
const partitionCut = 90 * time.Second

// TestBrokerPartitionOneLeadServes runs five nodes on a 3-server embedded
// NATS cluster (JetStream R3, routes on loopback through TCP proxies):
// n1 (the oldest) and n4 on server 1, n2 and n3 on server 2, n5 on server
// 3. Server 1's routes are cut for partitionCut. After the detection
// window (failure timeout + margin) no poll sees two nodes serving as
// lead, and the minority (n1, n4) answers 503 at every poll of the cut.
// After the routes heal, one lead serves within 2 s at every poll, and
// all five agree on it once the downed minority has rejoined.
func TestBrokerPartitionOneLeadServes(t *testing.T) {
	needBinary(t)
	var proxies []*tcpproxy.Proxy // those on server 1's routes, both ways
	var proxiesMu sync.Mutex      // StartCluster starts the servers concurrently
	cl, err := natsserver.StartCluster(natsserver.ClusterConfig{
		Size: 3, Dir: t.TempDir(), Name: "partition",
		RouteVia: func(from, to int, addr string) string {
			if from != 0 && to != 0 {
				return addr
			}
			p := newProxy(t, addr)
			proxiesMu.Lock()
			proxies = append(proxies, p)
			proxiesMu.Unlock()
			return p.Addr()
		},
	})
	if err != nil {
		t.Fatalf("3-server NATS cluster: %v", err)
	}
	t.Cleanup(cl.Shutdown)
	url := func(i int) string { return "nats://" + cl.ClientAddr(i) + "?replicas=3" }
	flowsDir, _ := filepath.Abs("../examples/flows")
	cluster := fmt.Sprintf("it-partition-%d", time.Now().UnixNano()%1e6)
	place := []struct {
		id     string
		server int
	}{{"n1", 0}, {"n2", 1}, {"n3", 1}, {"n4", 0}, {"n5", 2}}
	var nodes []*node
	for _, p := range place {
		nodes = append(nodes, startNode(t, url(p.server), cluster, p.id, "--flows.dir", flowsDir))
	}
	ids := []string{"n1", "n2", "n3", "n4", "n5"}
	waitUntil(t, 60*time.Second, "5 nodes agree on n1", func() bool {
		for _, n := range nodes {
			if !n.sees("n1", ids...) {
				return false
			}
		}
		return true
	})
	minority := map[string]bool{"n1": true, "n4": true}

	type poll struct {
		at     time.Duration
		leads  []string
		health map[string]int
	}
	leadOr := func(p poll, def string) string {
		if len(p.leads) == 1 {
			return p.leads[0]
		}
		return def
	}
	pollAll := func(since time.Time) poll {
		p := poll{at: time.Since(since), health: map[string]int{}}
		for _, n := range nodes {
			p.health[n.id] = n.health()
			if p.health[n.id] == http.StatusOK {
				if c, err := n.cluster(); err == nil && c.Lead == c.Local {
					p.leads = append(p.leads, n.id)
				}
			}
		}
		sort.Strings(p.leads)
		return p
	}
	detect := failureTimeout + margin
	var timeline []string
	note := func(format string, a ...any) {
		timeline = append(timeline, fmt.Sprintf(format, a...))
	}

	cut := time.Now()
	for _, p := range proxies {
		p.Cut()
	}
	note("0s: server 1 (n1, n4) cut off from servers 2 and 3")
	var lastLeads string
	var minorityDown time.Duration = -1
	polls := 0
	for time.Since(cut) < partitionCut {
		p := pollAll(cut)
		polls++
		if l := strings.Join(p.leads, ","); l != lastLeads {
			note("%s: serving as lead: [%s]", p.at.Round(10*time.Millisecond), l)
			lastLeads = l
		}
		if minorityDown < 0 && p.health["n1"] != http.StatusOK && p.health["n4"] != http.StatusOK {
			minorityDown = p.at
			note("%s: minority n1 and n4 answer 503", p.at.Round(10*time.Millisecond))
		}
		if p.at > detect {
			if len(p.leads) > 1 {
				t.Fatalf("%s into the cut: two nodes serve as lead: %v\n%s", p.at, p.leads, strings.Join(timeline, "\n"))
			}
			for id := range minority {
				if p.health[id] == http.StatusOK {
					_, body := nodeByID(nodes, id).get("/ha/health")
					t.Fatalf("%s into the cut: minority node %s answers 200 (%s)\n%s", p.at, id, strings.TrimSpace(body), strings.Join(timeline, "\n"))
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if lastLeads != "n2" {
		t.Fatalf("at the end of the cut the serving lead is [%s], want n2 (the oldest of the majority)\n%s", lastLeads, strings.Join(timeline, "\n"))
	}
	_, body := nodes[0].get("/ha/health")
	note("%s: end of the cut after %d polls; n1 says: %s", time.Since(cut).Round(10*time.Millisecond), polls, strings.TrimSpace(body))

	healed := time.Now()
	for _, p := range proxies {
		p.Restore()
	}
	note("heal at %s", healed.Sub(cut).Round(10*time.Millisecond))
	agreed := false
	for time.Since(healed) < 60*time.Second && !agreed {
		p := pollAll(healed)
		if l := strings.Join(p.leads, ","); l != lastLeads {
			note("heal+%s: serving as lead: [%s]", p.at.Round(10*time.Millisecond), l)
			lastLeads = l
		}
		if p.at > 2*time.Second && len(p.leads) != 1 {
			t.Fatalf("heal+%s: %d nodes serve as lead (%v), want one\n%s", p.at, len(p.leads), p.leads, strings.Join(timeline, "\n"))
		}
		agreed = true
		for _, n := range nodes {
			agreed = agreed && n.sees(leadOr(p, "?"), ids...)
		}
		if agreed {
			note("heal+%s: all five serve and agree on %s", p.at.Round(10*time.Millisecond), leadOr(p, "?"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("timeline:\n%s", strings.Join(timeline, "\n"))
	if !agreed {
		t.Fatalf("the five nodes did not agree within 60 s of the heal")
	}
}

func nodeByID(nodes []*node, id string) *node {
	for _, n := range nodes {
		if n.id == id {
			return n
		}
	}
	return nil
}
