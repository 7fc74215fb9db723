package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/flows"
)

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	resetFlags(rootCmd)
	var out bytes.Buffer
	rootCmd.SetOut(&out)
	rootCmd.SetErr(&out)
	rootCmd.SetArgs(args)
	err := rootCmd.ExecuteContext(context.Background())
	t.Logf("clusterbus %s\n%s(err %v)", strings.Join(args, " "), out.String(), err)
	return out.String(), err
}

// resetFlags puts every flag of c and its subcommands back to its default:
// rootCmd is one value for the whole test binary, and a flag one command
// line set (-o json) would otherwise stay set for the next (so the tests
// passed in file order only, not with -count 2 or -shuffle).
func resetFlags(c *cobra.Command) {
	reset := func(f *pflag.Flag) {
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			var def []string
			if d := strings.Trim(f.DefValue, "[]"); d != "" {
				def = strings.Split(d, ",")
			}
			_ = sv.Replace(def)
		} else {
			_ = f.Value.Set(f.DefValue)
		}
		f.Changed = false
	}
	c.Flags().VisitAll(reset)
	c.PersistentFlags().VisitAll(reset)
	for _, sub := range c.Commands() {
		resetFlags(sub)
	}
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

// TestFlowControlCommandsTalkToTheNodeAPI: flow signal, history, retry,
// cancel and list --status against a node's API.
func TestFlowControlCommandsTalkToTheNodeAPI(t *testing.T) {
	b := mem.New()
	t.Cleanup(func() { b.Close() })
	e, err := flows.New(b, flows.Config{Queue: "cli-ctl", Lease: 2 * time.Second, MaxAttempts: 1}, flows.Options{NodeID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	var fixed atomic.Bool
	err = e.Register(&flows.Flow{Name: "ctl", Version: 1, Steps: []flows.Step{
		{Name: "hold", Kind: "await", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
			return flows.Outcome{Await: &flows.Await{Signal: "go"}}, nil
		}},
		{Name: "check", Run: func(ctx context.Context, sc *flows.StepContext) (flows.Outcome, error) {
			if !fixed.Load() {
				return flows.Outcome{}, errors.New("not yet")
			}
			sc.Vars["n"] = sc.Vars["hold"].(map[string]any)["n"]
			return flows.Outcome{}, nil
		}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Stop(context.Background()) })
	srv := httptest.NewServer(e.Handler())
	t.Cleanup(srv.Close)
	waitFor := func(id, state string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if st, err := e.Status(context.Background(), id); err == nil && st.State == state {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("execution %s never %s", id, state)
			}
		}
	}
	one, err := e.Submit(context.Background(), "ctl", nil)
	if err != nil {
		t.Fatal(err)
	}
	two, err := e.Submit(context.Background(), "ctl", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(one, flows.StateAwaiting)
	waitFor(two, flows.StateAwaiting)
	if _, err := runCLI(t, "flow", "signal", one, "go", "--data", `{"n": 2}`, "--addr", srv.URL); err != nil {
		t.Fatal(err)
	}
	waitFor(one, flows.StateDeadLettered)
	out, err := runCLI(t, "flow", "history", one, "--addr", srv.URL)
	if err != nil || !strings.Contains(out, "state dead_lettered") || !strings.Contains(out, "awaiting") || !strings.Contains(out, "dead_lettered") || !strings.Contains(out, "not yet") {
		t.Fatalf("history: %v\n%s", err, out)
	}
	fixed.Store(true)
	if _, err := runCLI(t, "flow", "retry", one, "--addr", srv.URL); err != nil {
		t.Fatal(err)
	}
	waitFor(one, flows.StateCompleted)
	if st, _ := e.Status(context.Background(), one); fmt.Sprint(st.Output["n"]) != "2" {
		t.Errorf("output %v: want the signal's data", st.Output)
	}
	if _, err := runCLI(t, "flow", "retry", one, "--addr", srv.URL); err == nil || !strings.Contains(err.Error(), "409") {
		t.Errorf("retry of a completed execution: %v, want a 409", err)
	}
	out, err = runCLI(t, "flow", "cancel", two, "--reason", "not needed", "--addr", srv.URL)
	if err != nil || !strings.Contains(out, `"cancelled"`) || !strings.Contains(out, "not needed") {
		t.Fatalf("cancel: %v\n%s", err, out)
	}
	out, err = runCLI(t, "flow", "list", "--status", "cancelled", "--flow", "ctl", "--since", "1h", "--addr", srv.URL, "-o", "")
	if err != nil || !strings.Contains(out, two) || strings.Contains(out, one) {
		t.Fatalf("list --status cancelled: %v\n%s", err, out)
	}
	if _, err := runCLI(t, "flow", "signal", two, "go", "--data", "", "--addr", srv.URL); err == nil || !strings.Contains(err.Error(), "409") {
		t.Errorf("signal of a cancelled execution: %v, want a 409", err)
	}
}
