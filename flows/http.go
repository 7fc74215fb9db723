package flows

import (
	"go.opentelemetry.io/otel/propagation"

	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/clusterbus/clusterbus/adapters/traced"
	"io"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
)

// SubmitRequest is the body of POST /api/flows.
type SubmitRequest struct {
	Flow    string         `json:"flow"`
	Version int            `json:"version,omitempty"`
	ID      string         `json:"id,omitempty"`
	Input   map[string]any `json:"input,omitempty"`
}

// SubmitResponse is the answer to POST /api/flows.
type SubmitResponse struct {
	ID   string `json:"id"`
	Flow string `json:"flow"`
}

// Routes adds the engine's HTTP API to mux (POST requests change things;
// the node's guard makes them need the admin token):
//
//	POST /api/flows        {"flow": "name", "input": {...}, "id": "optional"} -> 202 {"id": ...}
//	GET  /api/flows        the registered flows
//	GET  /api/flows/{id}   the execution's Status, or 404
//	GET  /api/executions?status=S&flow=F&since=D&limit=N   executions, newest first
//	GET  /api/executions/{id}                the execution's Status with its step history
//	POST /api/executions/{id}/cancel         {"reason": "..."} -> the Status
//	POST /api/executions/{id}/retry          resume a failed execution -> the Status
//	POST /api/executions/{id}/signal         {"name": "...", "data": ...} -> the Status
//	POST /api/executions/{id}/replay         put a dead-lettered execution back -> {"replayed": n}
//
// Errors: 404 (ErrExecutionNotFound, ErrFlowNotFound), 409
// (ErrNotCancellable, ErrNotRetryable, ErrNotAwaiting), 400 (bad input).
//
// With a definitions catalog, the deployed definitions' routes under
// /api/flow-definitions too (see deploy_http.go).
func (e *Engine) Routes(mux *http.ServeMux) {
	if e.defs != nil {
		e.definitionRoutes(mux)
	}
	mux.HandleFunc("GET /api/executions", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		limit, err := strconv.Atoi(cmp.Or(q.Get("limit"), "100"))
		if err != nil || limit < 1 || limit > 10000 {
			writeError(w, adapters.Errorf(adapters.ErrInvalidArgument, "flows: list", "limit %q: want 1..10000", q.Get("limit")))
			return
		}
		o := ListOptions{State: cmp.Or(q.Get("status"), q.Get("state")), Flow: q.Get("flow"), Limit: limit}
		if v := q.Get("since"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				writeError(w, adapters.Errorf(adapters.ErrInvalidArgument, "flows: list", "since %q: want a duration such as 1h", v))
				return
			}
			o.Since = e.opts.Clock.Now().Add(-d)
		}
		writeJSON(w, http.StatusOK, map[string]any{"executions": nonNil(e.List(o))})
	})
	mux.HandleFunc("GET /api/executions/{id}", func(w http.ResponseWriter, r *http.Request) {
		s, err := e.Status(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, s)
	})
	mux.HandleFunc("POST /api/executions/{id}/cancel", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Reason string `json:"reason"`
		}
		if !decodeBody(w, r, &req, true) {
			return
		}
		s, err := e.Cancel(r.Context(), r.PathValue("id"), req.Reason)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, s)
	})
	mux.HandleFunc("POST /api/executions/{id}/retry", func(w http.ResponseWriter, r *http.Request) {
		s, err := e.Retry(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, s)
	})
	mux.HandleFunc("POST /api/executions/{id}/signal", func(w http.ResponseWriter, r *http.Request) {
		var req SignalRequest
		if !decodeBody(w, r, &req, false) {
			return
		}
		if req.Name == "" {
			writeError(w, adapters.Errorf(adapters.ErrInvalidArgument, "flows: signal", `body: "name" is required`))
			return
		}
		data, err := normalize(map[string]any{"d": req.Data})
		if err != nil {
			writeError(w, err)
			return
		}
		s, err := e.Signal(r.Context(), r.PathValue("id"), req.Name, data["d"])
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, s)
	})
	mux.HandleFunc("POST /api/executions/{id}/replay", func(w http.ResponseWriter, r *http.Request) {
		n, err := e.Replay(r.Context(), r.PathValue("id"), ReplayOptions{Wait: 500 * time.Millisecond})
		if err != nil && n == 0 {
			writeError(w, err)
			return
		}
		resp := map[string]any{"replayed": n}
		if err != nil {
			resp["error"] = err.Error()
		}
		writeJSON(w, http.StatusOK, resp)
	})
	mux.HandleFunc("POST /api/flows", e.serveSubmit)
	mux.HandleFunc("GET /api/flows", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"flows": e.Flows()})
	})
	mux.HandleFunc("GET /api/flows/{id}", func(w http.ResponseWriter, r *http.Request) {
		s, err := e.Status(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, s)
	})
}

