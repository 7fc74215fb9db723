package flows_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/flows"
)

func TestExampleFlowsLoad(t *testing.T) {
	defs, err := flows.ParseDir("../examples/flows")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range defs.Flows {
		names = append(names, f.Name)
		if len(f.Steps) < 3 {
			t.Errorf("example %s has %d steps", f.Name, len(f.Steps))
		}
	}
	for _, r := range defs.Rules {
		names = append(names, "rule:"+r.Name)
	}
	t.Logf("examples: %v", names)
	if len(defs.Flows) < 2 || len(defs.Rules) < 1 {
		t.Fatalf("want at least 2 flows and 1 rule, got %v", names)
	}
	for _, r := range defs.Rules {
		if r.Name != "shipping-carrier" {
			continue
		}
		for _, c := range []struct {
			in   map[string]any
			want string
		}{
			{map[string]any{"weight_kg": 40, "country": "NL"}, "freight-nl"},
			{map[string]any{"weight_kg": 40.5, "country": "BE"}, "freight"},
			{map[string]any{"weight_kg": 1, "express": true}, "courier"},
			{map[string]any{"weight_kg": 1}, "post"},
		} {
			got, err := r.Evaluate(context.Background(), c.in, nil)
			if err != nil || got != c.want {
				t.Errorf("shipping-carrier(%v) = %q, %v; want %q", c.in, got, err, c.want)
			}
		}
	}
}

// loadErr parses src and returns the single LoadError it must produce.
func loadErr(t *testing.T, src string) *flows.LoadError {
	t.Helper()
	_, err := flows.Parse("bad.yaml", []byte(src))
	if err == nil {
		t.Fatal("bad definition accepted")
	}
	if !errors.Is(err, adapters.ErrInvalidArgument) {
		t.Errorf("err %v does not match ErrInvalidArgument", err)
	}
	var le *flows.LoadError
	if !errors.As(err, &le) {
		t.Fatalf("err %T %v is not a *LoadError", err, err)
	}
	t.Log(err)
	return le
}

func TestUnknownStepKindIsRejectedWithFileAndLine(t *testing.T) {
	le := loadErr(t, `flow: f
steps:
  - name: a
    set: {x: "1"}
  - name: b
    email:
      to: someone
`)
	if le.File != "bad.yaml" || le.Line != 6 || !strings.Contains(le.Reason, `unknown step kind "email"`) {
		t.Fatalf("got %s:%d %q; want bad.yaml:6 unknown step kind \"email\"", le.File, le.Line, le.Reason)
	}
}

func TestCELThatDoesNotCompileIsRejectedWithLine(t *testing.T) {
	le := loadErr(t, `flow: f
steps:
  - name: a
    rule:
      conditions:
        - when: input.amount > 
          outcome: big
      default: small
`)
	if le.Line != 6 || !strings.Contains(le.Reason, "CEL") {
		t.Fatalf("got line %d %q; want line 6 and a CEL error", le.Line, le.Reason)
	}
	le = loadErr(t, `flow: f
steps:
  - name: a
    set:
      ok: "1 + 1"
      total: "nosuchvar * 2"
`)
	if le.Line != 6 || !strings.Contains(le.Reason, "nosuchvar") {
		t.Fatalf("got line %d %q; want line 6 naming the undeclared variable", le.Line, le.Reason)
	}
}

func TestReferenceToMissingStepIsRejectedWithLine(t *testing.T) {
	le := loadErr(t, `flow: f
steps:
  - name: a
    set: {x: "1"}
    next: nowhere
`)
	if le.Line != 5 || !strings.Contains(le.Reason, `missing step "nowhere"`) {
		t.Fatalf("got line %d %q", le.Line, le.Reason)
	}
	le = loadErr(t, `flow: f
steps:
  - name: a
    branch:
      conditions:
        - when: "true"
          outcome: yes
      branches:
        yes: b
        no: ghost
  - name: b
    wait: 1s
`)
	if le.Line != 10 || !strings.Contains(le.Reason, `missing step "ghost"`) {
		t.Fatalf("got line %d %q", le.Line, le.Reason)
	}
}

func TestOtherBadDefinitionsAreRejected(t *testing.T) {
	for name, src := range map[string]string{
		"bad duration":    "flow: f\nsteps:\n  - name: a\n    wait: soon\n",
		"two kinds":       "flow: f\nsteps:\n  - name: a\n    wait: 1s\n    set: {x: '1'}\n",
		"duplicate step":  "flow: f\nsteps:\n  - name: a\n    wait: 1s\n  - name: a\n    wait: 1s\n",
		"no steps":        "flow: f\nsteps: []\n",
		"bad url":         "flow: f\nsteps:\n  - name: a\n    http: {url: 'ftp://x'}\n",
		"unknown field":   "flow: f\ncolour: red\nsteps:\n  - name: a\n    wait: 1s\n",
		"not yaml":        "flow: f\nsteps:\n  - name: a\n   wait: [1s\n",
		"rule no outcome": "rule: r\nconditions:\n  - when: 'true'\n",
	} {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			le := loadErr(t, src)
			if le.Line == 0 {
				t.Errorf("no line in %v", le)
			}
		})
	}
}

func TestParseDirReportsEveryBadFile(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.yaml"), []byte("flow: a\nsteps:\n  - name: s\n    mail: x\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "b.yml"), []byte("flow: b\nsteps:\n  - name: s\n    wait: 1s\n    next: t\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "c.yaml"), []byte("flow: c\nsteps:\n  - name: s\n    wait: 1s\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("ignored"), 0o644)
	_, err := flows.ParseDir(dir)
	if err == nil {
		t.Fatal("accepted")
	}
	msg := err.Error()
	if !strings.Contains(msg, "a.yaml:4") || !strings.Contains(msg, "b.yml:5") || strings.Contains(msg, "c.yaml") {
		t.Fatalf("want errors for a.yaml:4 and b.yml:5 only, got:\n%s", msg)
	}
}

func TestAwaitStepParsesAndRejectsBadSpecs(t *testing.T) {
	src := "flow: a\nsteps:\n  - name: hold\n    await: {signal: approved, timeout: 2h, on-timeout: late}\n    next: ok\n  - name: ok\n    wait: 1ms\n    next: end\n  - name: late\n    wait: 1ms\n"
	defs, err := flows.Parse("a.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	s := defs.Flows[0].Steps[0]
	if s.Kind != "await" || s.Next != "ok" || len(s.Targets) != 1 || s.Targets[0] != "late" {
		t.Fatalf("await step %+v", s)
	}
	out, err := s.Run(context.Background(), &flows.StepContext{})
	if err != nil || out.Await == nil || out.Await.Signal != "approved" || out.Await.Timeout != 2*time.Hour || out.Await.OnTimeout != "late" || out.Await.SaveAs != "hold" {
		t.Fatalf("await outcome %+v %v", out.Await, err)
	}
	for spec, want := range map[string]string{
		"await: {timeout: 1s}":                               "await has no signal",
		"await: {signal: 'a b'}":                             `signal "a b"`,
		"await: {signal: x, on-timeout: end}":                "on-timeout without a timeout",
		"await: {signal: x, timeout: 1s, on-timeout: ghost}": `missing step "ghost"`,
		"await: {signal: x, color: red}":                     `unknown field "color"`,
	} {
		_, err := flows.Parse("b.yaml", []byte("flow: b\nsteps:\n  - name: s\n    "+spec+"\n"))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error with %q", spec, err, want)
		}
	}
}
