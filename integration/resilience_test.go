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

// servesAsLead reports whether n answers health 200 and names itself the
// lead.
func (n *node) servesAsLead() bool {
	c, err := n.cluster()
	if err != nil || c.Lead == "" || c.Lead != c.Local {
		return false
	}
	return n.health() == http.StatusOK
}

// watch polls check every 50ms in the background until the returned stop
// is called; stop returns the first violation check reported, if any.
func watch(check func() string) (stop func() string) {
	done := make(chan struct{})
	var first string
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if v := check(); v != "" && first == "" {
				first = time.Now().Format("15:04:05.000") + ": " + v
			}
		}
	}()
	return func() string {
		close(done)
		<-finished
		return first
	}
}

// TestCrashLoopDoesNotFence: a healthy two-node cluster keeps serving
// (health 200 at every poll, lead unchanged) while a third node crash-loops:
// first three starts with new IDs each killed while starting (they never
// become active, so they count toward no quorum), then a node without
// --node-id that keeps its ID in its data dir, killed and restarted
// several times: each restart replaces its previous incarnation at once.
func TestCrashLoopDoesNotFence(t *testing.T) {
	needBinary(t)
	brokerURL := startNATSBroker(t)
	cluster := fmt.Sprintf("it-crashloop-%d", time.Now().UnixNano()%1e6)
	n1 := startNode(t, brokerURL, cluster, "n1")
	n2 := startNode(t, brokerURL, cluster, "n2")
	waitUntil(t, 30*time.Second, "n1 and n2 agree on n1", func() bool {
		return n1.sees("n1", "n1", "n2") && n2.sees("n1", "n1", "n2")
	})
	stop := watch(func() string {
		for _, n := range []*node{n1, n2} {
			if code := n.health(); code != http.StatusOK {
				_, body := n.get("/ha/health")
				return fmt.Sprintf("%s health %d: %s", n.id, code, strings.TrimSpace(body))
			}
		}
		if c, err := n1.cluster(); err != nil || c.Lead != "n1" {
			return fmt.Sprintf("n1 sees lead %q (%v)", c.Lead, err)
		}
		return ""
	})
	listed := func(id string) bool {
		c, err := n1.cluster()
		if err != nil {
			return false
		}
		for _, m := range c.Nodes {
			if m.ID == id && m.State != "unreachable" {
				return true
			}
		}
		return false
	}
	// Crash loop with a new ID per start, each killed while starting.
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("loop%d", i)
		p := startNodeProc(t, brokerURL, cluster, id)
		waitUntil(t, 30*time.Second, "n1 hears "+id, func() bool { return listed(id) })
		p.kill()
		t.Logf("%s killed while starting", id)
	}
	// A node with its ID in its data dir: it becomes active, then is
	// killed and restarted, three times.
	dataDir := filepath.Join(t.TempDir(), "crasher")
	var id string
	for i := 1; i <= 3; i++ {
		p := startNodeProc(t, brokerURL, cluster, "", "--data-dir", dataDir)
		waitUntil(t, 30*time.Second, "the data-dir node serves", func() bool {
			c, err := p.cluster()
			if err != nil || p.health() != http.StatusOK {
				return false
			}
			if id != "" && c.Local != id {
				t.Fatalf("restart %d took node ID %q, was %q: the ID in the data dir was not kept", i, c.Local, id)
			}
			id = c.Local
			return true
		})
		p.kill()
		t.Logf("data-dir node %s killed after it served (start %d)", id, i)
	}
	p := startNodeProc(t, brokerURL, cluster, "", "--data-dir", dataDir)
	waitUntil(t, 30*time.Second, "all three agree on n1", func() bool {
		return n1.sees("n1", "n1", "n2", id) && n2.sees("n1", "n1", "n2", id) && p.sees("n1", "n1", "n2", id)
	})
	if v := stop(); v != "" {
		t.Fatalf("the healthy cluster stopped serving during the crash loop: %s", v)
	}
	if !strings.Contains(n1.log(), "member restarted") {
		t.Errorf("n1's log has no \"member restarted\": restarts did not replace the previous incarnation")
	}
}

// TestOutageLeadStaysOldest restarts the broker under three nodes: no node
// serves as lead during the outage, no younger node leads at any poll
// while the nodes reconnect (in whatever order), and the oldest leads
// again after it.
func TestOutageLeadStaysOldest(t *testing.T) {
	needBinary(t)
	port := freePort(t)
	dataDir := filepath.Join(t.TempDir(), "broker")
	startBroker := func() *proc {
		p := startProc(t, "broker", "broker", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--data-dir", dataDir, "--sync=false")
		waitUntil(t, 30*time.Second, "the broker listens", func() bool {
			if !p.running() {
				t.Fatalf("broker exited: %v\n%s", p.err, p.log())
			}
			return strings.Contains(p.log(), "listening on")
		})
		return p
	}
	b := startBroker()
	brokerURL := fmt.Sprintf("nats://127.0.0.1:%d", port)
	cluster := fmt.Sprintf("it-outage-%d", time.Now().UnixNano()%1e6)
	n1 := startNode(t, brokerURL, cluster, "n1")
	n2 := startNode(t, brokerURL, cluster, "n2")
	n3 := startNode(t, brokerURL, cluster, "n3")
	all := []*node{n1, n2, n3}
	waitUntil(t, 30*time.Second, "3 nodes agree on n1", func() bool {
		return n1.sees("n1", "n1", "n2", "n3") && n2.sees("n1", "n1", "n2", "n3") && n3.sees("n1", "n1", "n2", "n3")
	})
	stop := watch(func() string {
		var leads []string
		for _, n := range all {
			if n.servesAsLead() {
				leads = append(leads, n.id)
			}
		}
		if len(leads) > 1 || (len(leads) == 1 && leads[0] != "n1") {
			return fmt.Sprintf("serving as lead: %v", leads)
		}
		return ""
	})
	b.kill()
	outage := time.Now()
	waitUntil(t, failureTimeout+margin, "every node 503 without its broker", func() bool {
		return n1.health() == http.StatusServiceUnavailable && n2.health() == http.StatusServiceUnavailable &&
			n3.health() == http.StatusServiceUnavailable
	})
	// Long enough that the clients' reconnect backoff has grown to seconds:
	// they come back spread out, the oldest possibly last.
	time.Sleep(4 * time.Second)
	restarted := time.Now()
	startBroker()
	took := waitUntil(t, 90*time.Second, "all agree on n1 after the broker restart", func() bool {
		return n1.sees("n1", "n1", "n2", "n3") && n2.sees("n1", "n1", "n2", "n3") && n3.sees("n1", "n1", "n2", "n3")
	})
	t.Logf("all agree on n1 %s after the broker restarted (outage %s)", took.Round(time.Millisecond), restarted.Sub(outage).Round(time.Millisecond))
	if v := stop(); v != "" {
		t.Fatalf("a younger node served as lead around the outage: %s", v)
	}
}
