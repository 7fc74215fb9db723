package flows_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/flows"
)

func noop(context.Context, *flows.StepContext) (flows.Outcome, error) { return flows.Outcome{}, nil }

// TestValidateHasNoSideEffects: Validate (and Register, which prepares a
// copy) leave the caller's flow as it was: no Start, Next or Kind filled in.
func TestValidateHasNoSideEffects(t *testing.T) {
	f := &flows.Flow{Name: "pure", Version: 1, Steps: []flows.Step{{Name: "a", Run: noop}, {Name: "b", Run: noop}}}
	before := *f
	before.Steps = append([]flows.Step(nil), f.Steps...)
	if err := f.Validate(); err != nil {
		t.Fatal(err)
	}
	b := mem.New()
	t.Cleanup(func() { b.Close() })
	e, err := flows.New(b, flows.Config{}, flows.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Register(f); err != nil {
		t.Fatal(err)
	}
	if f.Start != "" || f.Steps[0].Next != "" || f.Steps[1].Kind != "" {
		t.Fatalf("Validate/Register changed the flow: start %q, a.next %q, b.kind %q", f.Start, f.Steps[0].Next, f.Steps[1].Kind)
	}
	for i := range f.Steps {
		if f.Steps[i].Name != before.Steps[i].Name || f.Steps[i].Next != before.Steps[i].Next || f.Steps[i].Kind != before.Steps[i].Kind {
			t.Fatalf("step %d changed: %+v", i, f.Steps[i])
		}
	}
	if got := e.Flows(); !reflect.DeepEqual(got, []string{"pure@1"}) {
		t.Fatalf("Flows() = %v", got)
	}
}

// TestValidateReportsEveryProblem: a Go-built flow with several problems
// gets them all, each a *LoadError without a file.
func TestValidateReportsEveryProblem(t *testing.T) {
	f := &flows.Flow{Name: "bad name!", Version: 0, Start: "ghost", Steps: []flows.Step{
		{Name: "a", Run: noop, Next: "nowhere"}, {Name: "a", Run: noop}, {Name: "c"}}}
	err := f.Validate()
	if !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Fatalf("err %v does not match ErrInvalidArgument", err)
	}
	var le *flows.LoadError
	if !errors.As(err, &le) || le.File != "" {
		t.Fatalf("err %T %v: want *LoadError without a file", err, err)
	}
	for _, want := range []string{"bad name", "version 0", `refers to missing step "nowhere"`, `"a" defined twice`, `"c" has no Run`, `start refers to missing step "ghost"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

// TestEveryStepKindCompiles: each kind of the registry (StepKinds) compiles
// from YAML and records its kind on the step.
func TestEveryStepKindCompiles(t *testing.T) {
	specs := map[string]string{
		"rule":   "rule: {default: x}",
		"branch": "branch: {conditions: [{when: 'true', outcome: y}], branches: {y: end}}",
		"set":    "set: {x: '1'}",
		"http":   "http: {url: 'http://127.0.0.1:1/'}",
		"wait":   "wait: 1ms",
		"await":  "await: {signal: approved, timeout: 1h, on-timeout: end}",
	}
	if len(flows.StepKinds) != len(specs) {
		t.Fatalf("StepKinds %v: the test covers %d kinds", flows.StepKinds, len(specs))
	}
	for _, k := range flows.StepKinds {
		src := "flow: k\nsteps:\n  - name: s\n    " + specs[k] + "\n"
		defs, err := flows.Parse("k.yaml", []byte(src))
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		if got := defs.Flows[0].Steps[0].Kind; got != k {
			t.Errorf("kind %s compiled as %q", k, got)
		}
	}
}

// TestEachFlowKeepsItsDocument: a file with several documents gives each
// flow the source of its own document, which parses back to the same flow.
func TestEachFlowKeepsItsDocument(t *testing.T) {
	src := "# first\nflow: one\nsteps:\n  - name: a\n    wait: 1s\n---\nrule: r\ndefault: x\n---\n# the second flow\nflow: two\nversion: 3\nsteps:\n  - name: b\n    set: {x: '2'}\n...\n"
	defs, err := flows.Parse("multi.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if len(defs.Flows) != 2 {
		t.Fatalf("%d flows", len(defs.Flows))
	}
	want := []string{"# first\nflow: one\nsteps:\n  - name: a\n    wait: 1s\n", "# the second flow\nflow: two\nversion: 3\nsteps:\n  - name: b\n    set: {x: '2'}\n"}
	for i, f := range defs.Flows {
		if string(f.YAML) != want[i] {
			t.Errorf("flow %s source %q, want %q", f.Name, f.YAML, want[i])
		}
		back, err := flows.Parse("again.yaml", f.YAML)
		if err != nil || len(back.Flows) != 1 || back.Flows[0].Name != f.Name || back.Flows[0].Version != f.Version {
			t.Errorf("flow %s source does not parse back: %v", f.Name, err)
		}
	}
}
