package workqueue

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/clusterbus/clusterbus/internal/promreg"
)

// Metrics are the per-queue counters of every Worker that shares them. All
// are labelled by queue.
type Metrics struct {
	InFlight      *prometheus.GaugeVec
	Received      *prometheus.CounterVec
	Acked         *prometheus.CounterVec
	Retried       *prometheus.CounterVec
	DeadLettered  *prometheus.CounterVec
	HandedBack    *prometheus.CounterVec
	Panics        *prometheus.CounterVec
	LeaseRenewals *prometheus.CounterVec
	LeaseLosses   *prometheus.CounterVec
	SettleErrors  *prometheus.CounterVec
}

// NewMetrics creates the metrics and registers them with reg (if not nil).
// Registering twice on the same registry reuses the first registration.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	g := func(name, help string) *prometheus.GaugeVec {
		v := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "clusterbus", Subsystem: "workqueue", Name: name, Help: help}, []string{"queue"})
		return promreg.Register(reg, v)
	}
	c := func(name, help string) *prometheus.CounterVec {
		v := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "clusterbus", Subsystem: "workqueue", Name: name, Help: help}, []string{"queue"})
		return promreg.Register(reg, v)
	}
	return &Metrics{
		InFlight:      g("in_flight", "Items whose handler is running."),
		Received:      c("received_total", "Items received."),
		Acked:         c("acked_total", "Items acknowledged after their handler succeeded."),
		Retried:       c("retried_total", "Items nacked for another attempt."),
		DeadLettered:  c("dead_lettered_total", "Items dead-lettered (permanent error or attempts used up)."),
		HandedBack:    c("handed_back_total", "Items nacked without delay during a drain."),
		Panics:        c("panics_total", "Handler panics recovered (also counted as errors)."),
		LeaseRenewals: c("lease_renewals_total", "Successful lease renewals."),
		LeaseLosses:   c("lease_losses_total", "Leases lost while a handler ran."),
		SettleErrors:  c("settle_errors_total", "Ack, nack or dead-letter calls that failed."),
	}
}
