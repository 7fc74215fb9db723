package bus

import (
	"context"
	"errors"
	"testing"
)

// The console's data: every member learns the others' HTTP addresses and
// reasons, the term history and the last run of each duty, whichever node
// ran it; the member and broker gauges follow the view.
func TestStatusCarriesTermsDutyRunsAndHTTPAddresses(t *testing.T) {
	c := newFakeCluster(t, testConfig("observe"))
	add := func(id string) *fakeNode {
		n := c.add(id, func(cfg *Config, _ *[]Option) { cfg.HTTPAddr = "http://" + id + ".example:8080" })
		fail := true
		if err := n.RegisterDuty("import", "every 1s", func(ctx context.Context, term uint64) error {
			if fail {
				fail = false
				return errors.New("directory unreachable")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	a := add("a")
	// Every series exists before anything happened.
	if got := testCounter(a.m.rejected.WithLabelValues(rejectStale)); got != 0 {
		t.Fatalf("rejected{stale} = %v", got)
	}
	b := add("b")
	add("c")
	c.until(testFT+3*testHB, "a leads", func() bool { return c.agreeOn("a") })
	c.until(5*testFT, "b hears a's duty runs", func() bool {
		for _, d := range b.Duties() {
			if d.Name == "import" && d.LastRun != nil && d.LastRun.Outcome == "ok" {
				return true
			}
		}
		return false
	})
	ds := b.Duties()
	if len(ds) != 1 || ds[0].Schedule != "every 1s" || ds[0].LastRun.Node != "a" || ds[0].LastRun.Term != 1 || ds[0].NextSlot.IsZero() {
		t.Fatalf("b's duties = %+v", ds)
	}
	st := b.Status()
	for _, m := range st.Members {
		if m.HTTPAddr != "http://"+m.ID+".example:8080" || m.Reason != "ok" {
			t.Errorf("member %s: http %q reason %q", m.ID, m.HTTPAddr, m.Reason)
		}
	}
	if got := testGauge(b.m.members.WithLabelValues(StateActive)); got != 3 {
		t.Errorf("members{active} = %v, want 3", got)
	}
	if got := testGauge(b.m.brokerConnected); got != 1 {
		t.Errorf("broker_connected = %v", got)
	}

	c.crash("a")
	c.until(3*testFT, "b leads", func() bool { return c.agreeOn("b") })
	terms := b.Terms()
	if len(terms) != 2 || terms[0].Lead != "a" || terms[0].Term != 1 || terms[1].Lead != "b" || terms[1].Term != 2 {
		t.Fatalf("b's term history = %+v", terms)
	}
	if got := testGauge(b.m.members.WithLabelValues(StateUnreachable)); got != 1 {
		t.Errorf("members{unreachable} = %v, want 1", got)
	}
}