// SignalRequest is the body of POST /api/executions/{id}/signal.
type SignalRequest struct {
	Name string `json:"name"`
	Data any    `json:"data,omitempty"`
}

// decodeBody decodes a JSON request body into v (an empty body is allowed
// if optional) and answers 400 if it does not decode.
func decodeBody(w http.ResponseWriter, r *http.Request, v any, optional bool) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil && !(optional && errors.Is(err, io.EOF)) {
		writeError(w, adapters.Errorf(adapters.ErrInvalidArgument, "flows", "body: %v", err))
		return false
	}
	return true
}

// Handler returns the HTTP API on its own mux; see Routes.
func (e *Engine) Handler() http.Handler {
	mux := http.NewServeMux()
	e.Routes(mux)
	return mux
}

func (e *Engine) serveSubmit(w http.ResponseWriter, r *http.Request) {
	var req SubmitRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 4<<20))
	dec.UseNumber()
	if err := dec.Decode(&req); err != nil {
		writeError(w, adapters.Errorf(adapters.ErrInvalidArgument, "flows: submit", "body: %v", err))
		return
	}
	if req.Flow == "" {
		writeError(w, adapters.Errorf(adapters.ErrInvalidArgument, "flows: submit", `body: "flow" is required`))
		return
	}
	input, err := normalize(req.Input)
	if err != nil {
		writeError(w, err)
		return
	}
	var opts []SubmitOption
	if req.ID != "" {
		opts = append(opts, WithExecutionID(req.ID))
	}
	if req.Version != 0 {
		opts = append(opts, WithVersion(req.Version))
	}
	// A caller's traceparent makes the execution part of its trace.
	ctx := traced.Propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	id, err := e.Submit(ctx, req.Flow, input, opts...)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, SubmitResponse{ID: id, Flow: req.Flow})
}

// normalize turns json.Number into int64 or float64 so that CEL sees ints
// as ints.
func normalize(m map[string]any) (map[string]any, error) {
	var bad error
	var fix func(v any) any
	fix = func(v any) any {
		switch x := v.(type) {
		case json.Number:
			if i, err := x.Int64(); err == nil {
				return i
			}
			f, err := x.Float64()
			if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
				// Found by FuzzSubmitBody: 1e999 became +Inf, which
				// the item cannot record (a 500 on submit).
				bad = adapters.Errorf(adapters.ErrInvalidArgument, "flows: input", "number %s is out of range", x)
			}
			return f
		case map[string]any:
			for k, e := range x {
				x[k] = fix(e)
			}
			return x
		case []any:
			for i, e := range x {
				x[i] = fix(e)
			}
			return x
		}
		return v
	}
	if m == nil {
		return map[string]any{}, nil
	}
	out := fix(m).(map[string]any)
	return out, bad
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrFlowNotFound), errors.Is(err, ErrRuleNotFound), errors.Is(err, ErrExecutionNotFound),
		errors.Is(err, adapters.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, ErrNotCancellable), errors.Is(err, ErrNotRetryable), errors.Is(err, ErrNotAwaiting):
		code = http.StatusConflict
	case errors.Is(err, adapters.ErrInvalidArgument):
		code = http.StatusBadRequest
	case errors.Is(err, adapters.ErrUnavailable):
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, map[string]string{"error": fmt.Sprint(err)})
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
