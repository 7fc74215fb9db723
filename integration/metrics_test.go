package integration

import (
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestLiveNodeMetricsHaveEveryName scrapes a running node before any work:
// every series the dashboards rely on is there from the start, at zero.
func TestLiveNodeMetricsHaveEveryName(t *testing.T) {
	needBinary(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "greet.yaml"), []byte("flow: greet\nversion: 1\nsteps:\n  - name: hello\n    wait: 10ms\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, startNATSBroker(t), "metrics", "m1", "--flows.dir", dir)
	var body string
	want := []string{
		`clusterbus_build_info{go_version="go`,
		`clusterbus_broker_connected 1`,
		`clusterbus_members{state="active"} 1`,
		`clusterbus_members{state="unreachable"} 0`,
		`clusterbus_flow_executions_total{flow="greet",outcome="completed"} 0`,
		`clusterbus_flow_executions_total{flow="greet",outcome="failed"} 0`,
		`clusterbus_flow_executions_total{flow="greet",outcome="dead_lettered"} 0`,
		`clusterbus_flow_step_duration_seconds_count{flow="greet",step="hello"} 0`,
		`clusterbus_flow_executions_running{flow="greet"} 0`,
		`clusterbus_queue_depth{queue="metrics-flows"} 0`,
		`clusterbus_queue_dead_letters{queue="metrics-flows"} 0`,
		`clusterbus_workqueue_lease_renewals_total{queue="metrics-flows"} 0`,
		`clusterbus_workqueue_lease_losses_total{queue="metrics-flows"} 0`,
		`clusterbus_heartbeats_rejected_total{reason="stale"} 0`,
		`clusterbus_heartbeats_rejected_total{reason="malformed"} 0`,
		`clusterbus_subscription_gaps_total 0`,
		`clusterbus_lead_changes_total`,
	}
	waitUntil(t, 30*time.Second, "every series on /metrics", func() bool {
		resp, err := client.Get(n.addr + "/metrics")
		if err != nil {
			return false
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		for _, w := range want {
			if !strings.Contains(body, w) {
				return false
			}
		}
		return true
	})
	var names []string
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "# TYPE clusterbus_") {
			names = append(names, strings.TrimPrefix(line, "# TYPE "))
		}
	}
	t.Logf("clusterbus metrics on a live node:\n%s", strings.Join(names, "\n"))

	// The Grafana dashboard asks only for series a node has.
	dash, err := os.ReadFile(filepath.Join("..", "deploy", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`clusterbus_[a-z_]+`).FindAllString(string(dash), -1) {
		base := strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_count")
		if !strings.Contains(body, "# TYPE "+base+" ") {
			t.Errorf("deploy/grafana-dashboard.json uses %s, which the node does not export", m)
		}
	}
}
