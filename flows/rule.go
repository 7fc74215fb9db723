package flows

import (
	"context"
	"fmt"
)

// Condition is one clause of a Rule: when every expression in When is true,
// the rule yields Outcome.
type Condition struct {
	When    []string
	Outcome string
	whens   []*Expr
}

// Rule is an ordered set of conditions over input and vars; the first that
// holds gives the outcome, else Default. A rule with no Default and no
// matching condition fails with ErrNoOutcome.
type Rule struct {
	Name       string
	Version    int
	Conditions []Condition
	Default    string
	compiled   bool
}

// ErrNoOutcome is returned by Rule.Evaluate when nothing matched and the
// rule has no default.
var ErrNoOutcome = fmt.Errorf("flows: rule: no condition matched and no default")

// Compile compiles every expression; Evaluate compiles on first use.
func (r *Rule) Compile() error {
	if r.compiled {
		return nil
	}
	if len(r.Conditions) == 0 && r.Default == "" {
		return fmt.Errorf("rule %q: no conditions and no default", r.Name)
	}
	for i := range r.Conditions {
		c := &r.Conditions[i]
		if c.Outcome == "" {
			return fmt.Errorf("rule %q: condition %d: empty outcome", r.Name, i+1)
		}
		c.whens = c.whens[:0]
		for _, w := range c.When {
			x, err := CompileExpr(w)
			if err != nil {
				return fmt.Errorf("rule %q: condition %d: %v", r.Name, i+1, err)
			}
			c.whens = append(c.whens, x)
		}
	}
	r.compiled = true
	return nil
}

// Evaluate returns the outcome of the rule for the given input and vars.
func (r *Rule) Evaluate(ctx context.Context, input, vars map[string]any) (string, error) {
	if err := r.Compile(); err != nil {
		return "", fmt.Errorf("flows: %w", err)
	}
	return r.evaluate(ctx, activation(input, vars, nil, nil))
}

func (r *Rule) evaluate(ctx context.Context, act map[string]any) (string, error) {
	for i, c := range r.Conditions {
		ok := true
		for _, x := range c.whens {
			b, err := x.EvalBool(ctx, act)
			if err != nil {
				return "", fmt.Errorf("flows: rule %q: condition %d: %w", r.Name, i+1, err)
			}
			if !b {
				ok = false
				break
			}
		}
		if ok {
			return c.Outcome, nil
		}
	}
	if r.Default != "" {
		return r.Default, nil
	}
	return "", fmt.Errorf("%w (rule %q)", ErrNoOutcome, r.Name)
}

func activation(input, vars, exec map[string]any, settings map[string]string) map[string]any {
	if input == nil {
		input = map[string]any{}
	}
	if vars == nil {
		vars = map[string]any{}
	}
	if exec == nil {
		exec = map[string]any{}
	}
	if settings == nil {
		settings = map[string]string{}
	}
	return map[string]any{"input": input, "vars": vars, "exec": exec, "settings": settings}
}
