package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/flows"
)

// controlFlow's call step blocks in the test's HTTP service when the
// execution's input says so, until its request is cancelled.
const controlFlow = `flow: slowcall
steps:
  - name: first
    set: {a: "1"}
  - name: call
    http: {method: POST, url: "URL/call", body: "input", timeout: 60s, retries: 0}
  - name: after
    set: {b: "2"}
`

// TestFlowCancelAndHistoryAcrossRestart: on embedded NATS (`clusterbus
// broker`), with two node processes: an execution whose http step is
// running is cancelled with `clusterbus flow cancel` through the other
// node; the step's request is cancelled (the service sees it end), the
// next step never runs, and `flow history` on either node says cancelled
// with the reason. Then every node restarts with an empty data dir: `flow
// history` and `flow list --status` still answer, from the catalog the
// broker retains, for the cancelled execution and a completed one.
func TestFlowCancelAndHistoryAcrossRestart(t *testing.T) {
	needBinary(t)
	began := time.Now()
	var arrived, aborted, served atomic.Int64
	svc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !strings.Contains(string(body), `"block":true`) {
			served.Add(1)
			fmt.Fprint(w, `{"ok": true}`)
			return
		}
		arrived.Add(1)
		select {
		case <-r.Context().Done():
			aborted.Add(1)
		case <-time.After(50 * time.Second):
			fmt.Fprint(w, `{"ok": "late"}`)
		}
	}))
	t.Cleanup(svc.Close)

	b := startTestBroker(t, "nats")
	cluster := fmt.Sprintf("it-ctl-%d", time.Now().UnixNano()%1e8)
	start := func(id string) *node {
		return startNode(t, b.url, cluster, id, "--data-dir", t.TempDir())
	}
	a, bn := start("a"), start("b")
	waitUntil(t, 30*time.Second, "a and b serve", func() bool { return a.health() == http.StatusOK && bn.health() == http.StatusOK })
	file := filepath.Join(t.TempDir(), "slowcall.yaml")
	os.WriteFile(file, []byte(strings.ReplaceAll(controlFlow, "URL", svc.URL)), 0o644)
	cli(t, "flow", "deploy", file, "--addr", a.addr)
	waitUntil(t, 10*time.Second, "b has the flow", func() bool { return headOf(bn, "slowcall") == 1 })

	quick := submitWithInput(t, bn, "slowcall", `{"block": false}`)
	stuck := submitWithInput(t, bn, "slowcall", `{"block": true}`)
	waitUntil(t, 20*time.Second, "the blocking step's request arrives", func() bool { return arrived.Load() == 1 })
	var st flows.Status
	waitUntil(t, 20*time.Second, "the quick execution completes", func() bool {
		var err error
		st, err = flowStatus(a, quick)
		return err == nil && st.State == flows.StateCompleted
	})
	cancelAt := time.Now()
	out := cli(t, "flow", "cancel", stuck, "--reason", "integration test", "--addr", a.addr)
	if !strings.Contains(out, stuck) {
		t.Fatalf("cancel: %s", out)
	}
	took := waitUntil(t, 10*time.Second, "the running step's request is cancelled", func() bool { return aborted.Load() == 1 })
	waitUntil(t, 10*time.Second, "both nodes record the cancellation", func() bool {
		sa, errA := flowStatus(a, stuck)
		sb, errB := flowStatus(bn, stuck)
		return errA == nil && errB == nil && sa.State == flows.StateCancelled && sb.State == flows.StateCancelled
	})
	t.Logf("cancel: the step's request ended %s after `flow cancel`, the execution was recorded cancelled %s after it",
		took.Round(time.Millisecond), time.Since(cancelAt).Round(time.Millisecond))
	history := func(n *node) string {
		out := cli(t, "flow", "history", stuck, "--addr", n.addr)
		if !strings.Contains(out, "state cancelled (integration test)") || !strings.Contains(out, "call") || strings.Contains(out, "after") {
			t.Errorf("history of the cancelled execution on %s:\n%s", n.id, out)
		}
		return out
	}
	// Every step's write has arrived (a step's record is written just
	// after it, off its path).
	waitUntil(t, 10*time.Second, "b's history has both steps", func() bool {
		st, err := flowStatus(bn, stuck)
		return err == nil && len(st.Steps) == 2
	})
	before := history(bn)
	t.Logf("history before the restart:\n%s", before)

	// Every node restarts, with an empty data dir: the records come back
	// from the broker.
	a.term(20 * time.Second)
	bn.term(20 * time.Second)
	a, bn = start("a"), start("b")
	waitUntil(t, 30*time.Second, "a and b answer again", func() bool { return a.health() == http.StatusOK && bn.health() == http.StatusOK })
	for _, n := range []*node{a, bn} {
		var seen string
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			s1, err1 := flowStatus(n, stuck)
			s2, err2 := flowStatus(n, quick)
			if err1 == nil && err2 == nil && s1.State == flows.StateCancelled && s2.State == flows.StateCompleted {
				break
			}
			seen = fmt.Sprintf("cancelled one: %+v (err %v); quick one: %+v (err %v)", s1, err1, s2, err2)
			if time.Now().After(deadline) {
				t.Fatalf("%s does not have the records back within 10s; last seen: %s", n.id, seen)
			}
		}
		if after := history(n); after != before {
			t.Errorf("history on %s after the restart differs:\n%s\nbefore:\n%s", n.id, after, before)
		}
		out := cli(t, "flow", "list", "--status", "cancelled", "--flow", "slowcall", "--since", "10m", "--addr", n.addr, "-o", "json")
		var doc struct{ Executions []flows.Status }
		if err := json.Unmarshal([]byte(out), &doc); err != nil || len(doc.Executions) != 1 || doc.Executions[0].Execution != stuck {
			t.Errorf("list --status cancelled on %s: %v\n%s", n.id, err, out)
		}
	}
	if served.Load() != 1 {
		t.Errorf("the service served %d quick calls, want 1", served.Load())
	}
	t.Logf("done in %s", time.Since(began).Round(time.Millisecond))
}

// submitWithInput submits flow with a JSON input on n (retrying a 503
// while its engine starts) and returns the execution ID.
func submitWithInput(t *testing.T, n *node, flow, input string) string {
	t.Helper()
	var id string
	waitUntil(t, 15*time.Second, "submit "+flow+" on "+n.id, func() bool {
		resp, err := client.Post(n.addr+"/api/flows", "application/json", strings.NewReader(fmt.Sprintf(`{"flow": %q, "input": %s}`, flow, input)))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var r struct{ ID string }
		if resp.StatusCode != http.StatusAccepted || json.NewDecoder(resp.Body).Decode(&r) != nil {
			return false
		}
		id = r.ID
		return true
	})
	return id
}
