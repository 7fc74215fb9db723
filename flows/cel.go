package flows

import (
	"context"
	"fmt"
	"reflect"
	"sync"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
)

// CEL expressions see four variables:
//
//	input     the execution's input (a map)
//	vars      the values steps have set so far (a map)
//	exec      {"id", "flow", "version", "step", "seq", "attempt", "node"}
//	settings  the cluster settings (map(string, string); Options.Settings),
//	          as the node running the step sees them when it runs it
var (
	celOnce sync.Once
	celEnv  *cel.Env
	celErr  error
)

func env() (*cel.Env, error) {
	celOnce.Do(func() {
		celEnv, celErr = cel.NewEnv(
			cel.Variable("input", cel.MapType(cel.StringType, cel.DynType)),
			cel.Variable("vars", cel.MapType(cel.StringType, cel.DynType)),
			cel.Variable("exec", cel.MapType(cel.StringType, cel.DynType)),
			cel.Variable("settings", cel.MapType(cel.StringType, cel.StringType)),
			cel.CrossTypeNumericComparisons(true),
			cel.OptionalTypes(),
		)
	})
	return celEnv, celErr
}

// Expr is a compiled CEL expression.
type Expr struct {
	Source string
	prg    cel.Program
}

// CompileExpr compiles a CEL expression over input, vars, exec and settings.
func CompileExpr(src string) (*Expr, error) {
	e, err := env()
	if err != nil {
		return nil, fmt.Errorf("flows: CEL environment: %w", err)
	}
	ast, iss := e.Compile(src)
	if iss != nil && iss.Err() != nil {
		return nil, fmt.Errorf("CEL: %v", iss.Err())
	}
	prg, err := e.Program(ast, cel.InterruptCheckFrequency(100))
	if err != nil {
		return nil, fmt.Errorf("CEL: %v", err)
	}
	return &Expr{Source: src, prg: prg}, nil
}

// Eval evaluates the expression and returns a JSON-friendly Go value
// (nil, bool, int64, uint64, float64, string, []any, map[string]any).
func (x *Expr) Eval(ctx context.Context, act map[string]any) (any, error) {
	v, _, err := x.prg.ContextEval(ctx, act)
	if err != nil {
		return nil, fmt.Errorf("CEL %q: %v", x.Source, err)
	}
	return native(v)
}

// EvalBool evaluates the expression and requires a bool.
func (x *Expr) EvalBool(ctx context.Context, act map[string]any) (bool, error) {
	v, err := x.Eval(ctx, act)
	if err != nil {
		return false, err
	}
	b, ok := v.(bool)
	if !ok {
		return false, fmt.Errorf("CEL %q: got %T, want bool", x.Source, v)
	}
	return b, nil
}

func native(v ref.Val) (any, error) {
	switch v.Type() {
	case types.NullType:
		return nil, nil
	case types.BoolType, types.IntType, types.UintType, types.DoubleType, types.StringType:
		return v.Value(), nil
	case types.BytesType:
		return v.Value(), nil
	case types.DurationType, types.TimestampType:
		return fmt.Sprint(v.Value()), nil
	}
	if l, ok := v.(traits.Lister); ok {
		out := []any{}
		it := l.Iterator()
		for it.HasNext() == types.True {
			e, err := native(it.Next())
			if err != nil {
				return nil, err
			}
			out = append(out, e)
		}
		return out, nil
	}
	if m, ok := v.(traits.Mapper); ok {
		out := map[string]any{}
		it := m.Iterator()
		for it.HasNext() == types.True {
			k := it.Next()
			e, err := native(m.Get(k))
			if err != nil {
				return nil, err
			}
			out[fmt.Sprint(k.Value())] = e
		}
		return out, nil
	}
	n, err := v.ConvertToNative(reflect.TypeOf((*any)(nil)).Elem())
	if err != nil {
		return nil, fmt.Errorf("CEL value of type %s cannot be recorded: %v", v.Type().TypeName(), err)
	}
	return n, nil
}
