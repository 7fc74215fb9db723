package flows

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"gopkg.in/yaml.v3"
)

// LoadError is a definition rejected at load (or by Flow.Validate): the
// file, the line and why. File and Line are empty for flows built in Go.
// It matches adapters.ErrInvalidArgument.
type LoadError struct {
	File   string
	Line   int
	Reason string
}

func (e *LoadError) Error() string {
	switch {
	case e.File == "" && e.Line == 0:
		return "flows: " + e.Reason
	case e.Line == 0:
		return fmt.Sprintf("flows: %s: %s", e.File, e.Reason)
	}
	return fmt.Sprintf("flows: %s:%d: %s", e.File, e.Line, e.Reason)
}

// Unwrap makes errors.Is(err, adapters.ErrInvalidArgument) hold.
func (e *LoadError) Unwrap() error { return adapters.ErrInvalidArgument }

// Definitions are what a YAML file defines.
type Definitions struct {
	Flows []*Flow
	Rules []*Rule
}

// ParseFile reads and parses one YAML file; see Parse.
func ParseFile(path string) (*Definitions, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("flows: %w", err)
	}
	return Parse(path, data)
}

// ParseDir parses every *.yaml and *.yml file in dir (not recursive), in
// name order. It returns every error found, joined.
func ParseDir(dir string) (*Definitions, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("flows: flow directory: %w", err)
	}
	out := &Definitions{}
	var errs []error
	for _, e := range entries {
		n := e.Name()
		if e.IsDir() || !(strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")) {
			continue
		}
		d, err := ParseFile(filepath.Join(dir, n))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out.Flows = append(out.Flows, d.Flows...)
		out.Rules = append(out.Rules, d.Rules...)
	}
	return out, errors.Join(errs...)
}

// CheckDir parses dir as ParseDir does and checks every definition as
// registering it would (steps, references, CEL expressions), without an
// engine or a broker: what `clusterbus flow lint` and a starting node run.
// It returns every problem found, joined. Parse already ran Flow.Validate
// on every flow; CheckDir adds the standalone rules' checks.
func CheckDir(dir string) (*Definitions, error) {
	defs, err := ParseDir(dir)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, r := range defs.Rules {
		if err := r.Compile(); err != nil {
			errs = append(errs, fmt.Errorf("flows: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return defs, nil
}

var yamlLineRE = regexp.MustCompile(`line (\d+)`)

// Parse parses YAML flow and rule definitions (one or more documents).
// Every problem found is returned as a *LoadError (joined), with the line.
//
// A flow document:
//
//	flow: order-approval
//	version: 1
//	start: assess          # optional; default the first step
//	steps:
//	  - name: assess
//	    rule:              # or branch:
//	      conditions:
//	        - when: input.amount > 1000     # CEL; a list means all must hold
//	          outcome: review
//	      default: auto
//	      branches: {review: manual, auto: approve}
//	  - name: approve
//	    set: {approved: "true", total: "input.amount * 2"}
//	    next: notify
//	  - name: notify
//	    http: {method: POST, url: "http://…", body: "vars", timeout: 5s, retries: 2}
//	  - name: pause
//	    wait: 10s
//
// A rule document has "rule: name", "version", "conditions" and "default".
//
// Parsing has two stages. Decoding turns each document into typed structs
// (flowDoc, stepDoc, ruleDoc and each step kind's own spec) and reports
// what is malformed: wrong types, unknown fields, unknown step kinds.
// Compiling turns them into a Flow through the one registry of step kinds
// (stepKinds), where each kind compiles its spec (CEL expressions,
// durations, URLs), and then Flow.Validate, the only validator of a flow's
// structure (names, references, start), checks the result. Each flow keeps
// its document's source (Flow.YAML), which is what Engine.Deploy stores.
func Parse(file string, data []byte) (*Definitions, error) {
	p := &parser{file: file}
	out := &Definitions{}
	docs := splitDocuments(data)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			line := 0
			if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
				line, _ = strconv.Atoi(m[1])
			}
			p.errf(line, "not valid YAML: %v", err)
			break
		}
		if len(doc.Content) == 0 {
			continue
		}
		root := doc.Content[0]
		if root.Kind != yaml.MappingNode {
			p.errf(root.Line, "want a mapping with \"flow:\" or \"rule:\" at the top")
			continue
		}
		switch {
		case has(root, "flow"):
			fd := p.decodeFlow(root)
			if fd == nil {
				continue
			}
			if f := p.compileFlow(fd); f != nil {
				f.YAML = docs.of(root.Line)
				out.Flows = append(out.Flows, f)
			}
		case has(root, "rule"):
			if rd := p.decodeRule(root, true); rd != nil {
				if r := p.compileRule(rd, ""); r != nil {
					out.Rules = append(out.Rules, r)
				}
			}
		default:
			p.errf(root.Line, "want \"flow:\" or \"rule:\" at the top")
		}
	}
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	return out, nil
}

// documents splits a YAML stream at its document markers, so that each
// flow keeps the source of its own document.
type documents struct {
	lines   [][]byte
	markers []int // 1-based line numbers of "---" and "..." lines
}

var docMarkerRE = regexp.MustCompile(`^(---|\.\.\.)(\s|$)`)

func splitDocuments(data []byte) documents {
	d := documents{lines: bytes.SplitAfter(data, []byte("\n"))}
	for i, l := range d.lines {
		if docMarkerRE.Match(l) {
			d.markers = append(d.markers, i+1)
		}
	}
	return d
}

// of returns the lines of the document whose content starts at line: from
// after the marker before it to before the marker after it.
func (d documents) of(line int) []byte {
	from, to := 1, len(d.lines)
	for _, m := range d.markers {
		if m < line {
			from = m + 1
		} else if m > line {
			to = m - 1
			break
		}
	}
	return bytes.Join(d.lines[from-1:to], nil)
}

type parser struct {
	file string
	errs []error
}

func (p *parser) errf(line int, format string, args ...any) {
	p.errs = append(p.errs, &LoadError{File: p.file, Line: line, Reason: fmt.Sprintf(format, args...)})
}

type kv struct{ k, v *yaml.Node }

func pairs(n *yaml.Node) []kv {
	var out []kv
	for i := 0; i+1 < len(n.Content); i += 2 {
		out = append(out, kv{n.Content[i], n.Content[i+1]})
	}
	return out
}

func has(n *yaml.Node, key string) bool {
	for _, e := range pairs(n) {
		if e.k.Value == key {
			return true
		}
	}
	return false
}

func (p *parser) str(n *yaml.Node, what string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		p.errf(n.Line, "%s: want a string", what)
		return "", false
	}
	return n.Value, true
}

