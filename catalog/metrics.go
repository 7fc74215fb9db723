package catalog

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterbus/clusterbus/internal/promreg"
)

// metrics are the catalog's Prometheus collectors, shared by every catalog
// registered with the same Registerer (the catalog label tells them apart).
type metrics struct {
	rejected      *prometheus.CounterVec // catalog, reason
	syncs         *prometheus.CounterVec // catalog, kind (requested, answered)
	publishErrors *prometheus.CounterVec // catalog
	entries       prometheus.Gauge
	retainedAgain prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, name string) *metrics {
	const ns = "clusterbus"
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "catalog", Name: "rejected_total",
		Help: "Catalog entries or messages dropped on receipt, by catalog and reason (malformed, key, size, rev, clock, full)."},
		[]string{"catalog", "reason"})
	syncs := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "catalog", Name: "syncs_total",
		Help: "Catalog sync requests sent (requested), answered and left unanswered because of a flood (throttled) by this node, by catalog."},
		[]string{"catalog", "kind"})
	pubErr := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "catalog", Name: "publish_errors_total",
		Help: "Failed publishes of catalog messages, by catalog."},
		[]string{"catalog"})
	entries := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: "catalog", Name: "entries",
		Help: "Entries in this node's copy of the catalog, tombstones included."},
		[]string{"catalog"})
	again := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: "catalog", Name: "retained_again_total",
		Help: "Entries this node retained in the broker once more because a concurrent, losing write of the same key was retained after its own, by catalog."},
		[]string{"catalog"})
	m := &metrics{
		rejected:      promreg.Register(reg, rejected),
		syncs:         promreg.Register(reg, syncs),
		publishErrors: promreg.Register(reg, pubErr),
	}
	m.entries = promreg.Register(reg, entries).WithLabelValues(name)
	m.retainedAgain = promreg.Register(reg, again).WithLabelValues(name)
	for _, r := range reasons {
		m.rejected.WithLabelValues(name, r)
	}
	for _, k := range []string{"requested", "answered", "throttled"} {
		m.syncs.WithLabelValues(name, k)
	}
	m.publishErrors.WithLabelValues(name)
	return m
}
