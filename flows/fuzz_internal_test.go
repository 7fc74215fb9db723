package flows

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/catalog"
)

// FuzzDecodeItem: a flow queue item decodes or fails, never panics.
func FuzzDecodeItem(f *testing.F) {
	b, _ := json.Marshal(item{V: 1, Exec: "e1", Flow: "f", Version: 1, Step: "s", Seq: 2,
		Input: map[string]any{"a": 1.5, "b": []any{"x"}}, Vars: map[string]any{"n": nil}, Started: time.Now()})
	f.Add(b)
	f.Add([]byte(`{"v":1,"exec":"e","input":{"a":{"b":{"c":[1,2,{"d":1e400}]}}}}`))
	f.Add([]byte(`{"v":1,"checkpoint":"not json"`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var it item
		_ = decodeItem(data, &it)
	})
}

// FuzzRecord: any value of an execution record (a peer's, possibly
// hostile) decodes, merges with a real record and passes the expiry check
// without a panic, and a merge keeps the step history bounded.
func FuzzRecord(f *testing.F) {
	good, _ := json.Marshal(record{Status: Status{Execution: "e1", Flow: "f", Version: 1, State: StateCompleted, Seq: 3,
		Output: map[string]any{"x": 1}, Steps: []StepRecord{{Step: "a", Seq: 0, Outcome: StepDone}}}})
	f.Add(good)
	f.Add([]byte(`{"execution":"","seq":-1,"steps":[{"seq":-5}],"resume":{"v":1}}`))
	f.Add([]byte(`{"state":"completed","ended":"0001-01-01T00:00:00Z"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var in record
		if json.Unmarshal(body, &in) != nil {
			return
		}
		mine := &record{Status: Status{Execution: "e1", State: StateRunning, Seq: 2}}
		for i := range maxStepRecords {
			mine.Steps = append(mine.Steps, StepRecord{Step: "s", Seq: i, Outcome: StepDone})
		}
		u := merge(&in, mine)
		if len(u.Steps) > maxStepRecords {
			t.Fatalf("merged history of %d steps, bound %d", len(u.Steps), maxStepRecords)
		}
		if u.Seq < max(in.Seq, mine.Seq) && u.Retries == max(in.Retries, mine.Retries) {
			t.Fatalf("merge kept seq %d of %d and %d", u.Seq, in.Seq, mine.Seq)
		}
		var cutoff atomic.Int64
		cutoff.Store(time.Now().UnixNano())
		_ = expireFunc(time.Hour, &cutoff)(catalog.Entry{Key: "x/e1", Value: body, At: time.Unix(0, 0)}, time.Now())
	})
}

// FuzzParseYAML: the flow parser returns definitions or an error for any
// input, never panics.
func FuzzParseYAML(f *testing.F) {
	f.Add([]byte("flow: f\nversion: 1\nsteps:\n  - name: a\n    set:\n      x: \"1 + 2\"\n"))
	f.Add([]byte("rule: r\nversion: 1\nconditions:\n  - when: input.a > 1\n    outcome: big\ndefault: small\n"))
	f.Add([]byte("flow: f\nsteps:\n  - name: a\n    wait: 1ms\n    next: a\n"))
	f.Add([]byte("flow: [\n"))
	f.Add([]byte("a: &a [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = Parse("fuzz.yaml", data)
	})
}

// FuzzSubmitBody: any body posted to POST /api/flows is answered with a
// client error or accepted, never a server error or a panic.
func FuzzSubmitBody(f *testing.F) {
	f.Add([]byte(`{"flow":"f","input":{"a":1}}`))
	f.Add([]byte(`{"flow":"f","version":1,"id":"x","input":{"a":{"b":[1,2,{"c":null}]}}}`))
	f.Add([]byte(`{"flow":"nope"}`))
	f.Add([]byte(`{"flow":"f","input":{"n":1e999}}`))
	f.Add([]byte(`{"flow":"f","id":"` + strings.Repeat("x", 300) + `"}`))
	b := mem.New()
	f.Cleanup(func() { b.Close() })
	e, err := New(b, Config{Queue: "fuzz-submit", Lease: 2 * time.Second}, Options{NodeID: "n1", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	defs, err := Parse("f.yaml", []byte("flow: f\nversion: 1\nsteps:\n  - name: a\n    set:\n      x: \"1\"\n"))
	if err != nil {
		f.Fatal(err)
	}
	if err := e.Register(defs.Flows[0]); err != nil {
		f.Fatal(err)
	}
	if err := e.Start(context.Background()); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = e.Stop(ctx)
	})
	h := e.Handler()
	f.Fuzz(func(t *testing.T, body []byte) {
		r := httptest.NewRequest("POST", "/api/flows", bytes.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code >= 500 {
			t.Fatalf("%d %s for body %q", w.Code, w.Body.String(), body)
		}
	})
}
