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

// LoadError is a definition rejected at load: the file, the line and why.
// It matches adapters.ErrInvalidArgument.
type LoadError struct {
	File   string
	Line   int
	Reason string
}

func (e *LoadError) Error() string {
	return fmt.Sprintf("flows: %s:%d: %s", e.File, e.Line, e.Reason)
}

// Unwrap makes errors.Is(err, adapters.ErrInvalidArgument) hold.
func (e *LoadError) Unwrap() error { return adapters.ErrInvalidArgument }

// StepKinds lists the step kinds YAML flows may use.
var StepKinds = []string{"rule", "branch", "set", "http", "wait"}

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
// It returns every problem found, joined.
func CheckDir(dir string) (*Definitions, error) {
	defs, err := ParseDir(dir)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, f := range defs.Flows {
		if err := f.Validate(); err != nil {
			errs = append(errs, err)
		}
	}
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
func Parse(file string, data []byte) (*Definitions, error) {
	p := &parser{file: file}
	out := &Definitions{}
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
		case p.has(root, "flow"):
			if f := p.flow(root); f != nil {
				out.Flows = append(out.Flows, f)
			}
		case p.has(root, "rule"):
			if r := p.rule(root, true, ""); r != nil {
				out.Rules = append(out.Rules, r)
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

func (p *parser) has(n *yaml.Node, key string) bool {
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

func (p *parser) expr(n *yaml.Node, what string) *Expr {
	src, ok := p.str(n, what)
	if !ok {
		return nil
	}
	x, err := CompileExpr(src)
	if err != nil {
		p.errf(n.Line, "%s: %v", what, err)
		return nil
	}
	return x
}

type reference struct {
	from, to string
	line     int
}

func (p *parser) flow(root *yaml.Node) *Flow {
	f := &Flow{Source: p.file, Version: 1}
	var refs []reference
	var stepsNode *yaml.Node
	startLine := root.Line
	for _, e := range pairs(root) {
		switch e.k.Value {
		case "flow", "name":
			f.Name, _ = p.str(e.v, "flow")
			if err := adapters.ValidateName("flow", f.Name); err != nil && f.Name != "" {
				p.errf(e.v.Line, "flow name %q: letters, digits, '-' or '_', at most 64", f.Name)
			}
		case "version":
			f.Version, _ = p.integer(e.v, "version")
		case "start":
			f.Start, _ = p.str(e.v, "start")
			startLine = e.v.Line
		case "description":
		case "steps":
			stepsNode = e.v
		default:
			p.errf(e.k.Line, "unknown field %q (want flow, version, start, description, steps)", e.k.Value)
		}
	}
	if f.Name == "" {
		p.errf(root.Line, "flow has no name")
	}
	if stepsNode == nil || stepsNode.Kind != yaml.SequenceNode || len(stepsNode.Content) == 0 {
		p.errf(root.Line, "flow %q: want a non-empty list under \"steps\"", f.Name)
		return nil
	}
	names := map[string]bool{}
	for _, sn := range stepsNode.Content {
		s, srefs := p.step(sn)
		if s == nil {
			continue
		}
		if names[s.Name] {
			p.errf(sn.Line, "step %q defined twice", s.Name)
		}
		names[s.Name] = true
		f.Steps = append(f.Steps, *s)
		refs = append(refs, srefs...)
	}
	if f.Start != "" {
		refs = append(refs, reference{from: "start", to: f.Start, line: startLine})
	}
	for _, r := range refs {
		if r.to != End && !names[r.to] {
			p.errf(r.line, "step %q refers to missing step %q", r.from, r.to)
		}
	}
	if len(p.errs) > 0 {
		return nil
	}
	if err := f.Validate(); err != nil {
		p.errf(root.Line, "%v", err)
		return nil
	}
	return f
}

func (p *parser) step(n *yaml.Node) (*Step, []reference) {
	if n.Kind != yaml.MappingNode {
		p.errf(n.Line, "step: want a mapping with name and one of %s", strings.Join(StepKinds, ", "))
		return nil, nil
	}
	s := &Step{Line: n.Line}
	var refs []reference
	var kindKey, kindVal *yaml.Node
	var saveAs string
	var unknown []*yaml.Node
	for _, e := range pairs(n) {
		switch e.k.Value {
		case "name":
			s.Name, _ = p.str(e.v, "name")
		case "next":
			s.Next, _ = p.str(e.v, "next")
			refs = append(refs, reference{to: s.Next, line: e.v.Line})
		case "description":
		case "save_as":
			saveAs, _ = p.str(e.v, "save_as")
		case "rule", "branch", "set", "http", "wait":
			if kindKey != nil {
				p.errf(e.k.Line, "step has two kinds, %q and %q; want one", kindKey.Value, e.k.Value)
				continue
			}
			kindKey, kindVal = e.k, e.v
		default:
			unknown = append(unknown, e.k)
		}
	}
	for _, u := range unknown {
		if kindKey == nil {
			p.errf(u.Line, "unknown step kind %q (known kinds: %s)", u.Value, strings.Join(StepKinds, ", "))
		} else {
			p.errf(u.Line, "unknown field %q in %s step (want name, next, description, save_as)", u.Value, kindKey.Value)
		}
	}
	if s.Name == "" {
		p.errf(n.Line, "step has no name")
		return nil, nil
	}
	if s.Name == End {
		p.errf(n.Line, "step name %q is reserved", End)
		return nil, nil
	}
	if kindKey == nil {
		if len(unknown) == 0 {
			p.errf(n.Line, "step %q has no kind; want one of %s", s.Name, strings.Join(StepKinds, ", "))
		}
		return nil, nil
	}
	for i := range refs {
		refs[i].from = s.Name
	}
	if saveAs == "" {
		saveAs = s.Name
	}
	s.Kind = kindKey.Value
	switch kindKey.Value {
	case "rule", "branch":
		r := p.rule(kindVal, false, fmt.Sprintf("step %q: ", s.Name))
		if r == nil {
			return nil, refs
		}
		r.Name = s.Name
		branches := map[string]string{}
		for _, e := range pairs(kindVal) {
			if e.k.Value != "branches" {
				continue
			}
			if e.v.Kind != yaml.MappingNode {
				p.errf(e.v.Line, "branches: want a mapping outcome: step")
				continue
			}
			for _, b := range pairs(e.v) {
				branches[b.k.Value] = b.v.Value
				refs = append(refs, reference{from: s.Name, to: b.v.Value, line: b.v.Line})
				s.Targets = append(s.Targets, b.v.Value)
			}
		}
		s.Run = ruleStep(r, branches, saveAs)
	case "set":
		if kindVal.Kind != yaml.MappingNode || len(kindVal.Content) == 0 {
			p.errf(kindVal.Line, "set: want a mapping name: CEL expression")
			return nil, refs
		}
		var keys []string
		exprs := map[string]*Expr{}
		for _, e := range pairs(kindVal) {
			x := p.expr(e.v, fmt.Sprintf("step %q: set %q", s.Name, e.k.Value))
			if x != nil {
				keys = append(keys, e.k.Value)
				exprs[e.k.Value] = x
			}
		}
		s.Run = setStep(keys, exprs)
	case "http":
		h := p.httpSpec(s.Name, kindVal)
		if h == nil {
			return nil, refs
		}
		h.saveAs = saveAs
		s.Run = h.run
	case "wait":
		d, ok := p.duration(kindVal, fmt.Sprintf("step %q: wait", s.Name))
		if !ok {
			return nil, refs
		}
		s.Run = waitStep(d)
	}
	return s, refs
}

// rule parses conditions and default from n (a top-level rule document if
// top, else the mapping under a rule step).
func (p *parser) rule(n *yaml.Node, top bool, prefix string) *Rule {
	if n.Kind != yaml.MappingNode {
		p.errf(n.Line, "rule: want a mapping with conditions and default")
		return nil
	}
	r := &Rule{Version: 1}
	before := len(p.errs)
	for _, e := range pairs(n) {
		switch e.k.Value {
		case "rule", "name":
			if top {
				r.Name, _ = p.str(e.v, "rule")
			} else {
				p.errf(e.k.Line, "unknown field %q in rule (want conditions, default, branches)", e.k.Value)
			}
		case "version":
			if top {
				r.Version, _ = p.integer(e.v, "version")
			}
		case "description":
		case "default":
			r.Default, _ = p.str(e.v, "default")
		case "branches":
			if top {
				p.errf(e.k.Line, "branches belong to rule steps, not standalone rules")
			}
		case "conditions":
			if e.v.Kind != yaml.SequenceNode {
				p.errf(e.v.Line, "conditions: want a list")
				continue
			}
			for i, cn := range e.v.Content {
				r.Conditions = append(r.Conditions, p.condition(prefix, i+1, cn))
			}
		default:
			p.errf(e.k.Line, "unknown field %q in rule (want conditions, default%s)", e.k.Value, map[bool]string{true: ", rule, version", false: ", branches"}[top])
		}
	}
	if top && r.Name == "" {
		p.errf(n.Line, "rule has no name")
	}
	if len(r.Conditions) == 0 && r.Default == "" {
		p.errf(n.Line, "rule has no conditions and no default")
	}
	if len(p.errs) > before {
		return nil
	}
	r.compiled = true // every expression was compiled above
	return r
}

func (p *parser) condition(prefix string, i int, n *yaml.Node) Condition {
	var c Condition
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
				if x := p.expr(it, fmt.Sprintf("%scondition %d", prefix, i)); x != nil {
					c.When = append(c.When, x.Source)
					c.whens = append(c.whens, x)
				}
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

func (p *parser) httpSpec(step string, n *yaml.Node) *httpStep {
	if n.Kind != yaml.MappingNode {
		p.errf(n.Line, "step %q: http: want a mapping with url", step)
		return nil
	}
	h := &httpStep{timeout: 10 * time.Second, retries: 2, headers: map[string]string{}}
	before := len(p.errs)
	for _, e := range pairs(n) {
		what := fmt.Sprintf("step %q: http %s", step, e.k.Value)
		switch e.k.Value {
		case "url":
			h.url, _ = p.str(e.v, what)
		case "method":
			h.method, _ = p.str(e.v, what)
			h.method = strings.ToUpper(h.method)
		case "body":
			h.body = p.expr(e.v, what)
		case "timeout":
			h.timeout, _ = p.duration(e.v, what)
		case "retries":
			h.retries, _ = p.integer(e.v, what)
		case "headers":
			if e.v.Kind != yaml.MappingNode {
				p.errf(e.v.Line, "%s: want a mapping", what)
				continue
			}
			for _, hv := range pairs(e.v) {
				h.headers[hv.k.Value] = hv.v.Value
			}
		default:
			p.errf(e.k.Line, "unknown field %q in http step (want url, method, headers, body, timeout, retries)", e.k.Value)
		}
	}
	if h.url == "" {
		p.errf(n.Line, "step %q: http has no url", step)
	} else if !strings.HasPrefix(h.url, "http://") && !strings.HasPrefix(h.url, "https://") {
		p.errf(n.Line, "step %q: http url %q: want http:// or https://", step, h.url)
	}
	if h.method == "" {
		h.method = "GET"
		if h.body != nil {
			h.method = "POST"
		}
	}
	if len(p.errs) > before {
		return nil
	}
	return h
}
