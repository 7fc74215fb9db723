package queuestats_test

import (
	"context"
	"math"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterbus/clusterbus/adapters"
	"github.com/clusterbus/clusterbus/adapters/mem"
	"github.com/clusterbus/clusterbus/queuestats"
)

func gauge(t *testing.T, reg *prometheus.Registry, name, queue string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == queue {
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

// Series exist at zero from Watch; a poll sets the counts the broker tells
// and NaN for those it cannot (mem keeps no ages).
func TestWatcherExportsWhatTheBrokerCounts(t *testing.T) {
	ctx := context.Background()
	b := mem.New()
	t.Cleanup(func() { b.Close() })
	if err := b.DeclareQueue(ctx, adapters.QueueConfig{Name: "work"}); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	w := queuestats.New(b, reg, 0, nil)
	w.Watch("work")
	for _, n := range []string{"clusterbus_queue_depth", "clusterbus_queue_dead_letters", "clusterbus_queue_in_flight", "clusterbus_queue_oldest_age_seconds"} {
		if v, ok := gauge(t, reg, n, "work"); !ok || v != 0 {
			t.Errorf("%s{queue=work} before a poll = %v (present %v), want 0", n, v, ok)
		}
	}
	for range 3 {
		if err := b.Enqueue(ctx, "work", adapters.Message{Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	c, _ := b.Consume(ctx, "work", adapters.ConsumeOptions{})
	d, _ := c.Receive(ctx)
	_ = d.DeadLetter(ctx, "bad")
	w.Poll(ctx)
	if v, _ := gauge(t, reg, "clusterbus_queue_depth", "work"); v != 2 {
		t.Errorf("depth = %v, want 2", v)
	}
	if v, _ := gauge(t, reg, "clusterbus_queue_dead_letters", "work"); v != 1 {
		t.Errorf("dead letters = %v, want 1", v)
	}
	if v, _ := gauge(t, reg, "clusterbus_queue_oldest_age_seconds", "work"); !math.IsNaN(v) {
		t.Errorf("oldest age = %v, want NaN (mem cannot tell)", v)
	}
	s := w.Snapshot()
	if len(s) != 1 || !s[0].Supported || s[0].Depth != 2 || s[0].Note == "" {
		t.Errorf("snapshot %+v", s)
	}
}
