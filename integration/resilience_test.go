package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/flows"
)

// startNodeProc starts a node without waiting for it to answer (it may be
// waiting for its broker).
func startNodeProc(t *testing.T, brokerURL, cluster, id string, extra ...string) *node {
	t.Helper()
	port := freePort(t)
	args := append([]string{"node", "--broker", brokerURL, "--http", fmt.Sprintf("127.0.0.1:%d", port),
		"--cluster", cluster, "--drain-timeout", "10s"}, extra...)
	if id != "" {
		args = append(args, "--node-id", id)
	}
	name := id
	if name == "" {
		name = "node"
	}
	return &node{proc: startProc(t, name, args...), id: id, addr: fmt.Sprintf("http://127.0.0.1:%d", port)}
}

// get returns the status and body of GET path (0 on error).
func (n *node) get(path string) (int, string) {
	resp, err := client.Get(n.addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(b)
}

// submitAndWait submits flow with input to n and waits for it to complete.
func submitAndWait(t *testing.T, n *node, flow string, input map[string]any, max time.Duration) flows.Status {
	t.Helper()
	body, _ := json.Marshal(flows.SubmitRequest{Flow: flow, Input: input})
	resp, err := client.Post(n.addr+"/api/flows", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("submit %s: %v", flow, err)
	}
	var sr flows.SubmitResponse
	_ = json.NewDecoder(resp.Body).Decode(&sr)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || sr.ID == "" {
		t.Fatalf("submit %s: %s", flow, resp.Status)
	}
	var st flows.Status
	waitUntil(t, max, "execution "+sr.ID+" completes", func() bool {
		code, b := n.get("/api/flows/" + sr.ID)
		return code == http.StatusOK && json.Unmarshal([]byte(b), &st) == nil && st.State == flows.StateCompleted
	})
	return st
}

// TestStartBeforeBroker starts a node whose broker is not up yet: the
// node stays up answering 503 "starting: waiting for broker" (never 200
// before /api/flows exists), and once the broker starts on that address it
// connects, declares its queues, turns healthy and runs a flow.
func TestStartBeforeBroker(t *testing.T) {
	needBinary(t)
	port := freePort(t)
	brokerURL := fmt.Sprintf("nats://127.0.0.1:%d", port)
	flowsDir, _ := filepath.Abs("../examples/flows")
	n := startNodeProc(t, brokerURL, fmt.Sprintf("it-order-%d", time.Now().UnixNano()%1e6), "early",
		"--flows.dir", flowsDir)

	// Nothing listens on the broker's port: the node waits, says why.
	waitUntil(t, 30*time.Second, "the node answers 503 waiting for broker", func() bool {
		if !n.running() {
			t.Fatalf("node exited without a broker: %v\n%s", n.err, n.log())
		}
		code, body := n.get("/ha/health")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "waiting for broker")
	})
	if code, _ := n.get("/livez"); code != http.StatusOK {
		t.Fatalf("/livez while waiting for the broker = %d, want 200", code)
	}
	time.Sleep(3 * time.Second) // several retries, none fatal
	if !n.running() {
		t.Fatalf("node exited while waiting for its broker: %v\n%s", n.err, n.log())
	}
	if code, body := n.get("/ha/health"); code != http.StatusServiceUnavailable {
		t.Fatalf("/ha/health with no broker = %d %q", code, body)
	}

	p := startProc(t, "broker", "broker", "--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--data-dir", filepath.Join(t.TempDir(), "broker"), "--sync=false")
	started := time.Now()
	// Every poll: 200 on health implies the flow API is mounted.
	waitUntil(t, 60*time.Second, "the node turns healthy after the broker starts", func() bool {
		if !p.running() {
			t.Fatalf("broker exited: %v\n%s", p.err, p.log())
		}
		if n.health() != http.StatusOK {
			return false
		}
		if code, body := n.get("/api/flows"); code != http.StatusOK {
			t.Fatalf("health 200 but GET /api/flows = %d %q: ready before its routes", code, body)
		}
		return true
	})
	t.Logf("healthy %s after the broker started", time.Since(started).Round(time.Millisecond))
	if !strings.Contains(n.log(), "waiting for broker") {
		t.Errorf("the node's log does not say it waited for the broker:\n%s", n.log())
	}
	st := submitAndWait(t, n, "shipping-carrier", map[string]any{"weight_kg": 40, "country": "NL"}, 30*time.Second)
	if out, _ := st.Output["outcome"].(string); out != "freight-nl" {
		t.Fatalf("shipping-carrier outcome = %v, want freight-nl", st.Output)
	}
}
