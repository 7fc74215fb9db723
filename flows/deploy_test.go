package flows_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/catalog"
	"github.com/clusterbus/clusterbus/flows"
)

// deployNode is an engine with a definitions catalog, as a daemon runs it.
func deployNode(t *testing.T, b adapters.Broker, cfg flows.Config, node string) *flows.Engine {
	t.Helper()
	c, err := catalog.Open(b, catalog.Config{Cluster: "t", NodeID: node, Name: flows.DefinitionsCatalog,
		FirstWriteWins: flows.ImmutableDefinition, Logger: logger(t).With("node", node)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	e, err := flows.New(b, cfg, flows.Options{NodeID: node, Logger: logger(t).With("node", node), Definitions: c})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		e.Stop(ctx)
	})
	return e
}

const greetV1 = `flow: greet
steps:
  - name: hello
    set: {greeting: "'v1'"}
  - name: pause
    wait: 700ms
  - name: done
    set: {finished: "true"}
`

const greetV2 = `flow: greet
steps:
  - name: hello
    set: {greeting: "'v2'"}
  - name: pause
    wait: 10ms
  - name: done
    set: {finished: "true"}
`

func deploy(t *testing.T, e *flows.Engine, src string) flows.Deployment {
	t.Helper()
	ds, err := e.Deploy(context.Background(), []byte(src))
	if err != nil || len(ds) != 1 {
		t.Fatalf("deploy: %v %v", ds, err)
	}
	return ds[0]
}

// TestDeployedFlowRunsOnNodesThatNeverHadIt: a flow deployed on node a
// runs when submitted on node b (compiled from the catalog, no restart); a
// second version deployed while executions of the first wait: they end on
// the first, new ones run the second.
func TestDeployedFlowRunsOnNodesThatNeverHadIt(t *testing.T) {
	srv := mem.NewServer()
	t.Cleanup(srv.Close)
	cfg := testConfig(t)
	a := deployNode(t, srv.Client(), cfg, "a")
	b := deployNode(t, srv.Client(), cfg, "b")
	if d := deploy(t, a, greetV1); d.Version != 1 || !d.Created || !d.Head {
		t.Fatalf("first deploy: %+v", d)
	}
	waitFor(t, "b compiles greet v1", func() bool {
		fv, err := b.Versions("greet")
		return err == nil && fv.Head == 1
	})
	old, err := b.Submit(context.Background(), "greet", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the v1 execution waits", func() bool {
		s, err := b.Status(context.Background(), old)
		return err == nil && s.Step == "pause" || s.Seq >= 1
	})
	if d := deploy(t, a, greetV2); d.Version != 2 || !d.Created || !d.Head {
		t.Fatalf("second deploy: %+v", d)
	}
	waitFor(t, "b's head is v2", func() bool {
		fv, err := b.Versions("greet")
		return err == nil && fv.Head == 2
	})
	fresh, err := b.Submit(context.Background(), "greet", nil)
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]struct {
		v int
		g string
	}{old: {1, "v1"}, fresh: {2, "v2"}} {
		s := waitState(t, a, id, flows.StateCompleted)
		if s.Version != want.v || s.Output["greeting"] != want.g {
			t.Errorf("execution %s ran version %d with greeting %v; want %d and %s", id, s.Version, s.Output["greeting"], want.v, want.g)
		}
	}
}

