package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"net/http/httptest"

	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/catalog"
	"github.com/clusterbus/clusterbus/flows"
)

func TestFlowDeployVersionsRollbackUndeploy(t *testing.T) {
	b := mem.New()
	t.Cleanup(func() { b.Close() })
	cat, err := catalog.Open(b, catalog.Config{Cluster: "cli", NodeID: "n1", Name: flows.DefinitionsCatalog, FirstWriteWins: flows.ImmutableDefinition})
	if err != nil {
		t.Fatal(err)
	}
	if err := cat.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cat.Stop(context.Background()) })
	e, err := flows.New(b, flows.Config{Queue: "cli-deploy", Lease: 2 * time.Second}, flows.Options{NodeID: "n1", Definitions: cat})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Stop(context.Background()) })
	srv := httptest.NewServer(e.Handler())
	t.Cleanup(srv.Close)

	dir := t.TempDir()
	v1, v2, bad := filepath.Join(dir, "v1.yaml"), filepath.Join(dir, "v2.yaml"), filepath.Join(dir, "bad.yaml")
	os.WriteFile(v1, []byte("flow: hi\nsteps:\n  - name: a\n    set: {x: '1'}\n"), 0o644)
	os.WriteFile(v2, []byte("flow: hi\nsteps:\n  - name: a\n    set: {x: '2'}\n"), 0o644)
	os.WriteFile(bad, []byte("flow: hi\nsteps:\n  - name: a\n    fax: 1\n"), 0o644)

	if _, err := runCLI(t, "flow", "deploy", v1, bad, "--addr", srv.URL); err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "bad.yaml:4") {
		t.Fatalf("deploy with a bad file: %v (exit %d), want exit 2 naming bad.yaml:4", err, exitCode(err))
	}
	if v, _ := e.Versions("hi"); len(v.Versions) != 0 {
		t.Fatalf("a bad file among several deployed the good one: %+v", v)
	}
	out, err := runCLI(t, "flow", "deploy", v1, v2, "--addr", srv.URL, "--output=")
	if err != nil || !strings.Contains(out, "v1.yaml  hi    1") || !strings.Contains(out, "v2.yaml  hi    2") {
		t.Fatalf("deploy: %v\n%s", err, out)
	}
	out, err = runCLI(t, "flow", "versions", "hi", "--addr", srv.URL, "-o", "json")
	if err != nil || !strings.Contains(out, `"head": 2`) {
		t.Fatalf("versions -o json: %v\n%s", err, out)
	}
	out, err = runCLI(t, "flow", "rollback", "hi", "1", "--addr", srv.URL, "--output=")
	if err != nil || !strings.Contains(out, "flow hi: head 1") {
		t.Fatalf("rollback: %v\n%s", err, out)
	}
	if _, err := runCLI(t, "flow", "rollback", "hi", "7", "--addr", srv.URL); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("rollback to a missing version: %v, want a 404", err)
	}
	if _, err := runCLI(t, "flow", "rollback", "hi", "x", "--addr", srv.URL); exitCode(err) != 2 {
		t.Fatalf("rollback to version x: %v, want exit 2", err)
	}
	out, err = runCLI(t, "flow", "undeploy", "hi", "--addr", srv.URL, "--output=")
	if err != nil || !strings.Contains(out, "none (undeployed)") {
		t.Fatalf("undeploy: %v\n%s", err, out)
	}
}
