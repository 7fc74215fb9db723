package flows

import (
	"go.opentelemetry.io/otel/propagation"

	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"github.com/clusterbus/clusterbus/adapters/traced"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/clusterbus/clusterbus/workqueue"
)

// Headers the http step sends with every request.
const (
	HeaderIdempotencyKey = "Idempotency-Key"
	HeaderExecution      = "X-Clusterbus-Execution"
	HeaderStep           = "X-Clusterbus-Step"
	HeaderSeq            = "X-Clusterbus-Seq"
	HeaderAttempt        = "X-Clusterbus-Attempt"
	HeaderNode           = "X-Clusterbus-Node"
	HeaderFencingToken   = "X-Clusterbus-Fencing-Token"
	HeaderLeaseDeadline  = "X-Clusterbus-Lease-Deadline"
	// HeaderWorkDeadline is when the node stops working on the step unless
	// it renews the lease first (the lease deadline minus the margin).
	HeaderWorkDeadline = "X-Clusterbus-Work-Deadline"
)

// activation is what the step's CEL expressions see.
func (sc *StepContext) activation() map[string]any {
	var settings map[string]string
	if sc.engine != nil && sc.engine.opts.Settings != nil {
		settings = sc.engine.opts.Settings()
	}
	return activation(sc.Input, sc.Vars, sc.execVars(), settings)
}

func (sc *StepContext) execVars() map[string]any {
	return map[string]any{"id": sc.Execution, "flow": sc.Flow, "version": sc.Version, "step": sc.Step,
		"seq": sc.Seq, "attempt": sc.Attempt, "node": sc.Node}
}

func ruleStep(r *Rule, branches map[string]string, saveAs string) func(context.Context, *StepContext) (Outcome, error) {
	return func(ctx context.Context, sc *StepContext) (Outcome, error) {
		out, err := r.evaluate(ctx, sc.activation())
		if err != nil {
			// The same input gives the same answer: retrying cannot help.
			return Outcome{}, workqueue.Permanent(err)
		}
		sc.Vars[saveAs] = out
		return Outcome{Next: branches[out]}, nil
	}
}

func setStep(keys []string, exprs map[string]*Expr) func(context.Context, *StepContext) (Outcome, error) {
	return func(ctx context.Context, sc *StepContext) (Outcome, error) {
		for _, k := range keys {
			v, err := exprs[k].Eval(ctx, sc.activation())
			if err != nil {
				return Outcome{}, workqueue.Permanent(fmt.Errorf("flows: set %q: %w", k, err))
			}
			sc.Vars[k] = v
		}
		return Outcome{}, nil
	}
}

func waitStep(d time.Duration) func(context.Context, *StepContext) (Outcome, error) {
	return func(ctx context.Context, sc *StepContext) (Outcome, error) {
		return Outcome{Wait: d}, nil
	}
}

// awaitStep parks the execution (see Await).
func awaitStep(a Await) func(context.Context, *StepContext) (Outcome, error) {
	return func(ctx context.Context, sc *StepContext) (Outcome, error) {
		a := a
		return Outcome{Await: &a}, nil
	}
}

// validSignal reports whether name can name a signal.
func validSignal(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

type httpStep struct {
	method, url string
	headers     map[string]string
	body        *Expr
	timeout     time.Duration
	retries     int
	saveAs      string
}

func (h *httpStep) run(ctx context.Context, sc *StepContext) (Outcome, error) {
	var body []byte
	if h.body != nil {
		v, err := h.body.Eval(ctx, sc.activation())
		if err != nil {
			return Outcome{}, workqueue.Permanent(fmt.Errorf("flows: http body: %w", err))
		}
		if body, err = json.Marshal(v); err != nil {
			return Outcome{}, workqueue.Permanent(fmt.Errorf("flows: http body: %w", err))
		}
	}
	client := http.DefaultClient
	if sc.engine != nil && sc.engine.opts.HTTPClient != nil {
		client = sc.engine.opts.HTTPClient
	}
	var lastErr error
	for try := 0; try <= h.retries; try++ {
		if try > 0 {
			t := time.NewTimer(time.Duration(100<<min(try-1, 6)) * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return Outcome{}, fmt.Errorf("flows: http %s %s: %w (last error: %v)", h.method, h.url, context.Cause(ctx), lastErr)
			case <-t.C:
			}
		}
		res, status, err := h.do(ctx, client, sc, body)
		if err == nil {
			sc.Vars[h.saveAs] = map[string]any{"status": status, "body": res}
			return Outcome{}, nil
		}
		lastErr = err
		if workqueue.IsPermanent(err) || ctx.Err() != nil {
			return Outcome{}, err
		}
	}
	return Outcome{}, lastErr
}

func (h *httpStep) do(ctx context.Context, client *http.Client, sc *StepContext, body []byte) (any, int, error) {
	rctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(rctx, h.method, h.url, rd)
	if err != nil {
		return nil, 0, workqueue.Permanent(fmt.Errorf("flows: http request: %w", err))
	}
	for k, v := range h.headers {
		req.Header.Set(k, v)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	// The step's trace context (W3C traceparent), so the service's spans
	// join the execution's trace.
	traced.Propagator.Inject(ctx, propagation.HeaderCarrier(req.Header))
	req.Header.Set(HeaderIdempotencyKey, sc.IdempotencyKey)
	req.Header.Set(HeaderExecution, sc.Execution)
	req.Header.Set(HeaderStep, sc.Step)
	req.Header.Set(HeaderSeq, strconv.Itoa(sc.Seq))
	req.Header.Set(HeaderAttempt, strconv.Itoa(sc.Attempt))
	req.Header.Set(HeaderNode, sc.Node)
	req.Header.Set(HeaderFencingToken, sc.Token.String())
	deadline := sc.LeaseDeadline
	if sc.lease != nil {
		deadline = sc.lease.Deadline()
		req.Header.Set(HeaderWorkDeadline, sc.lease.WorkDeadline().UTC().Format(time.RFC3339Nano))
	}
	if !deadline.IsZero() {
		req.Header.Set(HeaderLeaseDeadline, deadline.UTC().Format(time.RFC3339Nano))
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("flows: http %s %s: %w", h.method, h.url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, resp.StatusCode, fmt.Errorf("flows: http %s %s: read body: %w", h.method, h.url, err)
	}
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
	case resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return nil, resp.StatusCode, fmt.Errorf("flows: http %s %s: status %d", h.method, h.url, resp.StatusCode)
	default:
		return nil, resp.StatusCode, workqueue.Permanent(fmt.Errorf("flows: http %s %s: status %d", h.method, h.url, resp.StatusCode))
	}
	var v any
	if len(raw) > 0 && json.Unmarshal(raw, &v) == nil {
		return v, resp.StatusCode, nil
	}
	return string(raw), resp.StatusCode, nil
}
