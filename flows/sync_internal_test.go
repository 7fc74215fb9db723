package flows

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
)

// A catch-up reply is split to fit the broker's message size limit and
// carries every recent execution once; merging keeps the later state and
// never moves an ended execution back or the recorded mark down.
func TestCatchUpReplyFitsTheSizeLimitAndMerges(t *testing.T) {
	const limit = 4000
	b := mem.NewServer(mem.WithCapabilities(func(c *adapters.Capabilities) { c.MaxMessageSize = limit })).Client()
	t.Cleanup(func() { b.Close() })
	e, err := New(b, Config{Queue: "sync"}, Options{NodeID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for i := range 100 {
		id := fmt.Sprintf("x%03d", i)
		e.idx.apply(Event{ID: id + "s", Type: EventStarted, Execution: id, Flow: "f", Version: 1, Time: now})
		e.idx.apply(Event{ID: id + "d", Type: EventStepDone, Execution: id, Flow: "f", Version: 1, Step: "a", Seq: 0, Next: "b", Time: now})
	}
	e.idx.apply(Event{ID: "old", Type: EventStarted, Execution: "old", Flow: "f", Time: now.Add(-time.Hour)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sub, err := b.Subscribe(ctx, e.cfg.EventsTopic)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	e.answerCatchUp(ctx, "n2")
	got := map[string]int{}
	msgs := 0
	for len(got) < 100 {
		m, err := sub.Receive(ctx)
		if err != nil {
			t.Fatalf("after %d messages, %d executions: %v", msgs, len(got), err)
		}
		msgs++
		if m.Headers[headerSync] != syncReply || m.Headers[headerSyncTo] != "n2" || m.Headers[headerSyncFrom] != "n1" {
			t.Fatalf("headers %v", m.Headers)
		}
		if len(m.Body) > limit {
			t.Fatalf("a reply of %d bytes, limit %d", len(m.Body), limit)
		}
		var entries []syncEntry
		if err := json.Unmarshal(m.Body, &entries); err != nil {
			t.Fatal(err)
		}
		for _, se := range entries {
			got[se.Execution]++
			if se.RecordedBelow != 1 || se.Seq != 1 || se.Step != "b" {
				t.Errorf("entry %+v: want step b, seq 1, recorded below 1", se)
			}
		}
	}
	t.Logf("100 executions in %d messages of at most %d bytes", msgs, limit)
	if msgs < 2 {
		t.Errorf("one message for 100 executions under a %d byte limit", limit)
	}
	for id, n := range got {
		if n != 1 || id == "old" {
			t.Errorf("%s sent %d times (an execution idle for an hour is not sent)", id, n)
		}
	}

	x := newIndex(10)
	x.apply(Event{ID: "1", Type: EventCompleted, Execution: "done", Seq: 3, Time: now})
	x.apply(Event{ID: "2", Type: EventStepDone, Execution: "run", Seq: 4, Next: "c", Time: now})
	added := x.merge([]syncEntry{
		{Status: Status{Execution: "done", State: StateRunning, Seq: 1}, RecordedBelow: 2},
		{Status: Status{Execution: "run", State: StateRunning, Seq: 2}, RecordedBelow: 1},
		{Status: Status{Execution: "new", State: StateRunning, Seq: 7, Step: "z"}, RecordedBelow: 7},
	})
	if added != 1 {
		t.Errorf("merge added %d, want 1", added)
	}
	if s, _ := x.get("done"); s.State != StateCompleted || !x.recorded("done", 3) {
		t.Errorf("an ended execution changed on merge: %+v", s)
	}
	if s, _ := x.get("run"); s.Seq != 5 || !x.recorded("run", 4) {
		t.Errorf("an older state replaced a newer one: %+v", s)
	}
	if s, ok := x.get("new"); !ok || s.Step != "z" || !x.recorded("new", 6) || x.recorded("new", 7) {
		t.Errorf("a merged execution: %+v, %v", s, ok)
	}
}