// TestDeployVersionRules: explicit versions are immutable, an unversioned
// file becomes the next version unless its content is deployed, rollback
// moves the head, undeploy stops submissions and a deploy brings it back.
func TestDeployVersionRules(t *testing.T) {
	b := mem.New()
	t.Cleanup(func() { b.Close() })
	e := deployNode(t, b, testConfig(t), "a")
	ctx := context.Background()
	if d := deploy(t, e, greetV1); d.Version != 1 || !d.Created {
		t.Fatalf("v1: %+v", d)
	}
	if d := deploy(t, e, greetV1); d.Version != 1 || d.Created || !d.Head {
		t.Fatalf("same content again: %+v, want version 1 not created", d)
	}
	if d := deploy(t, e, greetV2); d.Version != 2 || !d.Created || !d.Head {
		t.Fatalf("v2: %+v", d)
	}
	v5 := "version: 5\n" + greetV1
	if d := deploy(t, e, v5); d.Version != 5 || !d.Created || !d.Head {
		t.Fatalf("explicit version 5: %+v", d)
	}
	if d := deploy(t, e, v5); d.Version != 5 || d.Created {
		t.Fatalf("explicit version 5 again: %+v", d)
	}
	if _, err := e.Deploy(ctx, []byte("version: 5\n"+greetV2)); !errors.Is(err, catalog.ErrConflict) {
		t.Fatalf("version 5 with other content: %v, want ErrConflict", err)
	}
	if _, err := e.Deploy(ctx, []byte("rule: r\ndefault: x\n")); !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Fatalf("deploying a rule: %v", err)
	}
	if _, err := e.Deploy(ctx, []byte("flow: x\nsteps:\n  - name: a\n    mail: x\n")); !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Fatalf("deploying a bad flow: %v", err)
	}
	if err := e.Rollback(ctx, "greet", 1); err != nil {
		t.Fatal(err)
	}
	if err := e.Rollback(ctx, "greet", 4); !errors.Is(err, flows.ErrFlowNotFound) {
		t.Fatalf("rollback to a missing version: %v", err)
	}
	id, err := e.Submit(ctx, "greet", nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := waitState(t, e, id, flows.StateCompleted); s.Version != 1 {
		t.Fatalf("after rollback ran version %d", s.Version)
	}
	id, err = e.Submit(ctx, "greet", nil, flows.WithVersion(2))
	if err != nil {
		t.Fatal(err)
	}
	if s := waitState(t, e, id, flows.StateCompleted); s.Version != 2 || s.Output["greeting"] != "v2" {
		t.Fatalf("named version 2 ran %d %v", s.Version, s.Output)
	}
	fv, err := e.Versions("greet")
	if err != nil || fv.Head != 1 || len(fv.Versions) != 3 || !fv.Versions[0].Head || fv.Versions[0].Node != "a" {
		t.Fatalf("versions %+v %v", fv, err)
	}
	if err := e.Undeploy(ctx, "greet"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Submit(ctx, "greet", nil); !errors.Is(err, flows.ErrFlowNotFound) {
		t.Fatalf("submit after undeploy: %v, want ErrNotFound", err)
	}
	if _, err := e.Submit(ctx, "greet", nil, flows.WithVersion(2)); !errors.Is(err, flows.ErrFlowNotFound) {
		t.Fatalf("submit of a named version after undeploy: %v, want ErrFlowNotFound", err)
	}
	if fv, _ := e.Versions("greet"); fv.Head != 0 || len(fv.Versions) != 3 {
		t.Fatalf("versions after undeploy %+v", fv)
	}
	if d := deploy(t, e, greetV2); d.Version != 2 || d.Created || !d.Head {
		t.Fatalf("redeploy after undeploy: %+v, want version 2 back as head", d)
	}
	if err := e.Undeploy(ctx, "nope"); !errors.Is(err, flows.ErrFlowNotFound) {
		t.Fatalf("undeploy of an unknown flow: %v", err)
	}
}

// TestSeedingTheSameDirCreatesOneVersion: nodes that seed the same files
// create one version; a node seeding content that is deployed does not
// move the head (a rollback survives a restart).
func TestSeedingTheSameDirCreatesOneVersion(t *testing.T) {
	srv := mem.NewServer()
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "greet.yaml"), []byte(greetV1), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	var es []*flows.Engine
	for _, n := range []string{"a", "b", "c"} {
		e := deployNode(t, srv.Client(), cfg, n)
		ds, err := e.Seed(context.Background(), dir)
		if err != nil || len(ds) != 1 || ds[0].Version != 1 {
			t.Fatalf("seed on %s: %+v %v", n, ds, err)
		}
		es = append(es, e)
	}
	deploy(t, es[0], greetV2)
	// c must have seen v2 become the head before the rollback: otherwise
	// "head 1 with two versions" below could be c before the head moved,
	// and the head change to v2 could still be on its way (CI saw that).
	waitFor(t, "c sees v2 as the head", func() bool { fv, _ := es[2].Versions("greet"); return fv.Head == 2 && len(fv.Versions) == 2 })
	if err := es[0].Rollback(context.Background(), "greet", 1); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c sees the rollback", func() bool { fv, _ := es[2].Versions("greet"); return fv.Head == 1 && len(fv.Versions) == 2 })
	// A seed of v2's content after the rollback to v1: the rollback
	// survives (a seed never moves the head to content deployed already).
	if err := os.WriteFile(filepath.Join(dir, "greet.yaml"), []byte(greetV2), 0o644); err != nil {
		t.Fatal(err)
	}
	if ds, err := es[2].Seed(context.Background(), dir); err != nil || ds[0].Version != 2 || ds[0].Created || ds[0].Head {
		t.Fatalf("seed of v2's content after the rollback to v1: %+v %v", ds, err)
	}
	waitFor(t, "every node keeps head 1", func() bool {
		for _, e := range es {
			if fv, _ := e.Versions("greet"); fv.Head != 1 {
				return false
			}
		}
		return true
	})
	if d := deploy(t, es[1], greetV2); d.Version != 2 || d.Created || !d.Head {
		t.Fatalf("deploying v2's content again: %+v, want version 2 back as the head, nothing created", d)
	}
	for _, e := range es {
		waitFor(t, "every node has head 2 and two versions", func() bool {
			fv, err := e.Versions("greet")
			return err == nil && len(fv.Versions) == 2 && fv.Head == 2
		})
	}
}

