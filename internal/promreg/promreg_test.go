package promreg

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestRegisterSharesTheFirstCollector(t *testing.T) {
	reg := prometheus.NewRegistry()
	opts := prometheus.CounterOpts{Name: "x_total", Help: "x"}
	a := Register(reg, prometheus.NewCounterVec(opts, []string{"l"}))
	b := Register(reg, prometheus.NewCounterVec(opts, []string{"l"}))
	if a != b {
		t.Fatal("the second registration did not return the first collector")
	}
	a.WithLabelValues("v").Inc()
	if got := b.WithLabelValues("v"); got == nil {
		t.Fatal("no child")
	}
	c := prometheus.NewCounterVec(opts, []string{"l"})
	if Register[*prometheus.CounterVec](nil, c) != c {
		t.Fatal("a nil registerer must return the collector itself")
	}
}

func TestRegisterPanicsOnConflictingDescriptors(t *testing.T) {
	reg := prometheus.NewRegistry()
	Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: "y_total", Help: "y"}, []string{"a"}))
	defer func() {
		if recover() == nil {
			t.Fatal("no panic on a conflicting registration")
		}
	}()
	Register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: "y_total", Help: "y"}, []string{"b"}))
}
