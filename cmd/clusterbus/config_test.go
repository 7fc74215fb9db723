package main

import (
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// clearConfigEnv unsets this process's CLUSTERBUS_* variables for the
// test (CI sets some for the test suite; a node would reject them).
func clearConfigEnv(t *testing.T) {
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, "CLUSTERBUS_") {
			t.Setenv(name, "") // restored after the test
			os.Unsetenv(name)
		}
	}
}

func TestNodeConfigPrecedenceFlagsOverEnvOverFile(t *testing.T) {
	clearConfigEnv(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "node.yaml")
	yaml := `
cluster: from-file
node-id: file-id
http: 127.0.0.1:1111
heartbeat-interval: 200ms
failure-timeout: 1s
split-brain: keep-oldest
flows:
  dir: /from/file
  concurrency: 7
  max-attempts: 9
`
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CLUSTERBUS_CLUSTER", "from-env")
	t.Setenv("CLUSTERBUS_NODE_ID", "env-id")
	t.Setenv("CLUSTERBUS_FLOWS_DIR", "/from/env")
	t.Setenv("CLUSTERBUS_FLOWS_RESULTS_QUEUE", "done")
	t.Setenv("CLUSTERBUS_FLOWS_LEASE", "45s")
	t.Setenv("CLUSTERBUS_FLOWS_ENABLED", "false")

	fs := pflag.NewFlagSet("node", pflag.ContinueOnError)
	addNodeFlags(fs)
	if err := fs.Parse([]string{"--config", file, "--cluster", "from-flag"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadNodeConfig(fs)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"cluster (flag beats env and file)", cfg.Cluster, "from-flag"},
		{"node-id (env beats file)", cfg.NodeID, "env-id"},
		{"http (file beats default)", cfg.HTTP, "127.0.0.1:1111"},
		{"heartbeat-interval (file)", cfg.HeartbeatInterval, 200 * time.Millisecond},
		{"split-brain (file)", cfg.SplitBrain, "keep-oldest"},
		{"flows.dir (env beats file)", cfg.Flows.Dir, "/from/env"},
		{"flows.lease (env)", cfg.Flows.Lease, 45 * time.Second},
		{"flows.concurrency (file)", cfg.Flows.Concurrency, 7},
		{"flows.max-attempts (file)", cfg.Flows.MaxAttempts, 9},
		{"flows.queue (default: empty, the node uses CLUSTER-flows)", cfg.Flows.Queue, ""},
		{"flows.results-queue (env)", cfg.Flows.ResultsQueue, "done"},
		{"flows.enabled (env; default true)", cfg.Flows.Enabled, false},
		{"clock-skew-threshold (default)", cfg.ClockSkewThreshold, 2 * time.Second},
		{"embedded-sync (default: fsync, like clusterbus broker)", cfg.EmbeddedSync, true},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, c.got, c.want)
		}
	}
	if _, err := cfg.busConfig(); err != nil {
		t.Errorf("busConfig: %v", err)
	}
}

func TestNodeConfigRejectsBadTimingNamingTheFields(t *testing.T) {
	clearConfigEnv(t)
	fs := pflag.NewFlagSet("node", pflag.ContinueOnError)
	addNodeFlags(fs)
	if err := fs.Parse([]string{"--heartbeat-interval", "1s", "--failure-timeout", "1500ms"}); err != nil {
		t.Fatal(err)
	}
	_, err := loadNodeConfig(fs)
	if err == nil || !strings.Contains(err.Error(), "failure-timeout (1.5s) must be more than 2 × heartbeat-interval (1s)") {
		t.Fatalf("loadNodeConfig() = %v", err)
	}
	cfg := defaultNodeConfig()
	cfg.SplitBrain = "majority"
	if _, err := cfg.busConfig(); err == nil || !strings.Contains(err.Error(), "keep-majority, keep-oldest, off or static-quorum:N") {
		t.Fatalf("bad split-brain: %v", err)
	}
	cfg.SplitBrain = "static-quorum:2"
	cfg.FailureTimeout = 3 * time.Second
	b, err := cfg.busConfig()
	if err != nil || b.Quorum != 2 {
		t.Fatalf("static-quorum:2 -> %+v, %v", b, err)
	}
}

