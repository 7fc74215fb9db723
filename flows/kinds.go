package flows

import (
	"context"
	"fmt"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// stepKind is a built-in step kind of YAML flows: the key that names it in
// a step, and how a step of that kind is compiled from what is under that
// key (decoded into the kind's own spec first). It returns the step's Run,
// nil if it reported a problem, and the steps Run may name in
// Outcome.Next, with their lines.
type stepKind struct {
	name    string
	compile func(p *parser, s *stepDoc) (run func(context.Context, *StepContext) (Outcome, error), targets []sourced)
}

// stepKinds is the registry of step kinds: the one list the decoder, the
// compiler, the messages and StepKinds read.
var stepKinds = []*stepKind{
	{name: "rule", compile: compileRuleStep},
	{name: "branch", compile: compileRuleStep},
	{name: "set", compile: compileSetStep},
	{name: "http", compile: compileHTTPStep},
	{name: "wait", compile: compileWaitStep},
	{name: "await", compile: compileAwaitStep},
}

// StepKinds lists the step kinds YAML flows may use, in the registry's
// order.
var StepKinds = func() []string {
	var out []string
	for _, k := range stepKinds {
		out = append(out, k.name)
	}
	return out
}()

func stepKindNamed(name string) *stepKind {
	for _, k := range stepKinds {
		if k.name == name {
			return k
		}
	}
	return nil
}

// compileRuleStep: "rule:" or "branch:" — conditions, default, branches.
func compileRuleStep(p *parser, s *stepDoc) (func(context.Context, *StepContext) (Outcome, error), []sourced) {
	rd := p.decodeRule(s.Spec, false)
	if rd == nil {
		return nil, nil
	}
	r := p.compileRule(rd, fmt.Sprintf("step %q: ", s.Name))
	if r == nil {
		return nil, nil
	}
	r.Name = s.Name
	branches := map[string]string{}
	var targets []sourced
	for _, b := range rd.Branches {
		branches[b.Outcome] = b.Step.Value
		targets = append(targets, b.Step)
	}
	return ruleStep(r, branches, s.SaveAs), targets
}

// setSpec is a set step's spec: vars to set, in file order.
type setSpec []struct {
	Name string
	Expr sourced
}

// compileSetStep: "set:" — a mapping of var name to CEL expression.
func compileSetStep(p *parser, s *stepDoc) (func(context.Context, *StepContext) (Outcome, error), []sourced) {
	n := s.Spec
	if n.Kind != yaml.MappingNode || len(n.Content) == 0 {
		p.errf(n.Line, "set: want a mapping name: CEL expression")
		return nil, nil
	}
	var spec setSpec
	for _, e := range pairs(n) {
		spec = append(spec, struct {
			Name string
			Expr sourced
		}{e.k.Value, p.sourced(e.v, fmt.Sprintf("step %q: set %q", s.Name, e.k.Value))})
	}
	before := len(p.errs)
	var keys []string
	exprs := map[string]*Expr{}
	for _, v := range spec {
		if x := p.expr(v.Expr, fmt.Sprintf("step %q: set %q", s.Name, v.Name)); x != nil {
			keys = append(keys, v.Name)
			exprs[v.Name] = x
		}
	}
	if len(p.errs) > before {
		return nil, nil
	}
	return setStep(keys, exprs), nil
}

// httpSpec is an http step's spec.
type httpSpec struct {
	URL, Method string
	Headers     map[string]string
	Body        *sourced
	Timeout     time.Duration
	Retries     int
}

// compileHTTPStep: "http:" — url, method, headers, body (CEL), timeout,
// retries.
func compileHTTPStep(p *parser, s *stepDoc) (func(context.Context, *StepContext) (Outcome, error), []sourced) {
	n := s.Spec
	if n.Kind != yaml.MappingNode {
		p.errf(n.Line, "step %q: http: want a mapping with url", s.Name)
		return nil, nil
	}
	spec := httpSpec{Timeout: 10 * time.Second, Retries: 2, Headers: map[string]string{}}
	before := len(p.errs)
	for _, e := range pairs(n) {
		what := fmt.Sprintf("step %q: http %s", s.Name, e.k.Value)
		switch e.k.Value {
		case "url":
			spec.URL, _ = p.str(e.v, what)
		case "method":
			spec.Method, _ = p.str(e.v, what)
		case "body":
			b := p.sourced(e.v, what)
			spec.Body = &b
		case "timeout":
			spec.Timeout, _ = p.duration(e.v, what)
		case "retries":
			spec.Retries, _ = p.integer(e.v, what)
		case "headers":
			if e.v.Kind != yaml.MappingNode {
				p.errf(e.v.Line, "%s: want a mapping", what)
				continue
			}
			for _, hv := range pairs(e.v) {
				spec.Headers[hv.k.Value] = hv.v.Value
			}
		default:
			p.errf(e.k.Line, "unknown field %q in http step (want url, method, headers, body, timeout, retries)", e.k.Value)
		}
	}
	h := &httpStep{method: strings.ToUpper(spec.Method), url: spec.URL, headers: spec.Headers, timeout: spec.Timeout,
		retries: spec.Retries, saveAs: s.SaveAs}
	if spec.Body != nil {
		h.body = p.expr(*spec.Body, fmt.Sprintf("step %q: http body", s.Name))
	}
	if h.url == "" {
		p.errf(n.Line, "step %q: http has no url", s.Name)
	} else if !strings.HasPrefix(h.url, "http://") && !strings.HasPrefix(h.url, "https://") {
		p.errf(n.Line, "step %q: http url %q: want http:// or https://", s.Name, h.url)
	}
	if h.method == "" {
		h.method = "GET"
		if spec.Body != nil {
			h.method = "POST"
		}
	}
	if len(p.errs) > before {
		return nil, nil
	}
	return h.run, nil
}

// compileWaitStep: "wait:" — a duration.
func compileWaitStep(p *parser, s *stepDoc) (func(context.Context, *StepContext) (Outcome, error), []sourced) {
	d, ok := p.duration(s.Spec, fmt.Sprintf("step %q: wait", s.Name))
	if !ok {
		return nil, nil
	}
	return waitStep(d), nil
}

// awaitSpec is an await step's spec.
type awaitSpec struct {
	Signal    string
	Timeout   time.Duration
	OnTimeout sourced
}

// compileAwaitStep: "await:" — a signal name, or a mapping with signal,
// timeout and on-timeout (the step after a timeout; default end). The step
// parks the execution until Engine.Signal (clusterbus flow signal) names
// the signal, then "next" follows with the signal's data in vars under
// save_as, or until the timeout, then on-timeout follows.
func compileAwaitStep(p *parser, s *stepDoc) (func(context.Context, *StepContext) (Outcome, error), []sourced) {
	n := s.Spec
	var spec awaitSpec
	before := len(p.errs)
	switch n.Kind {
	case yaml.ScalarNode:
		spec.Signal = n.Value
	case yaml.MappingNode:
		for _, e := range pairs(n) {
			what := fmt.Sprintf("step %q: await %s", s.Name, e.k.Value)
			switch e.k.Value {
			case "signal":
				spec.Signal, _ = p.str(e.v, what)
			case "timeout":
				spec.Timeout, _ = p.duration(e.v, what)
			case "on-timeout", "on_timeout":
				spec.OnTimeout = p.sourced(e.v, what)
			default:
				p.errf(e.k.Line, "unknown field %q in await step (want signal, timeout, on-timeout)", e.k.Value)
			}
		}
	default:
		p.errf(n.Line, "step %q: await: want a signal name or a mapping with signal, timeout, on-timeout", s.Name)
		return nil, nil
	}
	if spec.Signal == "" {
		p.errf(n.Line, "step %q: await has no signal", s.Name)
	} else if !validSignal(spec.Signal) {
		p.errf(n.Line, "step %q: await signal %q: letters, digits, '.', '-' or '_', at most 64", s.Name, spec.Signal)
	}
	if spec.OnTimeout.Value != "" && spec.Timeout == 0 {
		p.errf(spec.OnTimeout.Line, "step %q: await on-timeout without a timeout", s.Name)
	}
	if len(p.errs) > before {
		return nil, nil
	}
	var targets []sourced
	if spec.OnTimeout.Value != "" {
		targets = append(targets, spec.OnTimeout)
	}
	a := Await{Signal: spec.Signal, Timeout: spec.Timeout, OnTimeout: spec.OnTimeout.Value, SaveAs: s.SaveAs}
	return awaitStep(a), targets
}
