package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/flows"
)

// deployFlowV1 waits long enough for v2 to be deployed while its
// executions are parked in the wait step.
const (
	deployFlowV1 = "flow: relay\nsteps:\n  - name: hello\n    set: {greeting: \"'v1'\"}\n  - name: pause\n    wait: 8s\n  - name: done\n    set: {finished: \"true\"}\n"
	deployFlowV2 = "flow: relay\nsteps:\n  - name: hello\n    set: {greeting: \"'v2'\"}\n  - name: pause\n    wait: 200ms\n  - name: done\n    set: {finished: \"true\"}\n"
)

// TestDeployedFlowsAcrossNodes: a flow deployed with `clusterbus flow
// deploy` on node A runs on node B, which never had the file; v2 deployed
// while v1 executions wait: those end on v1, new ones run v2; after a
// restart of every node (same data dirs) the flow and the finished
// executions' records are there and it runs; a node that joins with an
// empty data dir gets them from its peers; rollback and undeploy through
// the CLI; then a restart of every node with empty data dirs: on NATS
// (embedded-NATS `clusterbus broker`, JetStream retains the catalogs) the
// flow and the records come back from the broker, on RabbitMQ (retains
// nothing: the catalogs live in the nodes' data dirs and travel between
// nodes on join) they are gone.
func TestDeployedFlowsAcrossNodes(t *testing.T) {
	needBinary(t)
	for _, kind := range []string{"nats", "rabbitmq"} {
		t.Run(kind, func(t *testing.T) { testDeployedFlowsAcrossNodes(t, startTestBroker(t, kind)) })
	}
}