func (p *parser) integer(n *yaml.Node, what string) (int, bool) {
	v, err := strconv.Atoi(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil {
		p.errf(n.Line, "%s: want an integer, got %q", what, n.Value)
		return 0, false
	}
	return v, true
}

func (p *parser) duration(n *yaml.Node, what string) (time.Duration, bool) {
	d, err := time.ParseDuration(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil || d < 0 {
		p.errf(n.Line, "%s: want a duration such as 500ms or 10s, got %q", what, n.Value)
		return 0, false
	}
	return d, true
}

// sourced is a string from the YAML and the line it is on.
type sourced struct {
	Value string
	Line  int
}

func (p *parser) sourced(n *yaml.Node, what string) sourced {
	v, _ := p.str(n, what)
	return sourced{Value: v, Line: n.Line}
}

// expr compiles a CEL expression; a failure is reported at its line.
func (p *parser) expr(s sourced, what string) *Expr {
	x, err := CompileExpr(s.Value)
	if err != nil {
		p.errf(s.Line, "%s: %v", what, err)
		return nil
	}
	return x
}

// flowDoc is a decoded flow document.
type flowDoc struct {
	Name      string
	Version   int // 0: not given
	Start     sourced
	Steps     []stepDoc
	Line      int
	StepsLine int
}

// stepDoc is a decoded step: the fields every step has, its kind and what
// is under the kind's key, which the kind decodes into its own spec.
type stepDoc struct {
	Name   string
	Next   sourced
	SaveAs string
	Kind   *stepKind
	Spec   *yaml.Node
	Line   int
}

func (p *parser) decodeFlow(root *yaml.Node) *flowDoc {
	fd := &flowDoc{Line: root.Line}
	before := len(p.errs)
	var stepsNode *yaml.Node
	for _, e := range pairs(root) {
		switch e.k.Value {
		case "flow", "name":
			fd.Name, _ = p.str(e.v, "flow")
		case "version":
			fd.Version, _ = p.integer(e.v, "version")
		case "start":
			fd.Start = p.sourced(e.v, "start")
		case "description":
		case "steps":
			stepsNode = e.v
		default:
			p.errf(e.k.Line, "unknown field %q (want flow, version, start, description, steps)", e.k.Value)
		}
	}
	if stepsNode == nil || stepsNode.Kind != yaml.SequenceNode || len(stepsNode.Content) == 0 {
		p.errf(root.Line, "flow %q: want a non-empty list under \"steps\"", fd.Name)
		return nil
	}
	fd.StepsLine = stepsNode.Line
	for _, sn := range stepsNode.Content {
		if sd := p.decodeStep(sn); sd != nil {
			fd.Steps = append(fd.Steps, *sd)
		}
	}
	if len(p.errs) > before {
		return nil
	}
	return fd
}

func (p *parser) decodeStep(n *yaml.Node) *stepDoc {
	if n.Kind != yaml.MappingNode {
		p.errf(n.Line, "step: want a mapping with name and one of %s", strings.Join(StepKinds, ", "))
		return nil
	}
	sd := &stepDoc{Line: n.Line}
	var kindKey *yaml.Node
	var unknown []*yaml.Node
	for _, e := range pairs(n) {
		switch e.k.Value {
		case "name":
			sd.Name, _ = p.str(e.v, "name")
		case "next":
			sd.Next = p.sourced(e.v, "next")
		case "description":
		case "save_as":
			sd.SaveAs, _ = p.str(e.v, "save_as")
		default:
			k := stepKindNamed(e.k.Value)
			if k == nil {
				unknown = append(unknown, e.k)
				continue
			}
			if kindKey != nil {
				p.errf(e.k.Line, "step has two kinds, %q and %q; want one", kindKey.Value, e.k.Value)
				continue
			}
			kindKey, sd.Kind, sd.Spec = e.k, k, e.v
		}
	}
	for _, u := range unknown {
		if kindKey == nil {
			p.errf(u.Line, "unknown step kind %q (known kinds: %s)", u.Value, strings.Join(StepKinds, ", "))
		} else {
			p.errf(u.Line, "unknown field %q in %s step (want name, next, description, save_as)", u.Value, kindKey.Value)
		}
	}
	if sd.Name == "" {
		p.errf(n.Line, "step has no name")
		return nil
	}
	if kindKey == nil {
		if len(unknown) == 0 {
			p.errf(n.Line, "step %q has no kind; want one of %s", sd.Name, strings.Join(StepKinds, ", "))
		}
		return nil
	}
	if sd.SaveAs == "" {
		sd.SaveAs = sd.Name
	}
	return sd
}

// compileFlow builds the Flow of a decoded document, each step through its
// kind, and validates it (Flow.Validate).
func (p *parser) compileFlow(fd *flowDoc) *Flow {
	f := &Flow{Name: fd.Name, Version: fd.Version, Start: fd.Start.Value, Source: p.file, Line: fd.Line,
		versioned: fd.Version != 0, startLine: fd.Start.Line}
	if f.Version == 0 {
		f.Version = 1
	}
	before := len(p.errs)
	for i := range fd.Steps {
		sd := &fd.Steps[i]
		s := Step{Name: sd.Name, Next: sd.Next.Value, Kind: sd.Kind.name, Line: sd.Line}
		if sd.Next.Value != "" {
			s.refLines = map[string]int{sd.Next.Value: sd.Next.Line}
		}
		run, targets := sd.Kind.compile(p, sd)
		if run == nil {
			continue
		}
		s.Run = run
		for _, t := range targets {
			s.Targets = append(s.Targets, t.Value)
			if s.refLines == nil {
				s.refLines = map[string]int{}
			}
			if _, ok := s.refLines[t.Value]; !ok {
				s.refLines[t.Value] = t.Line
			}
		}
		f.Steps = append(f.Steps, s)
	}
	if len(p.errs) > before {
		return nil
	}
	if err := f.Validate(); err != nil {
		p.errs = append(p.errs, err)
		return nil
	}
	return f
}

// ruleDoc is a decoded rule: a top-level rule document, or what is under a
// rule (or branch) step's key.
type ruleDoc struct {
	Name       string
	Version    int
	Default    string
	Conditions []conditionDoc
	// Branches map outcomes to steps (rule steps only), in file order.
	Branches []branchDoc
	Line     int
}

type conditionDoc struct {
	When    []sourced
	Outcome string
	Line    int
}

type branchDoc struct {
	Outcome string
	Step    sourced
}

func (p *parser) decodeRule(n *yaml.Node, top bool) *ruleDoc {
	if n.Kind != yaml.MappingNode {
		p.errf(n.Line, "rule: want a mapping with conditions and default")
		return nil
	}
	rd := &ruleDoc{Version: 1, Line: n.Line}
	before := len(p.errs)
	for _, e := range pairs(n) {
		switch e.k.Value {
		case "rule", "name":
			if top {
				rd.Name, _ = p.str(e.v, "rule")
			} else {
				p.errf(e.k.Line, "unknown field %q in rule (want conditions, default, branches)", e.k.Value)
			}
		case "version":
			if top {
				rd.Version, _ = p.integer(e.v, "version")
			}
		case "description":
		case "default":
			rd.Default, _ = p.str(e.v, "default")
		case "branches":
			if top {
				p.errf(e.k.Line, "branches belong to rule steps, not standalone rules")
				continue
			}
			if e.v.Kind != yaml.MappingNode {
				p.errf(e.v.Line, "branches: want a mapping outcome: step")
				continue
			}
			for _, b := range pairs(e.v) {
				rd.Branches = append(rd.Branches, branchDoc{Outcome: b.k.Value, Step: sourced{Value: b.v.Value, Line: b.v.Line}})
			}
		case "conditions":
			if e.v.Kind != yaml.SequenceNode {
				p.errf(e.v.Line, "conditions: want a list")
				continue
			}
			for i, cn := range e.v.Content {
				rd.Conditions = append(rd.Conditions, p.decodeCondition(i+1, cn))
			}
		default:
			p.errf(e.k.Line, "unknown field %q in rule (want conditions, default%s)", e.k.Value, map[bool]string{true: ", rule, version", false: ", branches"}[top])
		}
	}
	if top && rd.Name == "" {
		p.errf(n.Line, "rule has no name")
	}
	if len(rd.Conditions) == 0 && rd.Default == "" {
		p.errf(n.Line, "rule has no conditions and no default")
	}
	if len(p.errs) > before {
		return nil
	}
	return rd
}

func (p *parser) decodeCondition(i int, n *yaml.Node) conditionDoc {
	c := conditionDoc{Line: n.Line}
	if n.Kind != yaml.MappingNode {
		p.errf(n.Line, "condition %d: want a mapping with when and outcome", i)
		return c
	}
	for _, e := range pairs(n) {
		switch e.k.Value {
		case "when":
			items := []*yaml.Node{e.v}
			if e.v.Kind == yaml.SequenceNode {
				items = e.v.Content
			}
			for _, it := range items {
				c.When = append(c.When, p.sourced(it, fmt.Sprintf("condition %d", i)))
			}
		case "outcome":
			c.Outcome, _ = p.str(e.v, "outcome")
		default:
			p.errf(e.k.Line, "unknown field %q in condition %d (want when, outcome)", e.k.Value, i)
		}
	}
	if c.Outcome == "" {
		p.errf(n.Line, "condition %d has no outcome", i)
	}
	return c
}

// compileRule compiles a decoded rule's expressions; prefix names the step
// in messages.
func (p *parser) compileRule(rd *ruleDoc, prefix string) *Rule {
	r := &Rule{Name: rd.Name, Version: rd.Version, Default: rd.Default}
	before := len(p.errs)
	for i, cd := range rd.Conditions {
		c := Condition{Outcome: cd.Outcome}
		for _, w := range cd.When {
			if x := p.expr(w, fmt.Sprintf("%scondition %d", prefix, i+1)); x != nil {
				c.When = append(c.When, x.Source)
				c.whens = append(c.whens, x)
			}
		}
		r.Conditions = append(r.Conditions, c)
	}
	if len(p.errs) > before {
		return nil
	}
	r.compiled = true // every expression was compiled above
	return r
}