func TestEnvToKey(t *testing.T) {
	for in, want := range map[string]string{
		"CLUSTERBUS_NODE_ID":              "node-id",
		"CLUSTERBUS_BROKER":               "broker",
		"CLUSTERBUS_FLOWS_MAX_ATTEMPTS":   "flows.max-attempts",
		"CLUSTERBUS_HEARTBEAT_INTERVAL":   "heartbeat-interval",
		"CLUSTERBUS_FLOWS_DIR":            "flows.dir",
		"CLUSTERBUS_CLOCK_SKEW_THRESHOLD": "clock-skew-threshold",
	} {
		if got := envToKey(in); got != want {
			t.Errorf("envToKey(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestNewLoggerFormats(t *testing.T) {
	var sb strings.Builder
	l, err := newLogger(&sb, "json", "info")
	if err != nil {
		t.Fatal(err)
	}
	l.With("node", "n1").Info("hello")
	if !strings.Contains(sb.String(), `"node":"n1"`) {
		t.Fatalf("json log line: %s", sb.String())
	}
	if _, err := newLogger(&sb, "xml", "info"); err == nil {
		t.Fatal("log-format xml accepted")
	}
}

// The node's JSON logger (newLogger with log-format json, as runNode builds
// it) writes durations as text, "1.5s", like the text format, not as
// nanoseconds: at top level, inside a group and in With attributes.
func TestJSONLoggerWritesDurationsAsText(t *testing.T) {
	var sb strings.Builder
	l, err := newLogger(&sb, "json", "info")
	if err != nil {
		t.Fatal(err)
	}
	l.With("lease", 2*time.Minute).Info("tick", "took", 1500*time.Millisecond, slog.Group("sync", "wait", 250*time.Millisecond))
	var line map[string]any
	if err := json.Unmarshal([]byte(sb.String()), &line); err != nil {
		t.Fatalf("log line is not one JSON object: %v: %s", err, sb.String())
	}
	group, _ := line["sync"].(map[string]any)
	for _, c := range []struct {
		name string
		got  any
		want string
	}{
		{"took", line["took"], "1.5s"},
		{"lease", line["lease"], "2m0s"},
		{"sync.wait", group["wait"], "250ms"},
	} {
		if s, ok := c.got.(string); !ok || s != c.want {
			t.Errorf("%s logged as %#v (%T), want the string %q; line: %s", c.name, c.got, c.got, c.want, sb.String())
		}
	}
}

func TestEmbeddedSyncCanBeTurnedOff(t *testing.T) {
	clearConfigEnv(t)
	t.Setenv("CLUSTERBUS_EMBEDDED_SYNC", "false")
	fs := pflag.NewFlagSet("node", pflag.ContinueOnError)
	addNodeFlags(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadNodeConfig(fs)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.EmbeddedSync {
		t.Error("CLUSTERBUS_EMBEDDED_SYNC=false left fsync on")
	}
}

func TestNodeConfigRejectsUnknownKeysWithTheNearestName(t *testing.T) {
	clearConfigEnv(t)
	file := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(file, []byte("failure_timeout: 2s\nheartbeat-interval: 500\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CLUSTERBUS_SPLIT_BRIAN", "off")
	fs := pflag.NewFlagSet("node", pflag.ContinueOnError)
	addNodeFlags(fs)
	if err := fs.Parse([]string{"--config", file}); err != nil {
		t.Fatal(err)
	}
	_, err := loadNodeConfig(fs)
	for _, want := range []string{
		`unknown key "failure_timeout"; did you mean "failure-timeout"?`,
		`heartbeat-interval: 500 has no unit`,
		`CLUSTERBUS_SPLIT_BRIAN is not a clusterbus setting; did you mean "CLUSTERBUS_SPLIT_BRAIN"?`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("loadNodeConfig: %v; want %q", err, want)
		}
	}
}
