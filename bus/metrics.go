package bus

import "github.com/prometheus/client_golang/prometheus"

// metrics are the node's Prometheus collectors.
type metrics struct {
	members          *prometheus.GaugeVec
	brokerConnected  prometheus.Gauge
	isLead           prometheus.Gauge
	serving          prometheus.Gauge
	term             prometheus.Gauge
	leadChanges      prometheus.Counter
	hbSent           prometheus.Counter
	hbReceived       prometheus.Counter
	rejected         *prometheus.CounterVec
	invalidations    *prometheus.CounterVec
	publishErrors    prometheus.Counter
	subscriptionGaps prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns = "clusterbus"
	m := &metrics{
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "members",
			Help: "Members of the cluster as this node sees them, itself included, by state (unreachable: failed, not yet forgotten)."},
			[]string{"state"}),
		brokerConnected: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "broker_connected",
			Help: "1 while this node's own heartbeats come back through the broker within the failure timeout."}),
		isLead: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "is_lead",
			Help: "1 while this node holds the lead."}),
		serving: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "serving",
			Help: "1 while this node is connected, in good standing and not draining (health 200)."}),
		term: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Name: "lead_term",
			Help: "Highest lead term (fencing token) this node knows of."}),
		leadChanges: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "lead_changes_total",
			Help: "Times the lead this node sees changed."}),
		hbSent: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "heartbeats_sent_total",
			Help: "Heartbeats published by this node."}),
		hbReceived: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "heartbeats_received_total",
			Help: "Heartbeats accepted from members, this node's own echo included."}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "heartbeats_rejected_total",
			Help: "Coordination messages dropped by the node, by reason (malformed, foreign-cluster, stale); messages that fail authentication never reach it (see clusterbus_messages_rejected_total)."},
			[]string{"reason"}),
		invalidations: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "cache_invalidations_total",
			Help: "Cache invalidations: sent, received, and region clears caused by gaps (gap)."},
			[]string{"kind"}),
		publishErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "publish_errors_total",
			Help: "Failed publishes of coordination messages."}),
		subscriptionGaps: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "subscription_gaps_total",
			Help: "Times the broker reported that the cluster topic may have missed messages."}),
	}
	// Every series exists from the start, at zero.
	for _, st := range memberStates {
		m.members.WithLabelValues(st)
	}
	for _, r := range []string{rejectMalformed, rejectForeign, rejectStale, rejectDeparted} {
		m.rejected.WithLabelValues(r)
	}
	for _, k := range []string{"sent", "received", "gap"} {
		m.invalidations.WithLabelValues(k)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.members, m.brokerConnected, m.isLead, m.serving, m.term, m.leadChanges, m.hbSent,
			m.hbReceived, m.rejected, m.invalidations, m.publishErrors, m.subscriptionGaps} {
			reg.MustRegister(c)
		}
	}
	return m
}

// memberStates label clusterbus_members: the states a heartbeat carries and
// "unreachable" for a member whose heartbeats stopped.
var memberStates = []string{StateStarting, StateActive, StateDraining, StateFenced, StateDegraded, StatePanic, StateLeft, StateUnreachable}
