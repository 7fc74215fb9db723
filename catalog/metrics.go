package catalog

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the catalog's Prometheus collectors, shared by every catalog
// registered with the same Registerer (the catalog label tells them apart).
type metrics struct {
	rejected      *prometheus.CounterVec // catalog, reason
	syncs         *prometheus.CounterVec // catalog, kind (requested, answered)
	publishErrors *prometheus.CounterVec // catalog
	entries       prometheus.Gauge
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
	m := &metrics{
		rejected:      register(reg, rejected).(*prometheus.CounterVec),
		syncs:         register(reg, syncs).(*prometheus.CounterVec),
		publishErrors: register(reg, pubErr).(*prometheus.CounterVec),
	}
	m.entries = register(reg, entries).(*prometheus.GaugeVec).WithLabelValues(name)
	for _, r := range reasons {
		m.rejected.WithLabelValues(name, r)
	}
	for _, k := range []string{"requested", "answered", "throttled"} {
		m.syncs.WithLabelValues(name, k)
	}
	m.publishErrors.WithLabelValues(name)
	return m
}

// register registers c with reg (if not nil); a second catalog on the same
// registry shares the first one's collectors.
func register(reg prometheus.Registerer, c prometheus.Collector) prometheus.Collector {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			return are.ExistingCollector
		}
		panic(err)
	}
	return c
}
