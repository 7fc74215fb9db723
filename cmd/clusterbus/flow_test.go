package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/flows"
	"net/http/httptest"
)

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	rootCmd.SetOut(&out)
	rootCmd.SetErr(&out)
	rootCmd.SetArgs(args)
	err := rootCmd.ExecuteContext(context.Background())
	t.Logf("clusterbus %s\n%s(err %v)", strings.Join(args, " "), out.String(), err)
	return out.String(), err
}

func TestFlowSubmitAndStatusTalkToTheNodeAPI(t *testing.T) {
	b := mem.New()
	t.Cleanup(func() { b.Close() })
	e, err := flows.New(b, flows.Config{Queue: "cli-flows", Lease: 2 * time.Second}, flows.Options{NodeID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.LoadDir("../../examples/flows"); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Stop(context.Background()) })
	srv := httptest.NewServer(e.Handler())
	t.Cleanup(srv.Close)

	out, err := runCLI(t, "flow", "submit", "../../examples/flows/shipping-rule.yaml", "--addr", srv.URL,
		"--input", `{"weight_kg": 40, "country": "NL"}`, "--wait", "20s")
	if err != nil {
		t.Fatal(err)
	}
	id := strings.SplitN(out, "\n", 2)[0]
	if !strings.Contains(out, `"freight-nl"`) || !strings.Contains(out, `"completed"`) {
		t.Fatalf("submit --wait output lacks the outcome:\n%s", out)
	}
	out, err = runCLI(t, "flow", "status", id, "--addr", srv.URL, "--wait", "0s")
	if err != nil {
		t.Fatal(err)
	}
	var st flows.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Execution != id || st.State != flows.StateCompleted {
		t.Fatalf("status output %q: %+v %v", out, st, err)
	}
	if _, err := runCLI(t, "flow", "status", "no-such-execution", "--addr", srv.URL, "--wait", "0s"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("status of an unknown execution: %v, want a 404", err)
	}
}

func TestFlowSubmitRejectsABadFileWithItsLine(t *testing.T) {
	f := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(f, []byte("flow: f\nsteps:\n  - name: a\n    fax: 123\n"), 0o644)
	_, err := runCLI(t, "flow", "submit", f, "--addr", "127.0.0.1:1", "--input", "{}", "--wait", "0s")
	if err == nil || exitCode(err) != 2 || !strings.Contains(err.Error(), "bad.yaml:4") || !strings.Contains(err.Error(), `unknown step kind "fax"`) {
		t.Fatalf("err %v (exit %d), want exit 2 naming bad.yaml:4 and the unknown kind", err, exitCode(err))
	}
	_, err = runCLI(t, "flow", "submit", "some-flow", "--addr", "127.0.0.1:1", "--input", "[1]", "--wait", "0s")
	if err == nil || exitCode(err) != 2 {
		t.Fatalf("non-object input: %v", err)
	}
}