func testDeployedFlowsAcrossNodes(t *testing.T, b testBroker) {
	began := time.Now()
	cluster := fmt.Sprintf("it-deploy-%d", time.Now().UnixNano()%1e8)
	dirs := map[string]string{"a": t.TempDir(), "b": t.TempDir()}
	start := func(id string) *node {
		return startNode(t, b.url, cluster, id, "--data-dir", dirs[id])
	}
	a, bn := start("a"), start("b")
	waitUntil(t, 30*time.Second, "a and b serve", func() bool { return a.health() == http.StatusOK && bn.health() == http.StatusOK })

	files := t.TempDir()
	v1, v2 := filepath.Join(files, "relay-v1.yaml"), filepath.Join(files, "relay-v2.yaml")
	os.WriteFile(v1, []byte(deployFlowV1), 0o644)
	os.WriteFile(v2, []byte(deployFlowV2), 0o644)

	out := cli(t, "flow", "deploy", v1, "--addr", a.addr, "-o", "json")
	if !strings.Contains(out, `"version": 1`) || !strings.Contains(out, `"created": true`) {
		t.Fatalf("deploy v1: %s", out)
	}
	took := waitUntil(t, 10*time.Second, "b has relay v1 as head", func() bool { return headOf(bn, "relay") == 1 })
	t.Logf("v1 deployed on a; b had it %s later", took.Round(time.Millisecond))

	var olds, news []string
	for range 3 {
		olds = append(olds, submitDeployed(t, bn, "relay"))
	}
	waitUntil(t, 15*time.Second, "the v1 executions reach their wait", func() bool {
		for _, id := range olds {
			if st, err := flowStatus(bn, id); err != nil || st.Seq < 1 {
				return false
			}
		}
		return true
	})
	out = cli(t, "flow", "deploy", v2, "--addr", a.addr)
	if !strings.Contains(out, "relay") || !strings.Contains(out, "true") {
		t.Fatalf("deploy v2: %s", out)
	}
	waitUntil(t, 10*time.Second, "b has relay v2 as head", func() bool { return headOf(bn, "relay") == 2 })
	for _, id := range olds {
		if st, err := flowStatus(bn, id); err != nil || st.State != flows.StateRunning {
			t.Fatalf("v1 execution %s is not waiting any more when v2 is the head: %+v %v (make its wait longer)", id, st, err)
		}
	}
	for range 3 {
		news = append(news, submitDeployed(t, bn, "relay"))
	}
	check := func(ids []string, version int, greeting string) {
		for _, id := range ids {
			var st flows.Status
			waitUntil(t, 30*time.Second, "execution "+id+" completes", func() bool {
				var err error
				st, err = flowStatus(a, id)
				return err == nil && st.State == flows.StateCompleted
			})
			if st.Version != version || st.Output["greeting"] != greeting {
				t.Errorf("execution %s ran version %d (greeting %v); want %d (%s)", id, st.Version, st.Output["greeting"], version, greeting)
			}
		}
	}
	check(olds, 1, "v1")
	check(news, 2, "v2")
	out = cli(t, "flow", "versions", "relay", "--addr", bn.addr)
	t.Logf("versions on b:\n%s", out)
	if !strings.Contains(out, "head 2") {
		t.Fatalf("versions: %s", out)
	}

	t.Logf("%s: v1 and v2 executions checked at %s", b.kind, time.Since(began).Round(time.Millisecond))
	// Restart every node: the definitions come back from the data dirs
	// (and, on NATS, from the stream the catalog retains them in).
	a.term(20 * time.Second)
	bn.term(20 * time.Second)
	a, bn = start("a"), start("b")
	waitUntil(t, 30*time.Second, "a and b serve again", func() bool { return a.health() == http.StatusOK && bn.health() == http.StatusOK })
	for _, n := range []*node{a, bn} {
		if h := headOf(n, "relay"); h != 2 {
			t.Fatalf("after the restart %s has head %d, want 2", n.id, h)
		}
	}
	// The finished executions' records came back too (data dirs; on NATS
	// also the broker's retained copy).
	for _, id := range []string{olds[0], news[0]} {
		st, err := flowStatus(bn, id)
		if err != nil || st.State != flows.StateCompleted {
			t.Errorf("after the restart execution %s: %+v %v; want its completed record", id, st, err)
		}
	}
	check([]string{submitDeployed(t, bn, "relay")}, 2, "v2")
	t.Logf("%s: restarted and checked at %s", b.kind, time.Since(began).Round(time.Millisecond))
	// A node with an empty data dir that never had the file gets the
	// definitions from its peers and runs them.
	dirs["c"] = t.TempDir()
	c := start("c")
	waitUntil(t, 30*time.Second, "c serves", func() bool { return c.health() == http.StatusOK })
	waitUntil(t, 10*time.Second, "c has relay v2", func() bool { return headOf(c, "relay") == 2 })
	out = cli(t, "flow", "rollback", "relay", "1", "--addr", c.addr)
	if !strings.Contains(out, "head 1") {
		t.Fatalf("rollback: %s", out)
	}
	waitUntil(t, 10*time.Second, "a sees the rollback", func() bool { return headOf(a, "relay") == 1 })
	out = cli(t, "flow", "undeploy", "relay", "--addr", bn.addr)
	if !strings.Contains(out, "none (undeployed)") {
		t.Fatalf("undeploy: %s", out)
	}
	waitUntil(t, 10*time.Second, "a sees the undeploy", func() bool { return headOf(a, "relay") == 0 })

	// Restart every node with an empty data dir: what survives is what the
	// broker retains (NATS: JetStream), nothing on a broker that keeps no
	// catalog (RabbitMQ), as package catalog documents.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	br, err := adapters.Open(ctx, b.url)
	if err != nil {
		t.Fatal(err)
	}
	_, retains := adapters.RetainerOf(br)
	br.Close()
	t.Logf("%s: joiner, rollback, undeploy checked at %s", b.kind, time.Since(began).Round(time.Millisecond))
	for _, n := range []*node{a, bn, c} {
		n.term(20 * time.Second)
	}
	t.Logf("%s: every node stopped at %s", b.kind, time.Since(began).Round(time.Millisecond))
	for id := range dirs {
		dirs[id] = t.TempDir()
	}
	a, bn = start("a"), start("b")
	waitUntil(t, 30*time.Second, "a and b serve with empty data dirs", func() bool { return a.health() == http.StatusOK && bn.health() == http.StatusOK })
	if retains {
		waitUntil(t, 10*time.Second, "b has relay, undeployed, from the broker", func() bool { return headOf(bn, "relay") == 0 })
		out = cli(t, "flow", "rollback", "relay", "2", "--addr", bn.addr)
		check([]string{submitDeployed(t, a, "relay")}, 2, "v2")
		if st, err := flowStatus(a, olds[0]); err != nil || st.State != flows.StateCompleted || st.Version != 1 {
			t.Errorf("with empty data dirs execution %s: %+v %v; want its completed record from the broker", olds[0], st, err)
		}
		t.Logf("%s retains: the definitions and the execution records came back from the broker alone", b.kind)
	} else {
		time.Sleep(2 * time.Second) // time for a sync between a and b
		if h := headOf(bn, "relay"); h != -1 {
			t.Errorf("%s keeps no catalog, yet b knows relay (head %d) with every data dir empty", b.kind, h)
		}
		t.Logf("%s retains nothing: with every data dir gone the definitions are gone too (as documented)", b.kind)
	}
	t.Logf("%s: done in %s", b.kind, time.Since(began).Round(time.Millisecond))
}

// headOf is flow's head version on n (0 if none, -1 if n does not know it).
func headOf(n *node, flow string) int {
	code, body := n.get("/api/flow-definitions/" + flow)
	var fv flows.FlowVersions
	if code != http.StatusOK || json.Unmarshal([]byte(body), &fv) != nil {
		return -1
	}
	return fv.Head
}

// cli runs the clusterbus CLI and returns its output; it fails the test if
// the command fails.
func cli(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(binPath, args...)
	cmd.Env = nodeEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("clusterbus %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// submitDeployed submits flow on n, retrying while n answers 503 (its
// engine starts once the first flow is deployed; clients retry a 503).
func submitDeployed(t *testing.T, n *node, flow string) string {
	t.Helper()
	var id string
	waitUntil(t, 15*time.Second, "submit "+flow+" on "+n.id, func() bool {
		resp, err := client.Post(n.addr+"/api/flows", "application/json", strings.NewReader(fmt.Sprintf(`{"flow": %q}`, flow)))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var r struct{ ID string }
		if resp.StatusCode == http.StatusServiceUnavailable {
			return false
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("submit %s on %s: %s %v", flow, n.id, resp.Status, err)
		}
		id = r.ID
		return true
	})
	return id
}