// TestItemOfAMissingVersionWaitsForIt: an item whose flow version no node
// has is tried again later, past its attempts (a fresh copy), never
// dead-lettered, and runs once the version is deployed.
func TestItemOfAMissingVersionWaitsForIt(t *testing.T) {
	srv := mem.NewServer()
	t.Cleanup(srv.Close)
	cfg := testConfig(t)
	cfg.MaxAttempts = 2
	a := deployNode(t, srv.Client(), cfg, "a")
	deployNode(t, srv.Client(), cfg, "b")
	body, _ := json.Marshal(map[string]any{"v": 1, "exec": "early", "flow": "greet", "version": 1, "step": "hello", "seq": 0,
		"started": time.Now()})
	if err := srv.Client().Enqueue(context.Background(), cfg.Queue, adapters.Message{ID: "early:0", Key: "early", Body: body}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second) // both attempts (1 s apart) used up, a copy put back
	deploy(t, a, greetV1)
	s := waitState(t, a, "early", flows.StateCompleted)
	if s.Version != 1 || s.Output["greeting"] != "v1" {
		t.Fatalf("status %+v", s)
	}
	c, err := srv.Client().Consume(context.Background(), cfg.Queue, adapters.ConsumeOptions{DeadLetters: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if d, err := c.Receive(rctx); err == nil {
		t.Fatalf("dead-lettered: %s %q", d.Message().ID, d.Message().Headers[adapters.HeaderDeadLetterReason])
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDefinitionRoutes: the HTTP API answers deploys, conflicts (409),
// versions, sources, rollbacks and undeploys.
func TestDefinitionRoutes(t *testing.T) {
	b := mem.New()
	t.Cleanup(func() { b.Close() })
	e := deployNode(t, b, testConfig(t), "a")
	srv := httptest.NewServer(e.Handler())
	t.Cleanup(srv.Close)
	call := func(method, path string, body any) (int, string) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			raw, _ := json.Marshal(body)
			rd = bytes.NewReader(raw)
		}
		req, _ := http.NewRequest(method, srv.URL+path, rd)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(out)
	}
	for _, c := range []struct {
		method, path string
		body         any
		code         int
		want         string
	}{
		{"POST", "/api/flow-definitions", flows.DeployRequest{YAML: "version: 3\n" + greetV1, File: "g.yaml"}, 200, `"version":3,"created":true,"head":true`},
		{"POST", "/api/flow-definitions", flows.DeployRequest{YAML: "version: 3\n" + greetV2, File: "g.yaml"}, 409, "immutable"},
		{"POST", "/api/flow-definitions", flows.DeployRequest{YAML: "flow: x\n", File: "x.yaml"}, 400, "x.yaml:1"},
		{"POST", "/api/flow-definitions", flows.DeployRequest{YAML: greetV2}, 200, `"version":4`},
		{"GET", "/api/flow-definitions/greet", nil, 200, `"head":4`},
		{"GET", "/api/flow-definitions/greet/3", nil, 200, "version: 3\nflow: greet"},
		{"GET", "/api/flow-definitions/nope", nil, 404, "never deployed"},
		{"POST", "/api/flow-definitions/greet/rollback", flows.RollbackRequest{Version: 3}, 200, `"head":3`},
		{"POST", "/api/flow-definitions/greet/rollback", flows.RollbackRequest{Version: 9}, 404, "no version 9"},
		{"POST", "/api/flow-definitions/greet/undeploy", struct{}{}, 200, `"head":0`},
		{"GET", "/api/flow-definitions", nil, 200, `"flow":"greet","head":0`},
		{"POST", "/api/flow-definitions", flows.DeployRequest{YAML: "version: 3\n" + greetV2 + "---\nflow: other\nsteps:\n  - name: s\n    wait: 1s\n"}, 409,
			`"deployed":[{"flow":"other","version":1,"created":true,"head":true}]`},
	} {
		code, body := call(c.method, c.path, c.body)
		if code != c.code || !strings.Contains(body, c.want) {
			t.Errorf("%s %s: %d %s; want %d with %q", c.method, c.path, code, body, c.code, c.want)
		}
	}
}

// TestConflictingDeploysResolveTheSameEverywhere: b misses a's write of
// greet v3 and deploys other content as v3 itself: the lower Rev (a's,
// written first) wins on both nodes, and b's Deploy reports the conflict
// it sees when it syncs.
func TestConflictingDeploysResolveTheSameEverywhere(t *testing.T) {
	srv := mem.NewServer()
	t.Cleanup(srv.Close)
	cfg := testConfig(t)
	ab, bb := srv.Client(), srv.Client()
	a := deployNode(t, ab, cfg, "a")
	b := deployNode(t, bb, cfg, "b")
	bb.DropNext("t-catalog-"+flows.DefinitionsCatalog, 1) // a's write of v3 does not reach b
	x, y := "version: 3\n"+greetV1, "version: 3\n"+greetV2
	if d := deploy(t, a, x); d.Version != 3 || !d.Created {
		t.Fatalf("a: %+v", d)
	}
	_, err := b.Deploy(context.Background(), []byte(y))
	if !errors.Is(err, catalog.ErrConflict) {
		t.Fatalf("b's deploy of other content as v3: %v, want ErrConflict", err)
	}
	t.Log(err)
	for _, e := range []*flows.Engine{a, b} {
		waitFor(t, "every node keeps a's v3", func() bool {
			src, err := e.Source("greet", 3)
			fv, _ := e.Versions("greet")
			return err == nil && string(src) == x && len(fv.Versions) == 1 && fv.Versions[0].Node == "a" && fv.Head == 3
		})
	}
	id, err := b.Submit(context.Background(), "greet", nil)
	if err != nil {
		t.Fatal(err)
	}
	if s := waitState(t, b, id, flows.StateCompleted); s.Output["greeting"] != "v1" {
		t.Fatalf("b ran %v, want a's content (v1 greeting)", s.Output)
	}
}
