package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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

// TestConfigTyposRejected runs the binary with misspelt and invalid
// settings: each exits 2 before it connects (its broker address does not
// answer, so a node that got as far as joining would wait instead), and
// says which key is wrong with the nearest valid name, in the words the
// user typed (never a Go field name). config check, config print and flow
// lint give the same verdicts without running a node.
func TestConfigTyposRejected(t *testing.T) {
	needBinary(t)
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	badFlows := filepath.Join(dir, "badflows")
	if err := os.Mkdir(badFlows, 0o755); err != nil {
		t.Fatal(err)
	}
	write("badflows/broken.yaml", "flow: broken\nversion: 1\nsteps:\n  - name: a\n    set: {x: \"input.(\"}\n")
	deadBroker := fmt.Sprintf("nats://127.0.0.1:%d", freePort(t))
	cases := []struct {
		name string
		env  []string
		args []string
		want []string // every one must appear in the output
	}{
		{"yaml underscore key", nil, []string{"--config", write("a.yaml", "failure_timeout: 2s\n")},
			[]string{`unknown key "failure_timeout"`, `did you mean "failure-timeout"`}},
		{"yaml misspelt key", nil, []string{"--config", write("b.yaml", "split-brian: keep-oldest\n")},
			[]string{`unknown key "split-brian"`, `did you mean "split-brain"`}},
		{"yaml nested misspelt key", nil, []string{"--config", write("c.yaml", "flows:\n  concurency: 2\n")},
			[]string{`unknown key "flows.concurency"`, `did you mean "flows.concurrency"`}},
		{"duration without unit", nil, []string{"--config", write("d.yaml", "heartbeat-interval: 500\n")},
			[]string{"heartbeat-interval: 500 has no unit"}},
		{"misspelt env", []string{"CLUSTERBUS_FAILURE_TIMOUT=2s"}, nil,
			[]string{"CLUSTERBUS_FAILURE_TIMOUT is not a clusterbus setting", `did you mean "CLUSTERBUS_FAILURE_TIMEOUT"`}},
		{"env duration without unit", []string{"CLUSTERBUS_FAILURE_TIMEOUT=1500"}, nil,
			[]string{"CLUSTERBUS_FAILURE_TIMEOUT: 1500 has no unit"}},
		{"timing named by keys", nil, []string{"--heartbeat-interval", "1s", "--failure-timeout", "1500ms"},
			[]string{"failure-timeout (1.5s) must be more than 2 × heartbeat-interval (1s)"}},
		{"max-attempts 0", nil, []string{"--flows.max-attempts", "0"},
			[]string{"flows.max-attempts (0): want at least 1"}},
		{"negative drain timeout", nil, []string{"--drain-timeout", "-1s"},
			[]string{"drain-timeout (-1s): want more than 0"}},
		{"bad split-brain", nil, []string{"--split-brain", "majority"},
			[]string{`split-brain "majority": want keep-majority, keep-oldest, off or static-quorum:N`}},
		{"broken flow definitions", nil, []string{"--flows.dir", badFlows},
			[]string{"broken.yaml"}},
	}
	goFields := []string{"FailureTimeout", "HeartbeatInterval", "MaxAttempts", "SplitBrain", "DrainTimeout"}
	run := func(t *testing.T, env []string, args ...string) (int, string) {
		t.Helper()
		cmd := exec.Command(binPath, args...)
		cmd.Env = nodeEnv(env...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		switch {
		case err == nil:
			return 0, string(out)
		case errors.As(err, &ee):
			return ee.ExitCode(), string(out)
		}
		t.Fatalf("run %v: %v", args, err)
		return -1, ""
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, sub := range []string{"node", "config check"} {
				args := append(strings.Fields(sub), "--broker", deadBroker, "--http", "127.0.0.1:0",
					"--data-dir", filepath.Join(dir, "data"))
				args = append(args, c.args...)
				start := time.Now()
				code, out := run(t, c.env, args...)
				if code != 2 {
					t.Fatalf("clusterbus %s: exit %d, want 2\n%s", sub, code, out)
				}
				for _, w := range c.want {
					if !strings.Contains(out, w) {
						t.Errorf("clusterbus %s: output lacks %q:\n%s", sub, w, out)
					}
				}
				for _, f := range goFields {
					if strings.Contains(out, f) {
						t.Errorf("clusterbus %s: output names the Go field %s:\n%s", sub, f, out)
					}
				}
				if strings.Contains(out, "waiting for broker") || strings.Contains(out, "http listening") {
					t.Errorf("clusterbus %s: got as far as starting before the config error:\n%s", sub, out)
				}
				t.Logf("clusterbus %s: exit 2 in %s: %s", sub, time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
			}
		})
	}

	t.Run("check and print a good config", func(t *testing.T) {
		flowsDir, _ := filepath.Abs("../examples/flows")
		file := write("good.yaml", "cluster: shop\nfailure-timeout: 2s\nflows:\n  dir: "+flowsDir+"\n")
		env := []string{"CLUSTERBUS_CLUSTER_KEY=top-secret-key", "CLUSTERBUS_HEARTBEAT_INTERVAL=400ms"}
		if code, out := run(t, env, "config", "check", "--config", file); code != 0 || !strings.Contains(out, "config ok") {
			t.Fatalf("config check of a good config: exit %d\n%s", code, out)
		}
		code, out := run(t, env, "config", "print", "--config", file, "--broker", "nats://u:pw-secret@127.0.0.1:4222")
		if code != 0 {
			t.Fatalf("config print: exit %d\n%s", code, out)
		}
		for _, re := range []string{
			`(?m)^cluster\s+shop\s+file ` + regexp.QuoteMeta(file) + `$`,
			`(?m)^failure-timeout\s+2s\s+file `,
			`(?m)^heartbeat-interval\s+400ms\s+env CLUSTERBUS_HEARTBEAT_INTERVAL$`,
			`(?m)^cluster-key\s+<redacted>\s+env CLUSTERBUS_CLUSTER_KEY$`,
			`(?m)^broker\s+\S+\s+flag --broker$`,
			`(?m)^drain-timeout\s+30s\s+default$`,
		} {
			if !regexp.MustCompile(re).MatchString(out) {
				t.Errorf("config print lacks %s:\n%s", re, out)
			}
		}
		for _, secret := range []string{"top-secret-key", "pw-secret"} {
			if strings.Contains(out, secret) {
				t.Errorf("config print shows the secret %q:\n%s", secret, out)
			}
		}
	})

	t.Run("flow lint", func(t *testing.T) {
		if code, out := run(t, nil, "flow", "lint", "../examples/flows"); code != 0 {
			t.Fatalf("flow lint examples/flows: exit %d\n%s", code, out)
		}
		code, out := run(t, nil, "flow", "lint", badFlows)
		if code != 2 || !strings.Contains(out, "broken.yaml") {
			t.Fatalf("flow lint of a broken flow: exit %d, want 2 naming the file\n%s", code, out)
		}
	})
}
