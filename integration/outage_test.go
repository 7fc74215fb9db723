package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/flows"
)

// brokerOutage is how long the broker is gone in TestBrokerOutage.
const brokerOutage = 30 * time.Second

// TestBrokerOutage takes the broker away for 30 s under a steady flow load,
// twice: a single NATS server (its process killed with SIGKILL), and a
// 3-server NATS cluster (R3; all three killed). Three nodes run a flow with
// a wait step; a client submits an execution every 100ms to a live node,
// retrying with the same ID until it gets 202. Checks: every node's
// /ha/health answers 503 within the failure timeout (plus a margin for
// polling) of the outage, and 200 again after the broker is back; every
// execution acknowledged with 202 (before, during or after the outage)
// ends completed; none stays without a final state.
func TestBrokerOutage(t *testing.T) {
	needBinary(t)
	for _, size := range []int{1, 3} {
		name := "nats-single"
		if size > 1 {
			name = fmt.Sprintf("nats-cluster-%d", size)
		}
		t.Run(name, func(t *testing.T) {
			c := startNATSProcCluster(t, size)
			query := ""
			if size > 1 {
				query = "?replicas=3"
			}
			testBrokerOutage(t, c, query)
		})
	}
}

func testBrokerOutage(t *testing.T, c *natsProcCluster, query string) {
	tag := fmt.Sprintf("%d", time.Now().UnixNano()%1e8)
	rec := newChaosRecorder(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "chaos.yaml"), []byte(waitFlowYAML(rec.srv.URL)), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--flows.dir", dir, "--flows.queue", "outage-" + tag, "--flows.results-queue", "outage-results-" + tag,
		"--flows.lease", "4s", "--flows.max-attempts", "20", "--log-level", chaosLogLevel()}
	var nodes []*node
	for i := range 3 {
		nodes = append(nodes, startNode(t, c.url(i%len(c.cfgs), query), "outage-"+tag, fmt.Sprintf("o%d", i+1), args...))
	}
	waitUntil(t, 60*time.Second, "3 nodes healthy", func() bool {
		for _, n := range nodes {
			if n.health() != http.StatusOK {
				return false
			}
		}
		return true
	})

	// Load: one submission every 100ms; each retried with its ID until 202.
	var mu sync.Mutex
	var accepted []string
	attempts, refused := 0, 0
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			id := fmt.Sprintf("o%s-%05d", tag, i)
			for try := 0; ; try++ {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				body, _ := json.Marshal(flows.SubmitRequest{Flow: "chaos", ID: id})
				resp, err := client.Post(nodes[(i+try)%3].addr+"/api/flows", "application/json", bytes.NewReader(body))
				mu.Lock()
				attempts++
				mu.Unlock()
				if err == nil {
					resp.Body.Close()
					if resp.StatusCode == http.StatusAccepted {
						mu.Lock()
						accepted = append(accepted, id)
						mu.Unlock()
						break
					}
				}
				mu.Lock()
				refused++
				mu.Unlock()
			}
		}
	})

	time.Sleep(3 * time.Second)
	down := time.Now()
	for i := range c.cfgs {
		c.kill(i)
	}
	t.Logf("broker down (%d server(s) killed with SIGKILL)", len(c.cfgs))
	unhealthy := make([]time.Duration, len(nodes))
	for time.Since(down) < brokerOutage {
		for i, n := range nodes {
			if unhealthy[i] == 0 && n.health() == http.StatusServiceUnavailable {
				unhealthy[i] = time.Since(down)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i := range c.cfgs {
		c.start(i)
	}
	for i := range c.cfgs {
		c.waitReady(i)
	}
	up := time.Now()
	t.Logf("broker back after %s", up.Sub(down).Round(time.Millisecond))
	for i, n := range nodes {
		switch {
		case unhealthy[i] == 0:
			t.Errorf("%s answered 200 on /ha/health during all of the %s outage", n.id, brokerOutage)
		case unhealthy[i] > failureTimeout+margin:
			t.Errorf("%s turned 503 %s into the outage: want within the failure timeout %s (+%s)", n.id, unhealthy[i], failureTimeout, margin)
		default:
			t.Logf("%s: /ha/health 503 %s into the outage", n.id, unhealthy[i].Round(time.Millisecond))
		}
	}
	took := waitUntil(t, 2*time.Minute, "every node answers 200 again", func() bool {
		for _, n := range nodes {
			if n.health() != http.StatusOK {
				return false
			}
		}
		return true
	})
	t.Logf("every node 200 again %s after the broker was back", took.Round(time.Millisecond))
	time.Sleep(3 * time.Second) // load after the outage
	close(stop)
	wg.Wait()

	mu.Lock()
	ids := append([]string(nil), accepted...)
	t.Logf("%d executions accepted (202), %d submission attempts, %d refused or unanswered (retried with the same ID)", len(ids), attempts, refused)
	mu.Unlock()
	// Every accepted execution ends completed; a state that is not final
	// must say why (an error) while it waits.
	deadline := time.Now().Add(3 * time.Minute)
	start := time.Now()
	for {
		var open []flows.Status
		for _, id := range ids {
			st, err := flowStatus(nodes[0], id)
			if err != nil {
				st = flows.Status{Execution: id, Error: "no status: " + err.Error()}
			}
			if st.State != flows.StateCompleted {
				open = append(open, st)
			}
		}
		if len(open) == 0 {
			break
		}
		if time.Now().After(deadline) {
			calls := map[string][]string{}
			for _, c := range rec.snapshot() {
				calls[c.Exec] = append(calls[c.Exec], fmt.Sprintf("%s@%s by %s (attempt %d)", c.Step, c.At.Format("15:04:05.000"), c.Node, c.Attempt))
			}
			var lines []string
			for _, st := range open {
				lines = append(lines, fmt.Sprintf("%s: state %q step %q attempt %d error %q updated %s; step calls: %v",
					st.Execution, st.State, st.Step, st.Attempt, st.Error, st.Updated.Format("15:04:05.000"), calls[st.Execution]))
			}
			t.Fatalf("%d of %d accepted executions not completed 3 minutes after the outage, e.g.:\n%s",
				len(open), len(ids), strings.Join(chaosFirst(lines, 10), "\n"))
		}
		time.Sleep(time.Second)
	}
	t.Logf("all %d accepted executions completed %s after the nodes were healthy again", len(ids), time.Since(start).Round(time.Millisecond))
}

// flowStatus reads GET /api/flows/{id} from n.
func flowStatus(n *node, id string) (flows.Status, error) {
	var s flows.Status
	resp, err := client.Get(n.addr + "/api/flows/" + id)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("GET /api/flows/%s: %s", id, resp.Status)
	}
	err = json.NewDecoder(resp.Body).Decode(&s)
	return s, err
}
