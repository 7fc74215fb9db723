package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/bus"
	"github.com/clusterbus/clusterbus/flows"
)

// runCLIStdin is runCLI with standard input.
func runCLIStdin(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	rootCmd.SetIn(strings.NewReader(stdin))
	defer rootCmd.SetIn(nil)
	return runCLI(t, args...)
}

// Read commands print JSON or YAML with -o; flow list prints a table;
// --input takes @FILE and - (standard input); --version prints the version.
func TestCLIOutputFormatsFlowListAndInputSources(t *testing.T) {
	now := time.Now().UTC()
	var submitted []map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/api/cluster":
			json.NewEncoder(w).Encode(bus.ClusterJSON{Cluster: "c1", Local: "n1", Lead: "n1", Term: 3,
				Nodes: []bus.NodeJSON{{ID: "n1", Host: "h1", State: "active", Lead: true, Local: true, StartedAt: now}}})
		case r.URL.Path == "/api/executions":
			if r.URL.Query().Get("status") != "failed" {
				http.Error(w, "want status=failed", 400)
				return
			}
			json.NewEncoder(w).Encode(map[string]any{"executions": []flows.Status{{Execution: "e1", Flow: "order", Version: 2,
				State: "failed", Step: "charge", Node: "n2", Attempt: 3, Updated: now, Error: "payment declined"}}})
		case r.URL.Path == "/api/flows" && r.Method == http.MethodPost:
			var req flows.SubmitRequest
			json.NewDecoder(r.Body).Decode(&req)
			submitted = append(submitted, req.Input)
			w.WriteHeader(http.StatusAccepted)
			json.NewEncoder(w).Encode(flows.SubmitResponse{ID: "x", Flow: req.Flow})
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)

	out, err := runCLI(t, "flow", "list", "--status", "failed", "--addr", srv.URL, "-o", "")
	if err != nil || !strings.Contains(out, "EXECUTION") || !strings.Contains(out, "e1") || !strings.Contains(out, "order@2") || !strings.Contains(out, "payment declined") {
		t.Fatalf("flow list: %v\n%s", err, out)
	}
	out, err = runCLI(t, "flow", "list", "--state", "failed", "--addr", srv.URL, "-o", "yaml")
	if err != nil || !strings.Contains(out, "execution: e1") || !strings.Contains(out, "attempt: 3") {
		t.Fatalf("flow list -o yaml: %v\n%s", err, out)
	}
	out, err = runCLI(t, "status", "--addr", srv.URL, "-o", "yaml")
	if err != nil || !strings.Contains(out, "cluster: c1") || !strings.Contains(out, "term: 3") {
		t.Fatalf("status -o yaml: %v\n%s", err, out)
	}
	out, err = runCLI(t, "status", "--addr", srv.URL, "-o", "json")
	var doc bus.ClusterJSON
	if err != nil || json.Unmarshal([]byte(out), &doc) != nil || doc.Cluster != "c1" {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	if _, err := runCLI(t, "status", "--addr", srv.URL, "-o", "xml"); err == nil || !strings.Contains(err.Error(), `want json or yaml`) {
		t.Fatalf("status -o xml: %v", err)
	}
	runCLI(t, "status", "--addr", srv.URL, "-o", "")

	file := filepath.Join(t.TempDir(), "in.json")
	os.WriteFile(file, []byte(`{"from": "file"}`), 0o644)
	if _, err := runCLI(t, "flow", "submit", "order", "--addr", srv.URL, "--input", "@"+file); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLIStdin(t, `{"from": "stdin"}`, "flow", "submit", "order", "--addr", srv.URL, "--input", "-"); err != nil {
		t.Fatal(err)
	}
	if len(submitted) != 2 || submitted[0]["from"] != "file" || submitted[1]["from"] != "stdin" {
		t.Fatalf("inputs submitted: %v", submitted)
	}
	runCLI(t, "flow", "submit", "order", "--addr", srv.URL, "--input", "")

	out, err = runCLI(t, "--version")
	if err != nil || !strings.HasPrefix(out, "clusterbus "+version+" (go") {
		t.Fatalf("--version: %v %q", err, out)
	}
}
