package flows

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterbus/clusterbus/internal/promreg"
)

// Execution outcomes, the outcome label of clusterbus_flow_executions_total.
const (
	OutcomeCompleted    = StateCompleted
	OutcomeFailed       = StateFailed
	OutcomeDeadLettered = StateDeadLettered
	OutcomeCancelled    = StateCancelled
)

// metrics are the engine's Prometheus collectors. Every series of a
// registered flow exists from its registration, at zero.
type metrics struct {
	executions   *prometheus.CounterVec   // flow, outcome: counted by the node that ended it
	stepDuration *prometheus.HistogramVec // flow, step: on the node that ran it
}

func newMetrics(reg prometheus.Registerer, e *Engine) *metrics {
	m := &metrics{
		executions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "clusterbus", Subsystem: "flow", Name: "executions_total",
			Help: "Executions that ended on this node, by flow and outcome (completed, failed, dead_lettered, cancelled)."}, []string{"flow", "outcome"}),
		stepDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "clusterbus", Subsystem: "flow", Name: "step_duration_seconds",
			Help:    "Time a step took on this node, by flow and step, failed attempts included.",
			Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}}, []string{"flow", "step"}),
	}
	m.executions = promreg.Register(reg, m.executions)
	m.stepDuration = promreg.Register(reg, m.stepDuration)
	promreg.Register(reg, &runningCollector{e: e})
	return m
}

// initFlow creates the series of f at zero.
func (m *metrics) initFlow(f *Flow) {
	for _, o := range []string{OutcomeCompleted, OutcomeFailed, OutcomeDeadLettered, OutcomeCancelled} {
		m.executions.WithLabelValues(f.Name, o)
	}
	for _, s := range f.Steps {
		m.stepDuration.WithLabelValues(f.Name, s.Name)
	}
}

var runningDesc = prometheus.NewDesc("clusterbus_flow_executions_running",
	"Executions running or awaiting a signal, by flow, as this node's copy of the executions catalog says (the same on every node once it has converged).",
	[]string{"flow"}, nil)

// runningCollector counts running executions in the catalog at scrape time.
type runningCollector struct{ e *Engine }

func (c *runningCollector) Describe(ch chan<- *prometheus.Desc) { ch <- runningDesc }

func (c *runningCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{}
	for _, s := range c.e.list(func(s *Status) bool { return s.State == StateRunning || s.State == StateAwaiting }) {
		counts[s.Flow]++
	}
	c.e.mu.RLock()
	for name := range c.e.flows {
		if _, ok := counts[name]; !ok {
			counts[name] = 0
		}
	}
	c.e.mu.RUnlock()
	for flow, n := range counts {
		ch <- prometheus.MustNewConstMetric(runningDesc, prometheus.GaugeValue, float64(n), flow)
	}
}
