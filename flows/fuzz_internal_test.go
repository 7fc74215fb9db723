package flows

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
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

// FuzzEvents: any message on the events topic (an execution event, a
// catch-up request or reply) is handled without a panic, and the index
// stays bounded.
func FuzzEvents(f *testing.F) {
	ev, _ := json.Marshal(Event{ID: "1", Type: EventCompleted, Execution: "e1", Flow: "f", Version: 1, Seq: 3,
		Output: map[string]any{"x": 1}})
	reply, _ := json.Marshal([]syncEntry{{Status: Status{Execution: "e2", State: StateRunning, Seq: 1}, RecordedBelow: 2}})
	f.Add("", "", "", ev)
	f.Add(syncReply, "n2", "n1", reply)
	f.Add(syncReply, "n2", "n1", []byte(`[{"execution":"","seq":-1},{"execution":"x","state":"completed","recorded_below":-5}]`))
	f.Add(syncRequest, "n2", "", []byte(`{}`))
	f.Fuzz(func(t *testing.T, sync, from, to string, body []byte) {
		e := &Engine{idx: newIndex(8), log: slog.New(slog.DiscardHandler), opts: Options{NodeID: "n1"}}
		m := adapters.Message{Headers: map[string]string{headerSync: sync, headerSyncFrom: from, headerSyncTo: to}, Body: body}
		if sync == syncRequest {
			return // answering needs a running engine; covered by the catch-up tests
		}
		if m.Headers[headerSync] != "" {
			e.handleSync(context.Background(), m)
		} else {
			var ev Event
			if json.Unmarshal(body, &ev) == nil && ev.Execution != "" {
				e.idx.apply(ev)
			}
		}
		e.idx.mu.Lock()
		n := len(e.idx.m)
		e.idx.mu.Unlock()
		if n > 8 {
			t.Fatalf("index holds %d executions, bound 8", n)
		}
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
